"""Where thalnet's per-scan volume noise comes from: one factor at a time, anatomy fixed.

A few subjects of the synthetic cohort that ``thalnet_atrophy.py`` segments (same generator,
seed and ``small`` field of view) keep their anatomy (geometry, tissue values, thalamic
volume) while the scan is rendered again and again with only one factor varied:

- ``noise``: the image-noise, bias-field and intensity realisation (pose and grid fixed);
- ``shift``: a sub-voxel translation of the head (random direction, 0-1.5 mm), noise fixed;
- ``rotate``: small rotations of the head (SD 1 degree per axis), noise fixed;
- ``pose``: a new head position as between the cohort's visits (translation SD 2 mm and
  rotation SD 2 degrees per axis), noise fixed (not in the default ``--factors``);
- ``atrophy``: the planted thalamic volume 0-2 % smaller, pose and noise fixed (the error's
  SD shows how far the measured change departs from the true one; not in the default);
- ``site``: the voxel size and scanner of each site preset (1, 0.8, 1x1x1.2, 0.9 mm).

``--shape full`` renders the whole head (192 x 240 x 208 mm), where the box is placed by the
4 mm localiser. Each render is segmented with thalnet on T1w with the box placed three ways:

- ``auto``: the shipped path (the box centre found by the model itself);
- ``true``: the box centred on the true thalamic centre of that render (follows the head);
- ``fixed``: the box at one world point for all renders of a subject (the true centre of
  the unmoved head), so a moving head moves against the 1.5 mm ROI grid.

Per factor and placement it reports the SD over renders of the left+right volume as % of
the true volume (mask and soft), both of the measured volume itself and of its error
against the render's ground-truth voxel count (which also moves a little with the grid),
pooled over subjects (root mean square of the per-subject SDs). Example::

    python benchmarks/thalnet_noise.py --json benchmarks/thalnet_noise.json

``--visits 26`` instead renders every subject's baseline anatomy with the draws of the
cohort's own two visits (pose stream, noise stream, or both from the follow-up): the
change error with no true change, split as the atrophy benchmark sees it.

``--shift-tta N`` runs the model with N shifted ROI boxes (``thaldask.thalnet.shift-tta``),
``--mirror each|alternate`` how its boxes are mirrored, ``--no-flip`` without mirrored passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SITES_VOXEL = ([1.0, 1.0, 1.0], [0.8, 0.8, 0.8], [1.0, 1.0, 1.2], [0.9, 0.9, 0.9])


class Subject:
    """One subject of the atrophy benchmark's cohort, re-rendered on demand."""

    def __init__(self, index, *, n_subjects=26, seed=16, ms_share=0.8, shape="small"):
        from thaldask.synth.anatomy import load_template, make_geometry
        from thaldask.synth.images import draw_tissue
        from thaldask.synth.params import merge_params
        from thaldask.synth.subjects import make_sites, make_subject_table

        params = {
            "groups": {"proportions": {"MS": ms_share, "NMOSD": 0.0, "MOGAD": 0.0, "HC": 1 - ms_share}},
            "ground_truth": {"fraction_of_patients": 1.0, "include_controls": True, "timepoints": "all"},
        }
        self.p = merge_params(params)
        table = make_subject_table(n_subjects, n_timepoints=2, n_sites=2, seed=seed, params=self.p)
        self.sites = make_sites(2, np.random.default_rng([int(seed), 0, 9]))
        rows = table[table.subject_index == index].to_dict("records")
        self.row = rows[0]
        self.seed, self.index, self.shape = int(seed), int(index), shape
        an = self.p["anatomy"]
        rng_subj = np.random.default_rng([self.seed, self.index, 1])
        tmpl = load_template(int(self.row["template"]))
        self.geom = make_geometry(int(self.row["template"]), float(self.row["icv_true_mm3"]) / tmpl.icv_mm3,
                                  rng_subj, field_mm=an["deformation_sd_mm"],
                                  field_smooth_mm=an["deformation_smoothness_mm"], shape_jitter=an["shape_jitter"])
        self.tissue = draw_tissue(rng_subj, self.p["contrasts"]["tissue_jitter"])
        self._tmpl = tmpl
        self._jac = [self.geom.jacobian_at(self.geom.thalamus_centroid(s)) for s in (0, 1)]
        self.targets = (self.row["thalamus_left_mm3"], self.row["thalamus_right_mm3"])
        self.thr = self._thresholds(1.0)
        self.planted_mm3 = float(sum(self.targets))
        self.site = self.sites[int(self.row["site_index"])]
        self.pose0 = _cohort_pose(np.random.default_rng([self.seed, self.index, 2, 0]), an)

    def _thresholds(self, factor):
        t = self._tmpl
        return tuple(t.threshold_for(s, factor * self.targets[s] / (t.volume_mm3[s] * self._jac[s])) for s in (0, 1))

    def render(self, *, pose=None, voxel=None, site=None, noise_seed=0, volume_factor=1.0):
        """(T1w float32, affine, ground-truth sides uint8) of one render; ``volume_factor``
        scales the planted thalamic volume (as the generator's atrophy does)."""
        from thaldask.synth.anatomy import THALAMUS, sample_labels
        from thaldask.synth.cohort import _grid  # noqa: PLC2701 - the cohort's own grids
        from thaldask.synth.images import render_contrasts

        site = dict(site or self.site)
        voxel = np.asarray(voxel if voxel is not None else site["voxel_mm"], float)
        aff, shape = _grid(self.shape, voxel)
        pose = self.pose0 if pose is None else pose
        thr = self.thr if volume_factor == 1.0 else self._thresholds(volume_factor)
        labels = sample_labels(self.geom, aff, shape, pose=pose, thalamus_thresholds=thr)
        gt = np.zeros(shape, np.uint8)
        gt[labels == THALAMUS[0]] = 1
        gt[labels == THALAMUS[1]] = 2
        rng = np.random.default_rng([self.seed, self.index, 77, int(noise_seed)])
        img = render_contrasts(labels, voxel, self.tissue, site, self.p["contrasts"], rng, aff, which=("T1w",))
        return img["T1w"].astype(np.float32), aff, gt


def _cohort_pose(rng, an):
    from thaldask.synth.anatomy import rotation_matrix

    P = np.eye(4)
    P[:3, :3] = rotation_matrix(np.deg2rad(rng.normal(0, an["pose_rotation_deg"], 3)))
    P[:3, 3] = rng.normal(0, an["pose_translation_mm"], 3)
    return P


def _moved(pose0, *, shift=(0, 0, 0), angles_deg=(0, 0, 0)):
    """``pose0`` followed by a head motion: rotation about the head centre, then a shift."""
    from thaldask.synth.anatomy import rotation_matrix

    M = np.eye(4)
    M[:3, :3] = rotation_matrix(np.deg2rad(np.asarray(angles_deg, float)))
    M[:3, 3] = np.asarray(shift, float)
    return M @ pose0  # sample_labels takes scanner world -> head frame


def _true_centre(gt, aff):
    c = np.argwhere(gt > 0).mean(0)
    return (aff @ np.append(c, 1))[:3]


def predict_with_box(model, img, aff, centre):
    """``model.predict`` with the box centre given instead of found (``None``: found)."""
    if centre is None:
        return model.predict([img, None, None], aff)
    orig = model.find_center
    model.find_center = lambda *a, **k: np.asarray(centre, float)
    try:
        return model.predict([img, None, None], aff)
    finally:
        model.find_center = orig


def renders(subject, factor, n, rng):
    """The renders of one factor: a list of keyword dicts for :meth:`Subject.render`."""
    if factor == "noise":
        return [dict(noise_seed=k) for k in range(n)]
    if factor == "shift":
        out = []
        for _ in range(n):
            d = rng.normal(size=3)
            out.append(dict(pose=_moved(subject.pose0, shift=d / np.linalg.norm(d) * rng.uniform(0, 1.5))))
        return out
    if factor == "rotate":
        return [dict(pose=_moved(subject.pose0, angles_deg=rng.normal(0, 1.0, 3))) for _ in range(n)]
    if factor == "pose":  # a new head position as between the cohort's visits (SD 2 mm, 2 degrees)
        return [dict(pose=_cohort_pose(rng, subject.p["anatomy"])) for _ in range(n)]
    if factor == "atrophy":  # the planted volume 0-2 % smaller, pose and noise fixed
        return [dict(volume_factor=1.0 - 0.02 * k / max(n - 1, 1)) for k in range(n)]
    if factor == "site":
        from thaldask.synth.params import SITE_PRESETS

        return [dict(site=s, voxel=s["voxel_mm"]) for s in SITE_PRESETS]
    raise ValueError(factor)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", default="0,5,11", help="subject indices of the atrophy cohort")
    ap.add_argument("--renders", type=int, default=10, help="renders per factor and subject")
    ap.add_argument("--factors", default="noise,shift,rotate,site")
    ap.add_argument("--shape", default="small", choices=("small", "full"),
                    help="field of view: small (no localiser, as the atrophy benchmark) or the whole head")
    ap.add_argument("--placements", default="auto,true,fixed")
    ap.add_argument("--shift-tta", type=int, default=None, help="shifted ROI passes (default: the config)")
    ap.add_argument("--no-flip", action="store_true", help="without the left-right mirrored passes")
    ap.add_argument("--mirror", default=None, choices=("each", "alternate"),
                    help="with several boxes: every box also mirrored, or every other box mirrored")
    ap.add_argument("--visits", type=int, default=0, metavar="N",
                    help="instead: zero-change error between the cohort's two visits of its first N subjects")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from thaldask.thalnet.inference import load_thalnet

    torch.set_num_threads(args.threads)
    t_start, load0 = time.time(), os.getloadavg()
    model = load_thalnet("cpu")
    if args.shift_tta is not None:
        model.shift_tta = args.shift_tta
    model.tta = not args.no_flip
    if args.mirror:
        model.shift_mirror = args.mirror
    if args.visits:
        vrows = visit_pairs(model, args.visits)
        import pandas as pd

        sd = pd.DataFrame(vrows).groupby("variant")[["mask_pct", "soft_pct"]].std(ddof=1)
        print(f"SD of the zero-change error between the cohort's visits ({args.visits} subjects, % of the "
              f"true volume); shift-tta {model.shift_tta}, mirror {model.shift_mirror}")
        for v, r in sd.iterrows():
            print(f"{v:<8}{r['mask_pct']:>7.2f}% mask{r['soft_pct']:>7.2f}% soft")
        if args.json:
            Path(args.json).write_text(json.dumps(dict(
                benchmark="thalnet_noise", mode="visits", argv=sys.argv[1:], shift_tta=model.shift_tta,
                mirror=model.shift_mirror, sd_pct={v: dict(r) for v, r in sd.iterrows()}, rows=vrows,
                wall_seconds=time.time() - t_start, torch=torch.__version__,
                machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=load0,
                             load_avg_end=os.getloadavg()),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())), indent=1) + "\n")
        return
    factors = args.factors.split(",")
    placements = args.placements.split(",")
    rows = []
    for si in [int(s) for s in args.subjects.split(",")]:
        subj = Subject(si, shape=args.shape)
        _, aff0, gt0 = subj.render()
        fixed = _true_centre(gt0, aff0)
        for factor in factors:
            rng = np.random.default_rng([si, factors.index(factor)])
            for k, kw in enumerate(renders(subj, factor, args.renders, rng)):
                img, aff, gt = subj.render(**kw)
                voxel = float(abs(np.linalg.det(aff[:3, :3])))
                true = float(np.count_nonzero(gt)) * voxel
                for place in placements:
                    centre = {"auto": None, "true": _true_centre(gt, aff), "fixed": fixed}[place]
                    out = predict_with_box(model, img, aff, centre)
                    rows.append(dict(subject=si, factor=factor, render=k, placement=place,
                                     true_mm3=true, planted_mm3=subj.planted_mm3,
                                     mask_mm3=float(out["volume_mm3"].sum()),
                                     soft_mm3=float(out["soft_volume_mm3"].sum()),
                                     centre=[float(v) for v in out["center"]]))
            print(f"subject {si} {factor}: {args.renders if factor != 'site' else 4} renders done "
                  f"({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    summary = summarise(rows)
    print(f"SD over renders, % of true left+right volume (RMS over subjects {args.subjects}, {args.shape}); "
          f"shift-tta {getattr(model, 'shift_tta', 1)}, flip {model.tta}, "
          f"mirror {getattr(model, 'shift_mirror', 'each')}")
    print(f"{'factor':<8}{'placement':<10}{'true':>8}{'mask':>8}{'soft':>8}{'mask-gt':>9}{'soft-gt':>9}"
          f"{'mask bias':>11}{'centre SD mm':>14}")
    for (f, p), s in summary.items():
        print(f"{f:<8}{p:<10}{s['true']:>7.2f}%{s['mask']:>7.2f}%{s['soft']:>7.2f}%{s['mask_err']:>8.2f}%"
              f"{s['soft_err']:>8.2f}%{s['mask_bias']:>+10.2f}%{s['centre_sd_mm']:>14.2f}")
    if args.json:
        res = dict(benchmark="thalnet_noise", argv=sys.argv[1:], threads=args.threads,
                   shape=args.shape, shift_tta=getattr(model, "shift_tta", 1), flip=model.tta,
                   mirror=getattr(model, "shift_mirror", "each"),
                   summary=[dict(factor=f, placement=p, **s) for (f, p), s in summary.items()], rows=rows,
                   wall_seconds=time.time() - t_start, torch=torch.__version__, python=platform.python_version(),
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=load0,
                                load_avg_end=os.getloadavg()),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


def visit_pairs(model, n_subjects=26):
    """Zero-change error between the cohort's own two visits: every subject's baseline
    anatomy rendered with the baseline and the follow-up visit's draws of the generator
    (its pose and noise streams, as ``make_cohort`` draws them), one of them or both.
    Returns rows (subject, variant ``pose``/``noise``/``both``, change error in % of the
    true volume)."""
    from thaldask.synth.anatomy import THALAMUS, sample_labels
    from thaldask.synth.cohort import _grid  # noqa: PLC2701 - the cohort's own grids
    from thaldask.synth.images import render_contrasts

    rows = []
    for i in range(n_subjects):
        s = Subject(i)
        vox = np.asarray(s.site["voxel_mm"], float)
        aff, shape = _grid(s.shape, vox)

        def stream(k, s=s, i=i):
            rng = np.random.default_rng([s.seed, i, 2, k])  # the cohort's per-visit stream
            return _cohort_pose(rng, s.p["anatomy"]), rng

        vol = {}
        for variant, (pk, nk) in {"base": (0, 0), "pose": (1, 0), "noise": (0, 1), "both": (1, 1)}.items():
            pose, _ = stream(pk)
            _, rng = stream(nk)
            labels = sample_labels(s.geom, aff, shape, pose=pose, thalamus_thresholds=s.thr)
            img = render_contrasts(labels, vox, s.tissue, s.site, s.p["contrasts"], rng, aff, which=("T1w",))
            true = float(np.isin(labels, THALAMUS).sum()) * float(np.prod(vox))
            out = model.predict([img["T1w"].astype(np.float32), None, None], aff)
            vol[variant] = (float(out["volume_mm3"].sum()), float(out["soft_volume_mm3"].sum()), true)
        m0, s0, t0 = vol["base"]
        for v in ("pose", "noise", "both"):
            m1, s1, t1 = vol[v]
            rows.append(dict(subject=i, variant=v, mask_pct=100 * ((m1 - m0) - (t1 - t0)) / t0,
                             soft_pct=100 * ((s1 - s0) - (t1 - t0)) / t0))
    return rows


def summarise(rows):
    """Per (factor, placement): RMS over subjects of the SD over renders, in % of the true
    volume, of the true, mask and soft volumes and of their errors; mean mask error."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["mask_err"] = 100 * (df.mask_mm3 - df.true_mm3) / df.true_mm3
    df["soft_err"] = 100 * (df.soft_mm3 - df.true_mm3) / df.true_mm3
    for c in ("true", "mask", "soft"):
        df[c] = 100 * df[c + "_mm3"] / df.groupby("subject").true_mm3.transform("mean")
    cen = np.array(df.centre.tolist())
    for j in range(3):
        df[f"c{j}"] = cen[:, j]
    out = {}
    for (f, p), g in df.groupby(["factor", "placement"], sort=False):
        per = g.groupby("subject")
        s = {c: float(np.sqrt((per[c].std(ddof=1) ** 2).mean())) for c in ("true", "mask", "soft", "mask_err", "soft_err")}
        s["mask_bias"] = float(g.mask_err.mean())
        s["centre_sd_mm"] = float(np.sqrt(sum((per[f"c{j}"].std(ddof=1) ** 2).mean() for j in range(3))))
        s["n"] = int(len(g))
        out[(f, p)] = s
    return out


if __name__ == "__main__":
    main()
