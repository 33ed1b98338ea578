"""Planted thalamic atrophy in a synthetic cohort: what thalnet measures against the truth.

A fresh synthetic cohort (:func:`thaldask.synth.make_cohort`, mostly MS patients and some
controls, 2 timepoints, ground truth at every scan) is segmented with thalnet on T1w. Per
group it prints the mean annualised change of thalamic volume (%/year, 95 % t-interval) of

- ``planted``: the rates the generator planted (per subject),
- ``gt``: the ground-truth label maps (exact voxel counts),
- ``thalnet``: the mask thalnet returns (and ``thalnet-soft``: its summed probabilities),
- the simulated methods (``freesurfer-sim``, ``first-sim``, ``dbsegment-sim``, ``mindglide-sim``),

and, per subject, the error of the measured change against the ground-truth change:
``sd_error_pct`` = SD of (measured - true) change as % of the baseline thalamic volume (goal
<= 0.5 %), next to the SD of the true changes themselves, and the slope of measured on true
change (goal 0.9-1.1).

The default run is affordable: 26 subjects (about 21 MS) at the ``small`` field of view
(72 x 80 x 64 mm around the deep grey matter, the sites' own voxel sizes), which thalnet
segments without the whole-head localiser. Example::

    python benchmarks/thalnet_atrophy.py --json benchmarks/thalnet_atrophy.json

``--weights A.pt --weights B.pt`` adds other thalnet weights (e.g. an earlier model) as
extra rows, labelled by file name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _ci(values):
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def segment_cohort(cohort_dir, manifest, weights=None, label="thalnet"):
    """Left+right volume (mm³; mask and soft) of thalnet on every T1w image."""
    import nibabel as nib
    import pandas as pd

    from thaldask.segment import get_segmenter

    opts = {"weights": str(weights)} if weights else {}
    seg = get_segmenter("thalnet", **opts)
    seg.load("cpu")
    df = pd.read_csv(manifest)
    rows, times = [], []
    for r in df[(df.kind == "image") & (df.contrast == "T1w")].itertuples():
        img = nib.load(os.path.join(cohort_dir, r.path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        t0 = time.perf_counter()
        out = seg.model.predict([data, None, None], img.affine)
        times.append(time.perf_counter() - t0)
        rows.append(dict(subject=r.subject, timepoint=r.timepoint, method=label,
                         volume=float(out["volume_mm3"].sum())))
        rows.append(dict(subject=r.subject, timepoint=r.timepoint, method=label + "-soft",
                         volume=float(out["soft_volume_mm3"].sum())))
    return rows, float(np.median(times))


def analyse(truth, volumes):
    """Per group and method: mean annualised change with 95 % CI; per method: error SD
    against the ground-truth change, and slope of measured on true change."""
    import pandas as pd

    subj = {s["subject"]: s for s in truth["subjects"]}
    rows = list(volumes)
    for sc in truth["scans"]:
        rows.append(dict(subject=sc["subject"], timepoint=sc["timepoint"], method="gt",
                         volume=sc["thalamus_mm3"]["total"]))
        for key, v in sc["method_volume_mm3"].items():
            m, contrast = key.split("/")
            if contrast == "T1w":
                rows.append(dict(subject=sc["subject"], timepoint=sc["timepoint"], method=m, volume=v["total"]))
    years = {(sc["subject"], sc["timepoint"]): sc["years_since_baseline"] for sc in truth["scans"]}
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["method", "subject"], columns="timepoint", values="volume").dropna()
    wide = wide.reset_index()
    wide["years"] = [years[(s, "m12")] for s in wide.subject]
    wide["change_pct_per_year"] = 100 * (wide["m12"] / wide["baseline"] - 1) / wide["years"]
    wide["group"] = [subj[s]["group"] for s in wide.subject]
    gt = wide[wide.method == "gt"].set_index("subject")
    groups = sorted(wide.group.unique())
    table = {}
    for g in groups:
        planted = [100 * subj[s]["atrophy_rate_per_year"] for s in subj if subj[s]["group"] == g]
        m, lo, hi = _ci(planted)
        table.setdefault("planted", {})[g] = dict(n=len(planted), mean=m, ci=[lo, hi])
        for method, sub in wide[wide.group == g].groupby("method"):
            m, lo, hi = _ci(sub["change_pct_per_year"])
            p = table["planted"][g]["mean"]
            table.setdefault(method, {})[g] = dict(n=len(sub), mean=m, ci=[lo, hi], minus_planted=m - p,
                                                   ci_covers_planted=bool(lo <= p <= hi))
    errors = {}
    for method, sub in wide.groupby("method"):
        sub = sub.set_index("subject").loc[gt.index.intersection(sub["subject"])]
        t = gt.loc[sub.index]
        true_change = 100 * (t["m12"] - t["baseline"]) / t["baseline"]
        meas_change = 100 * (sub["m12"] - sub["baseline"]) / t["baseline"]
        err = meas_change - true_change
        x = true_change - true_change.mean()
        slope = float((x * (meas_change - meas_change.mean())).sum() / (x * x).sum())
        errors[method] = dict(n=int(len(sub)), sd_error_pct=float(err.std(ddof=1)),
                              sd_true_change_pct=float(true_change.std(ddof=1)), slope=slope,
                              mean_volume_error_pct=float(100 * ((sub["baseline"] - t["baseline"]) / t["baseline"]).mean()))
    return table, errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=26)
    ap.add_argument("--ms-share", type=float, default=0.8, help="share of MS patients (rest controls)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--shape", default="small", choices=("small", "full"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", action="append", default=[], help="extra thalnet weights to compare")
    ap.add_argument("--keep", default=None,
                    help="keep the cohort in this folder (default: a temporary one); reused when it is there")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    from thaldask.synth import make_cohort

    torch.set_num_threads(args.threads)
    t_start = time.time()
    load0 = os.getloadavg()
    params = {
        "groups": {"proportions": {"MS": args.ms_share, "NMOSD": 0.0, "MOGAD": 0.0, "HC": 1 - args.ms_share}},
        "ground_truth": {"fraction_of_patients": 1.0, "include_controls": True, "timepoints": "all"},
    }
    with tempfile.TemporaryDirectory(prefix="thaldask-atrophy-") as tmp:
        out = Path(args.keep or tmp) / f"cohort-{args.subjects}-{args.seed}-{args.shape}-{args.ms_share:g}"
        t0 = time.time()
        if not (out / "truth.json").exists():
            make_cohort(out, n_subjects=args.subjects, n_timepoints=2, seed=args.seed, shape=args.shape,
                        params=params, progress=False)
        gen_s = time.time() - t0
        truth = json.loads((out / "truth.json").read_text())
        vols, seconds = segment_cohort(out, out / "manifest.csv")
        for w in args.weights:
            v, _ = segment_cohort(out, out / "manifest.csv", weights=w, label=f"thalnet[{Path(w).name}]")
            vols += v
    table, errors = analyse(truth, vols)

    groups = sorted(table["planted"])
    counts = ", ".join(f"{g} {table['planted'][g]['n']}" for g in groups)
    print(f"cohort: {args.subjects} subjects ({counts}), "
          f"2 timepoints, shape {args.shape}, seed {args.seed}; generated in {gen_s:.0f} s; "
          f"thalnet {seconds:.2f} s per scan (median)")
    print("\nmean annualised thalamic volume change, %/year [95 % CI]")
    head = f"{'method':<28}" + "".join(f"{g:>30}" for g in groups)
    print(head)
    order = ["planted", "gt"] + sorted(m for m in table if m.startswith("thalnet")) + sorted(
        m for m in table if m not in ("planted", "gt") and not m.startswith("thalnet"))
    for m in order:
        cells = []
        for g in groups:
            r = table[m].get(g)
            cells.append(f"{r['mean']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r else "-")
        print(f"{m:<28}" + "".join(f"{c:>30}" for c in cells))
    print("\nper-subject change against the ground-truth masks (% of baseline thalamic volume)")
    print(f"{'method':<28}{'SD(measured - true)':>22}{'SD(true change)':>18}{'slope':>8}{'volume error':>14}")
    for m in order[1:]:
        e = errors[m]
        print(f"{m:<28}{e['sd_error_pct']:>21.2f}%{e['sd_true_change_pct']:>17.2f}%{e['slope']:>8.2f}"
              f"{e['mean_volume_error_pct']:>+13.1f}%")
    if args.json:
        res = dict(benchmark="thalnet_atrophy", argv=sys.argv[1:], subjects=args.subjects, seed=args.seed,
                   shape=args.shape, threads=args.threads, groups=table, change_error=errors,
                   thalnet_seconds_per_scan=seconds, generate_seconds=gen_s,
                   wall_seconds=time.time() - t_start, torch=torch.__version__, python=platform.python_version(),
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=load0,
                                load_avg_end=os.getloadavg()),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
