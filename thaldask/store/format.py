"""The cohort store's format: its version, its layout, and the name of every node it holds.

Layout (one Zarr v3 group)::

    zarr.json                     attrs: thaldask format, scans table, grid_shape, reference
                                  contrast and original orientation per scan, layout,
                                  clinical table
    scan/affine (scan, 4, 4)      RAS affine of the stored grid (float64)
    scan/shape (scan, 3)          true RAS shape; data are zero-padded to grid_shape
    scan/spacing (scan, 3)        voxel size in mm
    scan/orig_affine, orig_shape, orig_ornt   the reference file's own grid and orientation
    scan/header (scan, 1024), scan/header_info (scan, 2)   scrubbed reference header bytes
    images/<contrast>             (scan, x, y, z) float32 (int16 when every file is), one
                                  scan per chunk; in new stores (layout "shards") the
                                  chunks of record_chunk scans share one shard file
                                  (thaldask.store.shards); a float map with fixed decimals d is
                                  stored as integers value * 10**d (FixedScaleOffset codec;
                                  zarr reads it back as float32)
    masks/<method>/<contrast>     (scan, x, y, z) uint8 0 bg / 1 left / 2 right
    probs/<method>/<contrast>     (scan, 2, x, y, z) uint8, probability * 255
    _meta/<array>/record          (scan, 20) float64: flags, source shape (3), source affine (16)
    _meta/<array>/hash            (scan, 64) uint8: source-file sha256 | content sha256
                                  (the file's sha256 again while flagged FILE_DIGEST_ONLY:
                                  either way bytes 32: change exactly when the data do)
    _metrics/<method>/<contrast>/raw, token   evaluate's per-scan cache (derived arrays)
    results/<name>                xarray datasets (write_results)
    ingest_report.csv             the last ingest's report
    sources.csv                   array, scan, subject, timepoint, source file and its
                                  sha256 of every file ingested (one table, every ingest)

Every per-scan write touches only chunks (and shards, and record chunks) that belong to
the scans of its task, so scans can be written by independent tasks owning whole record
chunks; scan-level metadata is written once by the process that creates the store. No other module of thaldask spells these names: they all come from here.
"""

from __future__ import annotations

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "ROOT_ATTR",
    "image_array",
    "mask_array",
    "prob_array",
    "record_array",
    "hash_array",
    "scan_meta_array",
    "results_group",
    "metrics_cache",
    "metrics_array",
    "consensus_array",
    "volume_sd_array",
]

#: version of the layout below; a store of another version is refused on opening, except
#: those in READABLE_FORMATS (format 1 held the scan and clinical tables in the root
#: attributes; ``thaldask store migrate`` moves them into columns, see ``tables.py``)
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
#: root attribute that marks a Zarr group as a thaldask store ({"format", "version", "created"})
ROOT_ATTR = "thaldask"
#: the root metadata file of a Zarr v3 group (its presence with ROOT_ATTR marks a store)
ROOT_METADATA = "zarr.json"

IMAGES = "images"
MASKS = "masks"
PROBS = "probs"
SCAN = "scan"
META = "_meta"
METRICS = "_metrics"
RESULTS = "results"
TABLES = "_tables"
INGEST_REPORT = "ingest_report.csv"
#: the source file of every stored (array, scan), one row each (columnar, see sources.py)
SOURCES = "sources.csv"


def table_file(store_path, name: str) -> str:
    """Default path of the store's table ``name`` (``metrics``, ``agreement``, ...): a CSV
    inside the store folder, so that tables of two stores in one folder never collide.

    >>> table_file("/data/cohort.zarr/", "metrics")
    '/data/cohort.zarr/metrics.csv'
    """
    return f"{str(store_path).rstrip('/')}/{name}.csv"

#: scan-level metadata arrays under ``scan/`` (written once, by the creating process)
SCAN_META_KEYS = ("affine", "shape", "spacing", "orig_affine", "orig_shape", "orig_ornt",
                  "header", "header_info")

# per-scan write record: flags
WRITTEN, RESAMPLED, SCALED, HAS_PROB, NAN_REPLACED, BINARY = 1, 2, 4, 8, 16, 32
#: the content slot of the hash holds the source file's sha256 (content not hashed yet)
FILE_DIGEST_ONLY = 64
RECORD_LEN = 20
HASH_LEN = 64

#: reference header codes in ``scan/header_info[:, 0]``
FORMAT_NIFTI1, FORMAT_NIFTI2, FORMAT_MGH = 1, 2, 3
#: width of ``scan/header``: room for a NIfTI-2 header (540 bytes) or an MGH header (284)
HEADER_BYTES = 1024

#: fields of a metrics cache entry: raw counts per (side, field), and the token of the inputs
METRICS_FIELDS = ("raw", "token")


def image_array(contrast: str) -> str:
    """``images/<contrast>``."""
    return f"{IMAGES}/{contrast}"


def mask_array(method: str, contrast: str) -> str:
    """``masks/<method>/<contrast>``."""
    return f"{MASKS}/{method}/{contrast}"


def prob_array(method: str, contrast: str) -> str:
    """``probs/<method>/<contrast>``."""
    return f"{PROBS}/{method}/{contrast}"


def scan_array(kind: str, contrast: str, method: str = "") -> str:
    """The array a manifest file goes to: an image's, else a mask's."""
    return image_array(contrast) if kind == "image" else mask_array(method, contrast)


def record_array(name: str) -> str:
    """``_meta/<name>/record``: the per-scan write record of array ``name``."""
    return f"{META}/{name}/record"


def volume_sd_array(method: str, contrast: str) -> str:
    """``_meta/masks/<method>/<contrast>/volume_sd``: the segmenter's own per-scan left and
    right volume uncertainty (mm³, one SD; NaN where it gave none)."""
    return f"{META}/{mask_array(method, contrast)}/volume_sd"


def hash_array(name: str) -> str:
    """``_meta/<name>/hash``: the per-scan file and content digests of array ``name``."""
    return f"{META}/{name}/hash"


def scan_meta_array(key: str) -> str:
    """``scan/<key>``, one of :data:`SCAN_META_KEYS`."""
    return f"{SCAN}/{key}"


def results_group(name: str = "results") -> str:
    """``results/<name>``: a stored xarray dataset."""
    return f"{RESULTS}/{name}"


def metrics_cache(method: str, contrast: str) -> str:
    """``_metrics/<method>/<contrast>``: evaluate's cache of one mask array (a group)."""
    return f"{METRICS}/{method}/{contrast}"


def metrics_array(method: str, contrast: str, field: str) -> str:
    """``_metrics/<method>/<contrast>/<field>``, field ``raw`` or ``token``."""
    if field not in METRICS_FIELDS:
        raise ValueError(f"metrics cache field must be one of {METRICS_FIELDS}, not {field!r}")
    return f"{metrics_cache(method, contrast)}/{field}"


def consensus_array(field: str) -> str:
    """``_metrics/_consensus/<field>``: evaluate's cache of every mask's agreement with the
    other methods on its scan, field ``raw`` or ``token``."""
    if field not in METRICS_FIELDS:
        raise ValueError(f"consensus cache field must be one of {METRICS_FIELDS}, not {field!r}")
    return f"{METRICS}/_consensus/{field}"


def is_per_scan(name: str) -> bool:
    """Whether array ``name`` (a member path) grows with the scan list.

    Every array has ``scan`` as its first axis; those under ``scan/`` are rewritten whole
    when scans are appended and datasets under ``results/`` are not per scan."""
    return not name.startswith((f"{SCAN}/", f"{TABLES}/", RESULTS))


def is_listed(name: str) -> bool:
    """Whether a member path is user data listed by ``contrasts``/``methods`` (not a cache)."""
    return not name.startswith("_")
