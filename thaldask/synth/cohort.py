"""``make_cohort``: write a synthetic cohort (NIfTI/MGZ, manifest.csv, clinical.csv, truth.json).

Layout of ``out``::

    manifest.csv  clinical.csv  truth.json
    sub-001/ses-baseline/anat/sub-001_ses-baseline_{T1w,FLAIR,R1map}.nii.gz
    derivatives/gt/sub-001/ses-baseline/anat/sub-001_ses-baseline_desc-thalamus_dseg.nii.gz
    derivatives/freesurfer-sim/sub-001_ses-baseline/mri/aseg.mgz       (conformed LIA 1 mm)
    derivatives/{first-sim,dbsegment-sim}/sub-001/ses-baseline/anat/..._desc-thalamus_dseg.nii.gz
    derivatives/mindglide-sim/sub-001/ses-baseline/anat/..._space-{T1w,FLAIR,R1}_desc-thalamus_dseg.nii.gz

All images of a scan share one RAS grid (the site's voxel size); masks are on that grid except
``freesurfer-sim``, which is on a larger conformed LIA 1 mm grid (256³ for ``shape="full"``),
so the ingest has to resample it. Files are gzip-compressed with a zero timestamp: the same
seed gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thaldask import __version__
from thaldask._shared.compute import run_batches
from thaldask._shared.paths import write_text
from thaldask.errors import ConfigError
from thaldask.synth.anatomy import (
    THALAMUS,
    list_templates,
    load_template,
    make_geometry,
    rotation_matrix,
    sample_labels,
)
from thaldask.synth.images import draw_tissue, render_contrasts
from thaldask.synth.methods import encode_labels, method_spec, prepare_truth, simulate_sides
from thaldask.synth.params import METHOD_NAMES, merge_params
from thaldask.synth.subjects import CLINICAL_COLUMNS, make_sites, make_subject_table

__all__ = ["SHAPES", "SynthCohort", "make_cohort", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = ["subject", "timepoint", "site", "kind", "contrast", "method", "labels", "path"]

#: field of view (mm, RAS) and its centre relative to the point between the thalami;
#: conformed grid side (voxels, 1 mm) for freesurfer-sim
SHAPES = {
    "small": {"fov_mm": (72.0, 80.0, 64.0), "centre_mm": (0.0, -4.0, 4.0), "conformed": 96},
    # the two thalami and a margin only: for unit tests that need many subjects
    "tiny": {"fov_mm": (64.0, 56.0, 44.0), "centre_mm": (0.0, -6.0, 2.0), "conformed": 72},
    "full": {"fov_mm": (192.0, 240.0, 208.0), "centre_mm": (0.0, 8.0, 2.0), "conformed": 256},
}
GT_LABELS = "L:1;R:2"
_IMAGE_FILES = {"T1w": "T1w", "FLAIR": "FLAIR", "R1": "R1map"}


@dataclass
class SynthCohort:
    """Paths of a written synthetic cohort."""

    out: Path
    manifest: Path
    clinical: Path
    truth: Path
    n_scans: int


def _write_gz(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(gzip.compress(data, compresslevel=1, mtime=0))
    os.replace(tmp, path)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"thaldask synth"
    _write_gz(path, img.to_bytes())


def _save_mgz(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.MGHImage(data, affine)
    _write_gz(path, img.to_bytes())


def _grid(shape_name: str, voxel_mm) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS affine and shape of a scan grid (FOV centred on the scanner origin's offset)."""
    spec = SHAPES[shape_name]
    v = np.asarray(voxel_mm, dtype=float)
    shape = tuple(int(math.ceil(f / s - 1e-6)) for f, s in zip(spec["fov_mm"], v, strict=True))
    aff = np.diag([*v, 1.0])
    centre = np.asarray(spec["centre_mm"])
    aff[:3, 3] = centre - v * (np.asarray(shape) - 1) / 2.0
    return aff, shape


def _conformed_grid(shape_name: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """FreeSurfer-like conformed grid: LIA, 1 mm, cube, centred on the scan's FOV centre."""
    n = SHAPES[shape_name]["conformed"]
    A = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    aff = np.eye(4)
    aff[:3, :3] = A
    aff[:3, 3] = np.asarray(SHAPES[shape_name]["centre_mm"]) - A @ np.full(3, n / 2.0)
    return aff, (n, n, n)


def _conformed_labels(geom, aff, shape, caff, cshape, pose, thr) -> np.ndarray:
    """Labels on the conformed grid, inside the acquired field of view only (zero outside,
    as when FreeSurfer conforms a partial-coverage image)."""
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij")).reshape(3, -1)
    world = aff[:3, :3] @ corners + aff[:3, 3:4]
    cinv = np.linalg.inv(caff)
    cidx = cinv[:3, :3] @ world + cinv[:3, 3:4]
    lo = np.clip(np.ceil(cidx.min(axis=1) - 1e-6).astype(int), 0, None)
    hi = np.minimum(np.floor(cidx.max(axis=1) + 1e-6).astype(int) + 1, cshape)
    sub = caff.copy()
    sub[:3, 3] = caff[:3, :3] @ lo + caff[:3, 3]
    out = np.zeros(cshape, dtype=np.uint8)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sample_labels(
        geom, sub, tuple(hi - lo), pose=pose, thalamus_thresholds=thr
    )
    return out


def _maybe_fail(sides: np.ndarray, spec: dict, key: list, voxel_mm=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, str]:
    """Planted failures of one simulated mask, each with its own probability (default 0):
    ``failure_rate`` misses one whole side (an empty label), ``swap_rate`` swaps the left and
    right labels, ``misregistration_rate`` shifts the whole mask by ``misregistration_mm``
    (default 6 mm) along a random axis. Returns the mask and what was planted (``""``: none;
    else ``missed_side``, ``swapped_sides`` or ``misregistered``)."""
    kind = ""
    rate = float(spec.get("failure_rate", 0.0))
    if rate > 0:
        rng = np.random.default_rng(key)
        if rng.random() < rate:
            sides = sides.copy()
            sides[sides == 1 + int(rng.integers(2))] = 0
            return sides, "missed_side"
    if float(spec.get("swap_rate", 0.0)) > 0:
        rng = np.random.default_rng([*key, 1])
        if rng.random() < float(spec["swap_rate"]):
            out = sides.copy()
            out[sides == 1], out[sides == 2] = 2, 1
            return out, "swapped_sides"
    if float(spec.get("misregistration_rate", 0.0)) > 0:
        rng = np.random.default_rng([*key, 2])
        if rng.random() < float(spec["misregistration_rate"]):
            axis = int(rng.integers(3))
            step = int(round(float(spec.get("misregistration_mm", 6.0)) / float(np.asarray(voxel_mm)[axis])))
            step *= 1 if rng.random() < 0.5 else -1
            return np.roll(sides, step, axis=axis), "misregistered"
    return sides, kind


def _pose(rng: np.random.Generator, rot_deg: float, trans_mm: float) -> np.ndarray:
    """Rigid scanner -> head transform of one session."""
    P = np.eye(4)
    P[:3, :3] = rotation_matrix(np.deg2rad(rng.normal(0, rot_deg, 3)))
    P[:3, 3] = rng.normal(0, trans_mm, 3)
    return P


def _side_volumes(sides: np.ndarray, voxel_vol: float) -> dict:
    left = float((sides == 1).sum()) * voxel_vol
    right = float((sides == 2).sum()) * voxel_vol
    return {"left": left, "right": right, "total": left + right}


def _mask_rel(method: str, sub: str, tp: str, contrast: str) -> str:
    stem = f"{sub}_ses-{tp}"
    if method == "freesurfer-sim":
        return f"derivatives/{method}/{stem}/mri/aseg.mgz"
    space = f"_space-{contrast}" if method == "mindglide-sim" else ""
    return f"derivatives/{method}/{sub}/ses-{tp}/anat/{stem}{space}_desc-thalamus_dseg.nii.gz"


def render_subject(
    out: str, rows: list[dict], site: dict, params: dict, shape: str, seed: int, sites=None
) -> list[dict]:
    """Render every scan of one subject; returns one record per scan (truth + manifest rows).

    ``site`` is the subject's site; with ``sites`` (every site, by ``site_index``) each row
    uses its own row's site, as scan-rescan repeats on another scanner do. Deterministic in
    (seed, subject index, timepoint index); safe to run on any worker.
    """
    out = Path(out)
    first = rows[0]
    i = int(first["subject_index"])
    an = params["anatomy"]
    rng_subj = np.random.default_rng([int(seed), i, 1])
    tmpl = load_template(int(first["template"]))
    geom = make_geometry(
        int(first["template"]),
        float(first["icv_true_mm3"]) / tmpl.icv_mm3,
        rng_subj,
        field_mm=an["deformation_sd_mm"],
        field_smooth_mm=an["deformation_smoothness_mm"],
        shape_jitter=an["shape_jitter"],
    )
    tissue = draw_tissue(rng_subj, params["contrasts"]["tissue_jitter"])
    jac = [geom.jacobian_at(geom.thalamus_centroid(s)) for s in (0, 1)]
    caff, cshape = _conformed_grid(shape)
    r1_voxel = params["contrasts"]["r1"].get("voxel_mm")
    r1_aff = r1_shape = r1_vvox = None
    if r1_voxel is not None:
        r1_voxel = np.asarray(r1_voxel, dtype=float)
        r1_aff, r1_shape = _grid(shape, r1_voxel)
        r1_vvox = float(abs(np.linalg.det(r1_aff[:3, :3].astype(np.float32).astype(np.float64))))
    records = []
    for row in rows:
        # a repeat can be acquired with another site's settings (its own voxel grid)
        site = sites[int(row["site_index"])] if sites is not None else site
        voxel = np.asarray(site["voxel_mm"], dtype=float)
        aff, grid_shape = _grid(shape, voxel)
        # the voxel volume a reader of the file computes (NIfTI stores the affine as float32)
        vvox = float(abs(np.linalg.det(aff[:3, :3].astype(np.float32).astype(np.float64))))
        k = int(row["timepoint_index"])
        sub, tp = row["subject"], row["timepoint"]
        rng = np.random.default_rng([int(seed), i, 2, k])
        pose = _pose(rng, an["pose_rotation_deg"], an["pose_translation_mm"])
        targets = (row["thalamus_left_mm3"], row["thalamus_right_mm3"])
        thr = tuple(
            tmpl.threshold_for(s, targets[s] / (tmpl.volume_mm3[s] * jac[s])) for s in (0, 1)
        )
        labels = sample_labels(geom, aff, grid_shape, pose=pose, thalamus_thresholds=thr)
        gt = np.zeros(grid_shape, dtype=np.uint8)
        gt[labels == THALAMUS[0]] = 1
        gt[labels == THALAMUS[1]] = 2
        manifest = []
        grids = {"T1w": (aff, labels, voxel, vvox), "FLAIR": (aff, labels, voxel, vvox)}
        if r1_voxel is None:
            grids["R1"] = grids["T1w"]
            images = render_contrasts(labels, voxel, tissue, site, params["contrasts"], rng, aff)
        else:  # R1 acquired on its own, coarser grid: the ingest resamples it
            images = render_contrasts(
                labels, voxel, tissue, site, params["contrasts"], rng, aff, which=("T1w", "FLAIR")
            )
            r1_labels = sample_labels(geom, r1_aff, r1_shape, pose=pose, thalamus_thresholds=thr)
            images["R1"] = render_contrasts(
                r1_labels,
                r1_voxel,
                tissue,
                site,
                params["contrasts"],
                np.random.default_rng([int(seed), i, 4, k]),
                r1_aff,
                which=("R1",),
            )["R1"]
            grids["R1"] = (r1_aff, r1_labels, r1_voxel, r1_vvox)
        for contrast, data in images.items():
            rel = f"{sub}/ses-{tp}/anat/{sub}_ses-{tp}_{_IMAGE_FILES[contrast]}.nii.gz"
            _save_nifti(out / rel, data, grids[contrast][0])
            manifest.append(
                {"kind": "image", "contrast": contrast, "method": "", "labels": "", "path": rel}
            )
        if row["has_gt"]:
            rel = _mask_rel("gt", sub, tp, "T1w")
            _save_nifti(out / rel, gt, aff)
            manifest.append(
                {
                    "kind": "mask",
                    "contrast": "T1w",
                    "method": "gt",
                    "labels": GT_LABELS,
                    "path": rel,
                }
            )
        method_volumes = {}
        planted_failures = {}
        ref = params["methods"]["reference_volume_mm3"]
        prep = prepare_truth(labels, voxel)
        preps = {}
        clab = cprep = None
        for mi, method in enumerate(METHOD_NAMES):
            mp = params["methods"][method]
            for ci, contrast in enumerate(mp["contrasts"]):
                spec = method_spec(params, method, contrast)
                mrng = np.random.default_rng([int(seed), i, 3, k, mi, ci])
                if method == "freesurfer-sim":
                    if clab is None:
                        clab = _conformed_labels(geom, aff, grid_shape, caff, cshape, pose, thr)
                        cprep = prepare_truth(clab, (1.0, 1.0, 1.0))
                    sides = simulate_sides(
                        cprep,
                        spec,
                        reference_volume_mm3=ref,
                        site_shift_mm=site["volume_shift_mm"],
                        rng=mrng,
                    )
                    sides, failed = _maybe_fail(sides, spec, [int(seed), i, 5, k, mi, ci])
                    data = encode_labels(sides, method, clab)
                    rel = _mask_rel(method, sub, tp, contrast)
                    _save_mgz(out / rel, data, caff)
                    method_volumes[f"{method}/{contrast}"] = _side_volumes(sides, 1.0)
                else:
                    # a method runs on its contrast's image, so its mask is on that grid
                    g_aff, g_labels, g_voxel, g_vvox = grids[contrast]
                    if g_labels is not labels and contrast not in preps:
                        preps[contrast] = prepare_truth(g_labels, g_voxel)
                    sides = simulate_sides(
                        preps.get(contrast, prep),
                        spec,
                        reference_volume_mm3=ref,
                        site_shift_mm=site["volume_shift_mm"],
                        rng=mrng,
                    )
                    sides, failed = _maybe_fail(sides, spec, [int(seed), i, 5, k, mi, ci], g_voxel)
                    data = encode_labels(sides, method)
                    rel = _mask_rel(method, sub, tp, contrast)
                    _save_nifti(out / rel, data, g_aff)
                    method_volumes[f"{method}/{contrast}"] = _side_volumes(sides, g_vvox)
                if failed:
                    planted_failures[f"{method}/{contrast}"] = failed
                manifest.append(
                    {
                        "kind": "mask",
                        "contrast": contrast,
                        "method": method,
                        "labels": spec["labels"],
                        "path": rel,
                    }
                )
        for m in manifest:
            m.update({"subject": sub, "timepoint": tp, "site": row["site"]})
        records.append(
            {
                "subject": sub,
                "timepoint": tp,
                "site": row["site"],
                "subject_index": i,
                "timepoint_index": k,
                "years_since_baseline": row["years_since_baseline"],
                "voxel_mm": voxel.tolist(),
                "shape": list(grid_shape),
                "r1_voxel_mm": None if r1_voxel is None else r1_voxel.tolist(),
                "planted_thalamus_mm3": {
                    "left": targets[0],
                    "right": targets[1],
                    "total": targets[0] + targets[1],
                },
                "thalamus_mm3": _side_volumes(gt, vvox),
                "method_volume_mm3": method_volumes,
                "planted_failures": planted_failures,
                "has_gt": bool(row["has_gt"]),
                "repeat_of": row.get("repeat_of", "") or None,
                "manifest": manifest,
            }
        )
    return records


def _clean(x):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def make_cohort(
    out,
    *,
    n_subjects: int,
    n_timepoints: int = 2,
    n_sites: int = 2,
    seed: int = 0,
    shape: str = "small",
    client=None,
    params: dict | None = None,
    gt_fraction: float | None = None,
    progress: bool = True,
) -> SynthCohort:
    """Write a synthetic cohort with planted truths to the folder ``out``.

    Parameters
    ----------
    out : destination folder (created)
    n_subjects, n_timepoints, n_sites : cohort size (timepoints ``baseline``, ``m12``, ...)
    seed : same seed, same bytes
    shape : ``"small"`` (72×80×64 mm field of view around the deep grey matter), ``"full"``
        (whole 1 mm head, 192×240×208 mm) or ``"tiny"`` (64×56×44 mm: the thalami and a
        margin, for tests)
    client : a ``distributed.Client`` to render the subjects on (one task per subject);
        ``None``: the active client if there is one, else local threads
    params : partial dict of planted parameters (see :mod:`thaldask.synth.params`)
    gt_fraction : share of patients with ground truth at baseline (default 0.5)
    progress : show a progress bar on stderr

    Returns
    -------
    SynthCohort with the paths of ``manifest.csv``, ``clinical.csv`` and ``truth.json``.
    """
    if shape not in SHAPES:
        raise ConfigError(f"synth: shape {shape!r} is not one of {', '.join(sorted(SHAPES))}")
    p = merge_params(params)
    if gt_fraction is not None:
        p["ground_truth"]["fraction_of_patients"] = float(gt_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = make_subject_table(
        n_subjects, n_timepoints=n_timepoints, n_sites=n_sites, seed=seed, params=p
    )
    sites = make_sites(n_sites, np.random.default_rng([int(seed), 0, 9]))
    by_subject = [grp.to_dict("records") for _, grp in table.groupby("subject_index", sort=True)]
    args = [
        (str(out), rows, sites[int(rows[0]["site_index"])], p, shape, int(seed), sites)
        for rows in by_subject
    ]
    batches = run_batches(_render_batch, [[a] for a in args], client=client, label="synth",
                          unit="subjects", progress=progress)
    results = [r for b in batches for r in b]
    records = sorted(
        (r for res in results for r in res),
        key=lambda r: (r["subject_index"], r["timepoint_index"]),
    )

    manifest = pd.DataFrame([m for r in records for m in r["manifest"]])[MANIFEST_COLUMNS]
    write_text(out / "manifest.csv", manifest.to_csv(index=False, lineterminator="\n"))
    columns = list(CLINICAL_COLUMNS)
    if (table["repeat_of"] != "").any():  # scan-rescan repeats: the column that declares them
        columns.append("repeat_of")
    write_text(out / "clinical.csv", table[columns].to_csv(index=False, lineterminator="\n"))
    truth = _truth(table, records, sites, p, seed, shape, n_subjects, n_timepoints, n_sites)
    write_text(out / "truth.json", json.dumps(_clean(truth), indent=1, sort_keys=True) + "\n")
    return SynthCohort(
        out, out / "manifest.csv", out / "clinical.csv", out / "truth.json", len(records)
    )


def _render_batch(batch) -> list:
    """Render the subjects of one task (each argument tuple of :func:`render_subject`)."""
    return [render_subject(*a) for a in batch]


def _truth(table, records, sites, p, seed, shape, n_subjects, n_timepoints, n_sites) -> dict:
    base = table[table["timepoint_index"] == 0]
    subjects = [
        {
            "subject": r.subject,
            "group": r.group,
            "site": r.site,
            "sex": r.sex,
            "template": list_templates()[r.template] if list_templates() else r.template,
            "severity": r.severity,
            "atrophy_rate_per_year": r.atrophy_rate,
            "icv_mm3": r.icv_true_mm3,
            "has_gt": bool(table[(table.subject == r.subject)].has_gt.any()),
        }
        for r in base.itertuples()
    ]
    lat = table.set_index(["subject", "timepoint"])
    scans = []
    for r in records:
        row = lat.loc[(r["subject"], r["timepoint"])]
        rec = {
            k: v for k, v in r.items() if k not in ("manifest", "subject_index", "timepoint_index")
        }
        rec.update(
            {
                "thalamus_z": row["thalamus_z"],
                "edss_true": row["edss_true"],
                "sdmt_true": row["sdmt_true"],
                "worsened": bool(row["worsened"]),
            }
        )
        scans.append(rec)
    return {
        "generator": "thaldask.synth",
        "thaldask_version": __version__,
        "seed": int(seed),
        "shape": shape,
        "fov": SHAPES[shape],
        "n_subjects": n_subjects,
        "n_timepoints": n_timepoints,
        "n_sites": n_sites,
        "params": p,
        "sites": sites,
        "methods": {m: p["methods"][m] for m in METHOD_NAMES},
        "gt_labels": GT_LABELS,
        "subjects": subjects,
        "scans": scans,
        "notes": (
            "thalamus_mm3 is the exact volume of the ground-truth label map of each scan "
            "(voxel count x voxel volume); planted_thalamus_mm3 the volume the generator "
            "aimed at; method_volume_mm3 the volume of each simulated mask on its own grid."
        ),
    }
