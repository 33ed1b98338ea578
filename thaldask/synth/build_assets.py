"""Build the anatomy asset shipped in ``thaldask/data/anatomy/`` from whole-head label maps.

Run once by a maintainer, never at run time::

    python -m thaldask.synth.build_assets SOURCE_DIR [--out thaldask/data/anatomy] [--n 5]

``SOURCE_DIR`` holds SynthSeg's published training label maps (``training_seg_XX.nii.gz``,
256³ 1 mm FreeSurfer conformed space, FreeSurfer labels; Apache License 2.0). Each selected
map is reoriented to RAS, cropped to the head, relabelled to uint8 and stored compressed in
one ``.npz`` per map:

- brain labels below 100 keep their FreeSurfer ids (10/49 thalamus, 2/41 white matter, ...);
  the few extra-cerebral generation classes below 100 (25, 30, 57, 62, 72, 85) become
  :data:`OTHER` (90);
- every extra-cerebral id of 100 and above becomes ``100 + k`` (k = its rank among those ids),
  so that each keeps its own random intensity.

Arrays in each file: ``labels`` (uint8, X×Y×Z RAS), ``affine`` (4×4 float64, RAS mm),
``icv_mm3`` (intracranial volume of the full head: brain + CSF labels), ``source`` (name).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

OTHER = 90
EXTRA_BELOW_100 = (25, 30, 57, 62, 72, 85)
#: FreeSurfer ids counted as intracranial (brain tissue and CSF)
INTRACRANIAL = (
    2,
    3,
    4,
    5,
    7,
    8,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    24,
    26,
    28,
    41,
    42,
    43,
    44,
    46,
    47,
    49,
    50,
    51,
    52,
    53,
    54,
    58,
    60,
    72,
    85,
    30,
    62,
)
DEFAULT_MAPS = (1, 2, 3, 4, 5)


def relabel(data: np.ndarray) -> np.ndarray:
    """FreeSurfer/SynthSeg ids -> the compact uint8 classes described in the module docstring."""
    d = np.asarray(data).astype(np.int32)
    out = np.where(d < 100, d, 0).astype(np.uint8)
    out[np.isin(d, EXTRA_BELOW_100)] = OTHER
    extra = sorted(int(v) for v in np.unique(d) if v >= 100)
    for k, v in enumerate(extra):
        out[d == v] = 100 + k
    return out


def build_one(path: Path) -> dict:
    """Load one label map, reorient to RAS, crop to the head and relabel."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj)
    icv = float(np.isin(data.astype(np.int32), INTRACRANIAL).sum()) * float(
        abs(np.linalg.det(img.affine[:3, :3]))
    )
    nz = np.nonzero(data)
    lo = np.array([a.min() for a in nz]) - 2
    hi = np.array([a.max() for a in nz]) + 3
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, data.shape)
    crop = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
    return {
        "labels": relabel(crop),
        "affine": aff.astype(np.float64),
        "icv_mm3": np.float64(icv),
        "source": np.str_(path.name),
    }


def _write_npz(path: Path, arrays: dict) -> None:
    """A deterministic compressed .npz (fixed zip timestamps), so rebuilding gives the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build_assets(source: str | Path, out: str | Path, maps=DEFAULT_MAPS) -> list[Path]:
    """Write ``anatomy_XX.npz`` for each selected map of ``source`` into ``out``.

    Parameters
    ----------
    source : folder with ``training_seg_XX.nii.gz`` (explicit; never read at run time)
    out : destination folder (normally ``thaldask/data/anatomy``)
    maps : map numbers to include
    """
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in maps:
        arrays = build_one(source / f"training_seg_{i:02d}.nii.gz")
        p = out / f"anatomy_{i:02d}.npz"
        _write_npz(p, arrays)
        written.append(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        print(
            f"{p}  {arrays['labels'].shape}  icv={float(arrays['icv_mm3']) / 1e3:.0f} cm3  "
            f"{p.stat().st_size / 1e3:.0f} kB  sha256:{digest}"
        )
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "anatomy"))
    ap.add_argument("--maps", default=",".join(map(str, DEFAULT_MAPS)))
    a = ap.parse_args(argv)
    build_assets(a.source, a.out, tuple(int(m) for m in a.maps.split(",")))


if __name__ == "__main__":
    main()
