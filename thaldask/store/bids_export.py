"""Stored segmentations as BIDS derivatives, the field's convention for sharing them.

``export_bids(store, root)`` writes, for every stored mask array (method × contrast)::

    root/derivatives/<method>/dataset_description.json   GeneratedBy: tool, version, container
    root/derivatives/<method>/desc-thalamus_dseg.tsv     0 background, 1 left, 2 right thalamus
    root/derivatives/<method>/sub-<s>/[ses-<t>/]anat/
        sub-<s>[_ses-<t>]_space-<contrast>_desc-thalamus_dseg.nii.gz   on the scan's own grid
        sub-<s>[_ses-<t>]_space-<contrast>_desc-thalamus_dseg.json     Sources: its image

Ground truth (``gt``) goes to ``derivatives/manual``, which
:func:`~thaldask.cohort.bids.manifest_from_bids` reads back as ``gt``; the ``space-``
entity names the image contrast (BIDS suffix: ``T1w``, ``FLAIR``, ``R1map``) and the label
table gives the side ids, so ``manifest from-bids`` on ``root`` finds every exported mask
with its contrast and labels. Subjects named ``sub-*`` and timepoints ``ses-*`` keep their
labels; other names are reduced to letters and digits, and a subject stored only at
``baseline`` gets no session. The sidecar records the store's own subject and timepoint.

Nothing is replaced that thaldask did not write: a ``derivatives/<method>`` folder that
exists without a thaldask ``dataset_description.json`` (another tool's outputs) is refused,
and so is any existing file there, before anything is written (unless ``overwrite``).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from thaldask import __version__
from thaldask._shared.paths import (
    check_may_write,
    safe_name,
    save_image,
    write_text,
    written_by_thaldask,
)
from thaldask.cohort.bids import BIDS_CONTRASTS
from thaldask.errors import OutputExistsError, StoreError
from thaldask.schema import GT_METHOD
from thaldask.store.cohort_store import CohortStore, open_store
from thaldask.store.export import to_original_image
from thaldask.store.format import image_array, mask_array
from thaldask.store.sources import read_sources

__all__ = ["export_bids", "bids_label", "PROVENANCE_ATTR"]

#: attribute of a mask array with the external tool that wrote it (see segment.tool_stage)
PROVENANCE_ATTR = "thaldask_tool"
BIDS_VERSION = "1.9.0"
_SUFFIX = {v: k for k, v in BIDS_CONTRASTS.items()}  # thaldask contrast -> BIDS suffix
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
DSEG_TSV = "index\tname\tabbreviation\n1\tLeft-Thalamus\tLThal\n2\tRight-Thalamus\tRThal\n"


def bids_label(name: str, prefix: str) -> str:
    """A BIDS entity label (letters and digits) for a store identifier.

    >>> bids_label("sub-01", "sub"), bids_label("m12", "ses"), bids_label("P_7", "sub")
    ('01', 'm12', 'P7')
    """
    s = str(name)
    if s.startswith(f"{prefix}-"):
        s = s[len(prefix) + 1:]
    return _NOT_ALNUM.sub("", s) or "x"


def _folder(method: str) -> str:
    return "manual" if method == GT_METHOD else safe_name(method)


def _scan_names(st: CohortStore) -> list[tuple[str, str | None]]:
    """(subject label, session label or None) per scan; refuses two scans on one name."""
    scans = st.scans
    n_tp = scans.groupby("subject")["timepoint"].nunique().to_dict()
    out, seen = [], {}
    for s, t in zip(scans["subject"], scans["timepoint"], strict=True):
        ses = None if (t == "baseline" and n_tp[s] == 1) else bids_label(t, "ses")
        key = (bids_label(s, "sub"), ses)
        if key in seen and seen[key] != (s, t):
            raise StoreError(f"{st.path}: {s} {t} and {seen[key][0]} {seen[key][1]} have the same "
                             "BIDS name; rename one before exporting")
        seen[key] = (s, t)
        out.append(key)
    return out


def _generated_by(st: CohortStore, method: str, contrast: str) -> list[dict]:
    """BIDS ``GeneratedBy``: the external tool that wrote the masks (its record in the mask
    array's :data:`PROVENANCE_ATTR`: tool, version, command, runtime, image), then thaldask."""
    prov = dict(st.zarr_array(mask_array(method, contrast)).attrs.get(PROVENANCE_ATTR) or {})
    tool = {"Name": str(prov.get("tool") or ("manual" if method == GT_METHOD else method))}
    version = prov.get("version")
    if version:
        tool["Version"] = str(version) if not isinstance(version, list) else ", ".join(map(str, version))
    if prov.get("command"):
        cmd = prov["command"]
        tool["Description"] = "command: " + (" ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd))
    if prov.get("image"):
        tool["Container"] = {"Type": str(prov.get("runtime") or "docker"), "Tag": str(prov["image"])}
    return [tool, {"Name": "thaldask", "Version": __version__,
                   "Description": "stored, resampled onto each scan's original grid, exported"}]


def _source(sources, st: CohortStore, root: str, contrast: str, i: int) -> list[str]:
    row = sources.get((image_array(contrast), i)) or sources.get((image_array(st.reference[i]), i))
    if row is None:
        return []
    path = str(row)
    rel = os.path.relpath(path, root) if not re.match(r"^[a-z0-9]+://", path) else ""
    if rel and not rel.startswith(".."):
        return [f"bids:raw:{rel.replace(os.sep, '/')}"]
    return [path]


def export_bids(store, root, *, methods=None, overwrite: bool = False) -> list[str]:
    """Write every stored mask (or those of ``methods``) as BIDS derivatives under ``root``.

    Returns the written NIfTI paths. Raises :class:`~thaldask.errors.OutputExistsError`
    before writing anything when a target exists that thaldask did not write.
    """
    st = store if isinstance(store, CohortStore) else open_store(store, read_only=True)
    root = os.path.abspath(os.fspath(root))
    pairs = [(m, c) for m, c in st.methods if methods is None or m in methods]
    if not pairs:
        raise StoreError(f"{st.path}: no masks to export"
                         + (f" for {', '.join(methods)}" if methods else ""))
    names = _scan_names(st)
    src = read_sources(st.path, storage_options=st.storage_options or None)
    sources = {(a, int(i)): p for a, i, p in zip(src["array"], src["scan"], src["path"], strict=True)}
    plan = []  # (method, contrast, scan, nifti path)
    for m, c in pairs:
        base = os.path.join(root, "derivatives", _folder(m))
        desc = os.path.join(base, "dataset_description.json")
        if os.path.isdir(base) and not overwrite and not (
                os.path.isfile(desc) and written_by_thaldask(desc)):
            raise OutputExistsError(f"{base}: exists and was not written by thaldask (another "
                                    "tool's outputs?); choose another folder, or --overwrite")
        for i in np.flatnonzero(st.has_mask(m, c)):
            sub, ses = names[int(i)]
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            folder = os.path.join(base, f"sub-{sub}", *([f"ses-{ses}"] if ses else []), "anat")
            fname = f"{stem}_space-{_SUFFIX.get(c, bids_label(c, ''))}_desc-thalamus_dseg.nii.gz"
            plan.append((m, c, int(i), os.path.join(folder, fname)))
    for p in [q for *_, q in plan] + [q[:-len(".nii.gz")] + ".json" for *_, q in plan]:
        check_may_write(p, overwrite=overwrite)  # every target, before the first write
    import nibabel as nib

    paths = []
    for m, c in pairs:
        base = os.path.join(root, "derivatives", _folder(m))
        os.makedirs(base, exist_ok=True)
        desc = {
            "Name": f"thalamus segmentation: {m}" + (" (manual ground truth)" if m == GT_METHOD else ""),
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": _generated_by(st, m, c),
            "DatasetLinks": {"raw": "../../"},
        }
        for name, text in (("dataset_description.json", json.dumps(desc, indent=2) + "\n"),
                           ("desc-thalamus_dseg.tsv", DSEG_TSV)):
            target = os.path.join(base, name)
            if os.path.exists(target) and not overwrite and not written_by_thaldask(target):
                raise OutputExistsError(f"{target}: exists and was not written by thaldask")
            write_text(target, text)
    for m, c, i, p in plan:
        img = to_original_image(st, i, st.load_mask(m, c, i))
        if isinstance(img, nib.MGHImage):  # BIDS is NIfTI: same voxels and affine
            img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.uint8), img.affine)
        img.set_data_dtype(np.uint8)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        save_image(img, p)
        s = st.scans.iloc[i]
        binary = bool(st.records(mask_array(m, c))["binary"].iloc[i])
        side = {"Description": "thalamus segmentation: " + (
                    "1 thalamus (sides not separated)" if binary else "1 left thalamus, 2 right thalamus"),
                "Sources": _source(sources, st, root, c, i),
                "Method": m, "Contrast": c,
                "thaldask": {"subject": str(s.subject), "timepoint": str(s.timepoint),
                             "store": str(st.path), "scan": i}}
        write_text(p[:-len(".nii.gz")] + ".json", json.dumps(side, indent=2) + "\n")
        paths.append(p)
    return paths
