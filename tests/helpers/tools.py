"""Stand-ins for the field's segmentation tools: small Python programs put on PATH.

Each behaves like its real tool as far as thaldask can see: the same options, output names
and folder layout, format (MGZ through nibabel, or NIfTI), grid (input grid for SAMSEG and
FIRST; FreeSurfer's conformed 1 mm LIA grid for recon-all, SynthSeg and FastSurfer, smaller
than 256³ but with the same orientation and world alignment; 1 mm LPI for DBSegment) and
label ids, with other structures' labels around the thalami. Their segmentation is the
ground truth of the scan, found in a side folder by the digest of the input's voxels
(:func:`write_truth`), so Dice is checkable.

A file ``mode-<tool>`` in the side folder makes one tool misbehave: ``fail`` (exit 2 with a
message on stderr), ``sleep`` (hang), ``nooutput`` (exit 0, nothing written), ``empty`` (a
0-byte output), ``wronggrid`` (output on another grid), ``nolabels`` (no thalamus label).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

#: stand-in program -> tool kind
PROGRAMS = {
    "run_samseg": "samseg",
    "recon-all": "freesurfer",
    "mri_synthseg": "synthseg",
    "run_fastsurfer.sh": "fastsurfer",
    "run_first_all": "first",
    "DBSegment": "dbsegment",
}

_SCRIPT = r'''
import argparse, glob, hashlib, os, sys, time
from pathlib import Path
import numpy as np
import nibabel as nib
from scipy import ndimage

KIND = {kind!r}
SIDE = Path(os.environ["THALDASK_STANDIN_DIR"])
mode_file = SIDE / f"mode-{{KIND}}"
MODE = mode_file.read_text().strip() if mode_file.exists() else ""
with open(SIDE / f"calls-{{KIND}}.log", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")


def truth_of(path):
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    key = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    f = SIDE / f"{{key}}.npy"
    if not f.exists():
        sys.exit(f"ERROR: {{path}}: no such subject")
    return np.load(f), img.affine, data


def relabel(sides, image, kind):
    """0/1/2 -> the tool's ids, with other structures' labels around."""
    out = np.zeros(sides.shape, np.int32)
    other = (image > np.percentile(image, 60)) & (sides == 0)
    out[other] = 2                      # cerebral white matter (left), FreeSurfer id
    out[other & (np.indices(sides.shape)[0] % 2 == 1)] = 41
    if kind == "dbsegment":
        left, right = sides == 1, sides == 2
        out[other] = 1
        out[left] = 24
        out[right] = 25
        z = np.indices(sides.shape)[2]
        out[left & (z % 5 == 0)] = 26       # VPL nuclei
        out[right & (z % 5 == 0)] = 27
        out[left & (z % 7 == 1)] = 30       # VIM nuclei
        out[right & (z % 7 == 1)] = 31
    else:
        out[sides == 1] = 10
        out[sides == 2] = 49
    return out


def grid_like(affine, shape, codes, pad=4):
    """A 1 mm cubic grid oriented `codes` (e.g. LIA) covering the input's field of view."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    w = (affine @ corners.T).T[:, :3]
    lo, hi = w.min(0), w.max(0)
    n = int(np.ceil((hi - lo).max())) + 2 * pad
    centre = (lo + hi) / 2
    axes = {{"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1), "I": (2, -1), "S": (2, 1)}}
    m = np.zeros((3, 3))
    for col, c in enumerate(codes):
        ax, sign = axes[c]
        m[ax, col] = sign
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = centre - m @ np.full(3, (n - 1) / 2)
    return aff, (n, n, n)


def resample(data, src, dst, shape, order):
    t = np.linalg.inv(src) @ dst
    return ndimage.affine_transform(data, t[:3, :3], offset=t[:3, 3], output_shape=shape,
                                    order=order, mode="constant", cval=0, prefilter=False)


def save(data, affine, path, mgz):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if MODE == "empty":
        open(path, "wb").close()
        return
    if mgz:
        img = nib.MGHImage(np.asarray(data, dtype=np.int32 if data.dtype.kind in "iu" else np.float32), affine)
    else:
        img = nib.Nifti1Image(data, affine)
    nib.save(img, path)


def write_seg(inp, path, grid, mgz, posteriors=None):
    sides, aff, image = truth_of(inp)
    if MODE == "nolabels":
        sides = np.zeros_like(sides)
    if MODE == "fail":
        print("reading input ... done", flush=True)
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                         f"RuntimeError: {{KIND}} stand-in asked to fail\n")
        sys.exit(2)
    if MODE == "sleep":
        time.sleep(600)
    if MODE == "nooutput":
        print("finished without writing anything")
        return
    if grid == "input":
        out_aff, seg = aff, relabel(sides, image, KIND)
        if MODE == "wronggrid":
            seg = seg[::2, ::2, ::2]
            out_aff = aff @ np.diag([2.0, 2, 2, 1])
    else:
        out_aff, shape = grid_like(aff, sides.shape, grid)
        if MODE == "wronggrid":
            out_aff = out_aff.copy()
            out_aff[:3, :3] *= 1.5
        seg = resample(relabel(sides, image, KIND), aff, out_aff, shape, 0)
    save(seg, out_aff, path, mgz)
    if posteriors:
        for side, name in ((1, "Left-Thalamus"), (2, "Right-Thalamus")):
            p = np.where(sides == side, 0.9, 0.02).astype(np.float32)
            save(p, out_aff, os.path.join(posteriors, name + ".mgz"), True)


if KIND == "samseg":
    ap = argparse.ArgumentParser(prog="run_samseg")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-i", "--input", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pallidum-separate", action="store_true")
    ap.add_argument("--save-posteriors", nargs="*")
    a = ap.parse_args()
    post = os.path.join(a.output, "posteriors") if a.save_posteriors is not None else None
    write_seg(a.input[0], os.path.join(a.output, "seg.mgz"), "input", True, post)
elif KIND == "freesurfer":
    lic = os.environ.get("FS_LICENSE") or os.path.join(os.environ.get("FREESURFER_HOME", "/x"), "license.txt")
    if not os.path.isfile(lic):
        sys.exit(f"ERROR: FreeSurfer license file {{lic}} not found.")
    ap = argparse.ArgumentParser(prog="recon-all")
    ap.add_argument("-s", required=True)
    ap.add_argument("-i", required=True)
    ap.add_argument("-all", action="store_true")
    ap.add_argument("-sd", required=True)
    ap.add_argument("-openmp", type=int, default=1)
    ap.add_argument("-version", action="store_true")
    a = ap.parse_args()
    write_seg(a.i, os.path.join(a.sd, a.s, "mri", "aseg.mgz"), "LIA", True)
elif KIND == "synthseg":
    ap = argparse.ArgumentParser(prog="mri_synthseg")
    ap.add_argument("--i", required=True)
    ap.add_argument("--o", required=True)
    ap.add_argument("--robust", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    write_seg(a.i, a.o, "LIA", a.o.endswith(".mgz"))
elif KIND == "fastsurfer":
    if "--version" in sys.argv:
        print("2.4.2")
        sys.exit(0)
    ap = argparse.ArgumentParser(prog="run_fastsurfer.sh")
    ap.add_argument("--t1", required=True)
    ap.add_argument("--sid", required=True)
    ap.add_argument("--sd", required=True)
    ap.add_argument("--seg_only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    write_seg(a.t1, os.path.join(a.sd, a.sid, "mri", "aparc.DKTatlas+aseg.deep.mgz"), "LIA", True)
elif KIND == "first":
    ap = argparse.ArgumentParser(prog="run_first_all")
    ap.add_argument("-i", required=True)
    ap.add_argument("-o", required=True)
    ap.add_argument("-s", default=None)
    ap.add_argument("-b", action="store_true")
    a = ap.parse_args()
    write_seg(a.i, a.o + "_all_fast_firstseg.nii.gz", "input", False)
elif KIND == "dbsegment":
    ap = argparse.ArgumentParser(prog="DBSegment")
    ap.add_argument("-i", required=True)
    ap.add_argument("-o", required=True)
    ap.add_argument("-mp", default="/usr/local/share")
    a = ap.parse_args()
    for f in sorted(glob.glob(os.path.join(a.i, "*.nii*"))):
        name = os.path.basename(f).split(".nii")[0]
        write_seg(f, os.path.join(a.o, name + "_seg.nii.gz"), "LPI", False)
'''


def install_standins(bin_dir: Path, side_dir: Path, programs=None) -> dict:
    """Write the stand-in programs into ``bin_dir``; returns the environment to run them
    (PATH with ``bin_dir`` first, the side folder, FSLDIR, FREESURFER_HOME and FS_LICENSE)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    side_dir.mkdir(parents=True, exist_ok=True)
    for prog, kind in PROGRAMS.items():
        if programs is not None and prog not in programs:
            continue
        p = bin_dir / prog
        p.write_text(f"#!{sys.executable}\n" + _SCRIPT.format(kind=kind))
        p.chmod(0o755)
    fs_home = side_dir / "freesurfer"
    fs_home.mkdir(exist_ok=True)
    (fs_home / "build-stamp.txt").write_text("freesurfer-linux-standin-7.4.1\n")
    fsl = side_dir / "fsl"
    (fsl / "etc").mkdir(parents=True, exist_ok=True)
    (fsl / "etc" / "fslversion").write_text("6.0.7.standin\n")
    lic = side_dir / "license.txt"
    lic.write_text("standin licence\n")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "THALDASK_STANDIN_DIR": str(side_dir),
        "FREESURFER_HOME": str(fs_home),
        "FS_LICENSE": str(lic),
        "FSLDIR": str(fsl),
    }


def write_truth(side_dir: Path, store, contrast: str = "T1w", method: str = "gt") -> int:
    """Side files: the ground truth of every scan, keyed by the digest of its ``contrast``
    image as thaldask hands it to a tool (float32 voxels on the scan's grid)."""
    n = 0
    for i in range(store.n_scans):
        if not store.has_image(contrast)[i]:
            continue
        img = store.load_image(contrast, i).astype(np.float32)
        key = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        np.save(side_dir / f"{key}.npy", store.load_mask(method, "T1w", i))
        n += 1
    return n


def set_mode(side_dir: Path, tool: str, mode: str) -> None:
    """Make stand-in ``tool`` misbehave (``""``: behave)."""
    f = Path(side_dir) / f"mode-{tool}"
    if mode:
        f.write_text(mode)
    elif f.exists():
        f.unlink()
