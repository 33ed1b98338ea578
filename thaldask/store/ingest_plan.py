"""Ingest plans: which file of a manifest goes to which scan and array, built once.

A plan is immutable (frozen dataclasses): :func:`plan_ingest` builds it from a validated
manifest, and each later stage that changes something derives a new plan
(``dataclasses.replace``): :func:`fill_sites` (sites from the clinical table),
:func:`merge_plan` (scan indices of an existing store, appended scans),
:func:`with_dtypes` (the storage type of each array once the arrays exist) and
:func:`only_rows` (the files to redo).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from thaldask.cohort.manifest import scan_table
from thaldask.store.cohort_store import CohortStore
from thaldask.store.format import HEADER_BYTES, scan_array
from thaldask.store.nifti import (
    axcodes,
    header_block,
    header_bytes,
    ras_affine,
    ras_orientation,
    ras_shape,
    same_grid,
)

__all__ = [
    "FileEntry",
    "ScanSpec",
    "IngestPlan",
    "plan_ingest",
    "fill_sites",
    "StoreFit",
    "merge_plan",
    "with_dtypes",
    "only_rows",
]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One manifest file of a scan and the array it is written to."""

    row: int
    kind: str  # "image" or "mask"
    contrast: str
    method: str
    labels: object
    path: str  # as written in the manifest
    file: str  # resolved path or URL
    array: str
    is_ref: bool  # the scan's reference image (its grid is the scan's grid)
    same_grid: bool | None = None  # images: on the reference file's grid (masks: None)
    dtype: str = "float32"  # storage type of ``array`` (numpy dtype string)


@dataclass(frozen=True, slots=True)
class ScanSpec:
    """One scan's files (the reference image first, then other images, then masks)."""

    scan: int
    subject: str
    timepoint: str
    entries: tuple[FileEntry, ...]
    voxels: int  # RAS voxels times files: the work of the scan


@dataclass(frozen=True)
class IngestPlan:
    """Scan table, scan-level metadata and per-scan file lists of one ingest."""

    scans: pd.DataFrame  # subject, timepoint, site per scan
    reference: tuple[str, ...]  # reference contrast per scan
    grid_shape: tuple[int, int, int]  # padded grid: the largest RAS shape
    scan_meta: dict  # arrays for ``scan/<key>`` (format.SCAN_META_KEYS)
    orig_axcodes: tuple[str, ...]
    specs: tuple[ScanSpec, ...]
    image_dtypes: dict  # image array -> "int16" or "float32"

    def arrays(self) -> list[str]:
        """Every array the plan writes, sorted."""
        return sorted({e.array for sp in self.specs for e in sp.entries})


def plan_ingest(df: pd.DataFrame) -> IngestPlan:
    """From a validated manifest (with headers), each scan's reference grid and tasks."""
    scans = scan_table(df)
    n = len(scans)
    ref_contrast, specs, axc = [], [], []
    meta = {
        "affine": np.zeros((n, 4, 4)),
        "shape": np.zeros((n, 3), np.int32),
        "spacing": np.zeros((n, 3)),
        "orig_affine": np.zeros((n, 4, 4)),
        "orig_shape": np.zeros((n, 3), np.int32),
        "orig_ornt": np.zeros((n, 3, 2)),
        "header": np.zeros((n, HEADER_BYTES), np.uint8),
        "header_info": np.zeros((n, 2), np.int32),
    }
    cols = ["row", "kind", "contrast", "method", "labels", "path", "file", "shape", "affine"]
    recs = dict(zip(df.index, df[cols].itertuples(index=False, name="File"), strict=True))
    headers = dict(zip(df.index, df["header"].tolist(), strict=True)) if "header" in df else {}
    names: dict = {}  # one string per array name, shared by its files
    groups: dict = {}  # (subject, timepoint) -> its rows' labels, in manifest order
    for k, s, t in zip(df.index, df["subject"].tolist(), df["timepoint"].tolist(), strict=True):
        groups.setdefault((s, t), []).append(k)
    for i, (s, t) in enumerate(zip(scans["subject"], scans["timepoint"], strict=False)):
        rows = groups[(s, t)]
        imgs = [k for k in rows if recs[k].kind == "image"]
        ref = next((k for k in imgs if recs[k].contrast == "T1w"), imgs[0])
        r_ref = recs[ref]
        shape3 = tuple(r_ref.shape[:3])
        aff = np.asarray(r_ref.affine, dtype=np.float64)
        ornt = ras_orientation(aff)
        rshape = ras_shape(shape3, ornt)
        ras_aff = ras_affine(aff, shape3, ornt)
        meta["affine"][i] = ras_aff
        meta["shape"][i] = rshape
        meta["spacing"][i] = np.sqrt((ras_aff[:3, :3] ** 2).sum(0))
        meta["orig_affine"][i] = aff
        meta["orig_shape"][i] = shape3
        meta["orig_ornt"][i] = ornt
        hdr = headers.get(ref)  # read once, when the manifest was validated
        fmt, hb = header_block(hdr) if hdr is not None else header_bytes(r_ref.file)
        meta["header"][i, : len(hb)] = np.frombuffer(hb, np.uint8)
        meta["header_info"][i] = (fmt, len(hb))
        ref_contrast.append(str(r_ref.contrast))
        axc.append(axcodes(aff, ornt))
        entries = []
        order = [ref] + [k for k in imgs if k != ref] + [k for k in rows if recs[k].kind == "mask"]
        for k in order:
            row, kind, contrast, method, labels, path, file, shape, affine = recs[k]
            on_ref = None
            if kind == "image":
                on_ref = bool(same_grid(affine, shape[:3], aff, shape3))
            entries.append(
                FileEntry(
                    row=int(row),
                    kind=kind,
                    contrast=contrast,
                    method=method,
                    labels=labels,
                    path=path,
                    file=file,
                    array=names.setdefault((kind, contrast, method), scan_array(kind, contrast, method)),
                    is_ref=k == ref,
                    same_grid=on_ref,
                )
            )
        specs.append(ScanSpec(scan=i, subject=s, timepoint=t, entries=tuple(entries),
                              voxels=int(np.prod(rshape)) * len(entries)))
    grid = tuple(int(v) for v in meta["shape"].max(0))
    return IngestPlan(scans, tuple(ref_contrast), grid, meta, tuple(axc), tuple(specs),
                      _image_dtypes(df, specs))


def _image_dtypes(df: pd.DataFrame, specs) -> dict[str, str]:
    """Storage type per image contrast: int16 when every file of it is unscaled 8/16-bit
    integer on its scan's reference grid (exact, half the bytes of float32), else float32."""
    small = {"uint8", "int8", "int16"}
    out: dict[str, str] = {}
    dtype_of = dict(zip(df["row"].tolist(), (df["dtype"] if "dtype" in df else
                                              pd.Series("float32", index=df.index)).tolist(), strict=True))
    for sp in specs:
        for e in sp.entries:
            if e.kind != "image":
                continue
            ok = str(dtype_of.get(e.row, "float32")) in small and e.same_grid
            out[e.array] = "int16" if out.get(e.array, "int16") == "int16" and ok else "float32"
    return out


def fill_sites(plan: IngestPlan, clin: pd.DataFrame) -> IngestPlan:
    """The plan with sites missing from the manifest taken from the clinical table."""
    site = {
        (str(s), str(t)): str(v)
        for s, t, v in zip(clin["subject"], clin["timepoint"], clin["site"], strict=False)
        if v is not None and str(v) not in ("", "nan", "None")
    }
    scans = plan.scans.copy()
    for k in scans.index:
        if not scans.at[k, "site"]:
            scans.at[k, "site"] = site.get((scans.at[k, "subject"], scans.at[k, "timepoint"]), "")
    return replace(plan, scans=scans)


@dataclass(frozen=True)
class StoreFit:
    """How a manifest's plan fits an existing store (:func:`merge_plan`)."""

    plan: IngestPlan | None  # re-indexed to the store; None when it cannot fit
    why: str = ""  # the reason it cannot fit
    n_added: int = 0  # scans appended to the store
    regrid: tuple[int, ...] = ()  # stored scans whose reference grid this manifest changes
    grown: bool = False  # the padded grid grows (new or re-gridded scans are larger)


def merge_plan(st: CohortStore, plan: IngestPlan, *, overwrite: bool = False) -> StoreFit:
    """Fit a manifest's plan onto an existing store.

    Scans already stored keep their index; new scans are appended. The padded grid grows
    to take scans larger than it (:func:`~thaldask.store.create.grow_grid`). A stored scan
    whose reference grid the manifest changes cannot fit unless ``overwrite``: then its
    scan-level metadata are replaced and every array of it is re-written or marked not
    written (``regrid``).
    """
    old = list(zip(st.scans["subject"], st.scans["timepoint"], strict=False))
    pos = {k: i for i, k in enumerate(old)}
    keys = list(zip(plan.scans["subject"], plan.scans["timepoint"], strict=False))
    regrid = []  # (store index, plan index)
    for j, k in enumerate(keys):
        i = pos.get(k)
        if i is None:
            continue
        if not (
            np.allclose(st.orig_affines[i], plan.scan_meta["orig_affine"][j], atol=1e-6)
            and np.array_equal(st.orig_shapes[i], plan.scan_meta["orig_shape"][j])
        ):
            if not overwrite:
                return StoreFit(None, (
                    f"the reference grid of {k[0]} {k[1]} differs from the stored one; "
                    "--overwrite re-grids that scan"
                ))
            regrid.append((i, j))
    added = [j for j, k in enumerate(keys) if k not in pos]
    grid = np.asarray(st.grid_shape)
    changed = added + [j for _, j in regrid]
    if changed:
        grid = np.maximum(grid, plan.scan_meta["shape"][changed].max(0))
    grid_shape = tuple(int(v) for v in grid)
    index = {k: pos[k] for k in keys if k in pos}
    for n, j in enumerate(added):
        index[keys[j]] = len(old) + n
    specs = tuple(replace(sp, scan=index[(sp.subject, sp.timepoint)]) for sp in plan.specs)
    meta = {key: st.scan_meta(key) for key in plan.scan_meta}
    reference = list(st.reference)
    axc = list(st.orig_axcodes)
    for i, j in regrid:
        for key, arr in plan.scan_meta.items():
            meta[key][i] = arr[j]
        reference[i] = plan.reference[j]
        axc[i] = plan.orig_axcodes[j]
    if added:
        for key, arr in plan.scan_meta.items():
            meta[key] = np.concatenate([meta[key], arr[added]])
        reference += [plan.reference[j] for j in added]
        axc += [plan.orig_axcodes[j] for j in added]
    scans = pd.concat([st.scans, plan.scans.iloc[added]], ignore_index=True)
    scans.index.name = "scan"
    merged = IngestPlan(
        scans=scans,
        reference=tuple(reference),
        grid_shape=grid_shape,
        scan_meta=meta,
        orig_axcodes=tuple(axc),
        specs=specs,
        image_dtypes=plan.image_dtypes,
    )
    return StoreFit(merged, "", len(added), tuple(sorted(i for i, _ in regrid)),
                    grid_shape != tuple(st.grid_shape))


def with_dtypes(plan: IngestPlan, stored: dict[str, str]) -> IngestPlan:
    """The plan with each file's ``dtype`` set to its array's storage type ``stored[array]``."""
    specs = tuple(
        replace(sp, entries=tuple(replace(e, dtype=stored[e.array]) for e in sp.entries))
        for sp in plan.specs
    )
    return replace(plan, specs=specs)


def only_rows(specs, rows: set[int]) -> list[ScanSpec]:
    """The scans of ``specs`` with only their files of manifest ``rows`` (scans left
    without files dropped)."""
    out = [replace(sp, entries=tuple(e for e in sp.entries if e.row in rows)) for sp in specs]
    return [sp for sp in out if sp.entries]
