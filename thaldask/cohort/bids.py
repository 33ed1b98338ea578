"""Build a manifest from a BIDS dataset.

Raw images: ``sub-*/[ses-*/]anat/*_{T1w,FLAIR,R1map}.nii[.gz]`` (BIDS ``R1map`` becomes
contrast ``R1``). Masks: ``derivatives/<method>/sub-*/[ses-*/][anat/]*_dseg.nii[.gz]``;
``derivatives/manual`` is the ground truth (method ``gt``). The contrast a mask belongs to
comes from its ``space-``, ``acq-`` or ``desc-`` entity when that names an image contrast of
the scan, else the scan's T1w (or its only contrast). Label conventions come from a BIDS
``*_dseg.tsv`` look-up table naming left/right thalamus, else from the method's name
(freesurfer, fastsurfer, synthseg, first, dbsegment), else from the mask's values, else an
explicit ``labels={method: spec}``. Timepoint is the session label (``ses-01``) or
``baseline`` without sessions; site comes from ``participants.tsv`` (``site`` or
``scanner`` column) when present.
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import numpy as np
import pandas as pd

from thaldask._shared.paths import atomic_write, check_may_write
from thaldask.cohort._csv import read_table
from thaldask.cohort.labels import detect_convention
from thaldask.cohort.manifest import MANIFEST_COLUMNS
from thaldask.errors import ManifestError, ThaldaskWarning

__all__ = ["manifest_from_bids", "write_manifest", "BIDS_CONTRASTS"]

#: BIDS suffix -> thaldask contrast
BIDS_CONTRASTS = {"T1w": "T1w", "FLAIR": "FLAIR", "R1map": "R1"}
_METHOD_LABELS = {
    "freesurfer": "freesurfer",
    "fastsurfer": "freesurfer",
    "synthseg": "synthseg",
    "first": "first",
    "fsl-first": "first",
    "dbsegment": "dbsegment",
}
_EXT = re.compile(r"\.nii(\.gz)?$")


def _entities(fname: str) -> tuple[dict, str]:
    base = _EXT.sub("", os.path.basename(fname))
    parts = base.split("_")
    ents = {}
    for p in parts[:-1]:
        k, _, v = p.partition("-")
        if v:
            ents[k] = v
    return ents, parts[-1]


def _utf8_name(path: str) -> bool:
    """Whether ``path`` (as ``glob`` returns it) is valid UTF-8; warn and say no if not."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        warnings.warn(
            f"{shown}: file name is not valid UTF-8; skipped (rename it)",
            ThaldaskWarning,
            stacklevel=3,
        )
        return False
    return True


def _sites(root: str) -> dict[str, str]:
    p = os.path.join(root, "participants.tsv")
    if not os.path.isfile(p):
        return {}
    df = read_table(p, what="participants table", error=ManifestError)
    col = next((c for c in ("site", "scanner", "center", "centre") if c in df.columns), None)
    if col is None or "participant_id" not in df.columns:
        return {}
    return dict(zip(df["participant_id"], df[col], strict=False))


def _thalamus_ids(tsv: str) -> str | None:
    try:
        lut = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except Exception:
        return None
    if not {"index", "name"} <= set(lut.columns):
        return None
    left, right, both = [], [], []
    for idx, name in zip(lut["index"], lut["name"], strict=False):
        n = name.lower().replace("_", "-")
        if "thalam" not in n:
            continue
        if re.search(r"(^|[^a-z])(left|lh|l)([^a-z]|$)", n):
            left.append(idx)
        elif re.search(r"(^|[^a-z])(right|rh|r)([^a-z]|$)", n):
            right.append(idx)
        else:
            both.append(idx)
    if left and right:
        return f"L:{','.join(left)};R:{','.join(right)}"
    if both and not left and not right:
        return ",".join(both) if len(both) == 1 else None
    return None


def _lut_for(mask: str, method_root: str) -> str | None:
    own = _EXT.sub("", mask) + ".tsv"
    if os.path.isfile(own):
        return own
    cands = sorted(glob.glob(os.path.join(method_root, "*dseg.tsv")))
    return cands[0] if cands else None


def manifest_from_bids(root: str | os.PathLike, *, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Scan a BIDS dataset and return a manifest DataFrame (absolute paths).

    Parameters
    ----------
    root : BIDS dataset folder
    labels : method -> label convention, overriding what is found (``{"manual": "binary"}``
        or ``{"gt": "L:1;R:2"}``)

    Raises
    ------
    ManifestError
        no images found.
    """
    root = os.path.abspath(os.fspath(root))
    labels = {k: v for k, v in (labels or {}).items()}
    sites = _sites(root)
    rows = []
    seen: dict[tuple, str] = {}
    for f in sorted(
        glob.glob(os.path.join(root, "sub-*", "anat", "*.nii*"))
        + glob.glob(os.path.join(root, "sub-*", "ses-*", "anat", "*.nii*"))
    ):
        if not _utf8_name(f):
            continue
        ents, suffix = _entities(f)
        if suffix not in BIDS_CONTRASTS or "sub" not in ents:
            continue
        sub = f"sub-{ents['sub']}"
        tp = f"ses-{ents['ses']}" if "ses" in ents else "baseline"
        contrast = BIDS_CONTRASTS[suffix]
        key = (sub, tp, contrast)
        if key in seen:
            warnings.warn(
                f"{f}: another {contrast} of {sub} {tp} ({os.path.basename(seen[key])}) is used; "
                "this one is skipped",
                ThaldaskWarning,
                stacklevel=2,
            )
            continue
        seen[key] = f
        rows.append(
            {"subject": sub, "timepoint": tp, "site": sites.get(sub, ""), "kind": "image",
             "contrast": contrast, "method": "", "labels": "", "path": f}
        )
    if not rows:
        raise ManifestError(
            f"{root}: no BIDS images found (sub-*/[ses-*/]anat/*_{{T1w,FLAIR,R1map}}.nii[.gz])"
        )
    contrasts: dict[tuple, list[str]] = {}
    for r in rows:
        contrasts.setdefault((r["subject"], r["timepoint"]), []).append(r["contrast"])
    deriv = os.path.join(root, "derivatives")
    for mdir in sorted(glob.glob(os.path.join(deriv, "*"))):
        if not os.path.isdir(mdir):
            continue
        folder = os.path.basename(mdir)
        method = "gt" if folder.lower() == "manual" else folder
        files = sorted(
            set(
                glob.glob(os.path.join(mdir, "sub-*", "**", "*_dseg.nii*"), recursive=True)
            )
        )
        for f in files:
            if not _utf8_name(f):
                continue
            ents, _ = _entities(f)
            if "sub" not in ents:
                continue
            sub = f"sub-{ents['sub']}"
            tp = f"ses-{ents['ses']}" if "ses" in ents else "baseline"
            have = contrasts.get((sub, tp), [])
            contrast = None
            for k in ("space", "acq", "desc"):
                v = ents.get(k, "")
                c = BIDS_CONTRASTS.get(v, v)
                if c in have:
                    contrast = c
                    break
            if contrast is None:
                contrast = "T1w" if "T1w" in have or not have else have[0]
            lab = labels.get(folder) or labels.get(method)
            if not lab:
                lut = _lut_for(f, mdir)
                lab = _thalamus_ids(lut) if lut else None
            if not lab:
                lab = _METHOD_LABELS.get(folder.lower())
            if not lab:
                try:
                    import nibabel as nib

                    lab = detect_convention(np.asarray(nib.load(f).dataobj)).spec
                except Exception as exc:
                    warnings.warn(
                        f"{f}: label convention unknown ({str(exc).splitlines()[0]}); "
                        f"pass labels for method {method!r}",
                        ThaldaskWarning,
                        stacklevel=2,
                    )
                    lab = ""
            rows.append(
                {"subject": sub, "timepoint": tp, "site": sites.get(sub, ""), "kind": "mask",
                 "contrast": contrast, "method": method, "labels": lab, "path": f}
            )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_manifest(df: pd.DataFrame, out: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write a manifest CSV with paths relative to its own folder; return its path.

    The file is written to a temporary name and renamed, so an interrupted write leaves
    any previous manifest as it was.

    Raises
    ------
    OutputExistsError
        ``out`` exists and is not a manifest thaldask wrote there (unchanged since),
        unless ``overwrite``.
    """
    out = os.path.abspath(os.fspath(out))
    check_may_write(out, overwrite=overwrite)
    folder = os.path.dirname(out)
    os.makedirs(folder, exist_ok=True)
    df = df.copy()
    df["path"] = [os.path.relpath(p, folder) if os.path.isabs(p) else p for p in df["path"]]
    with atomic_write(out, "w", newline="") as f:
        df[MANIFEST_COLUMNS].to_csv(f, index=False, lineterminator="\n")
    return out
