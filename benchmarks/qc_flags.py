"""Sensitivity and false-flag rate of the automated QC flags on a synthetic cohort with
planted failures.

Every simulated method gets the same planted failure rates (``failure_rate``: one side
missed; ``swap_rate``: left/right labels swapped; ``misregistration_rate``: the whole mask
shifted by 6 mm), a share of the subjects have ground truth at every visit, and a share are
rescanned on the same day. The cohort goes through ingest and evaluate, then
:func:`thaldask.stats.qc_flags.fit_qc_flags`. A planted failure is detected when its
(scan, method, contrast) has any flag (and, separately, an ``error`` flag); the false-flag
rate is the share of clean (scan, method, contrast) masks with a flag. Prints a table per
failure kind (with and without ground truth) and per flag, and writes JSON (``--out``).

Usage::

    python benchmarks/qc_flags.py --subjects 40 --rate 0.04 --out qc_flags.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

import thaldask
from thaldask.metrics.evaluate import evaluate
from thaldask.stats.qc_flags import QC_FLAGS, fit_qc_flags
from thaldask.store import ingest, open_store
from thaldask.synth import make_cohort
from thaldask.synth.params import METHOD_NAMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--rate", type=float, default=0.04, help="rate of each planted failure kind per mask")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    params = {
        "methods": {m: {"failure_rate": a.rate, "swap_rate": a.rate, "misregistration_rate": a.rate}
                    for m in METHOD_NAMES},
        "ground_truth": {"fraction_of_patients": 0.5, "timepoints": "all"},
        "repeats": {"fraction": 0.3},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        c = make_cohort(Path(tmp) / "c", n_subjects=a.subjects, shape="tiny", seed=a.seed, params=params,
                        progress=False)
        ingest(str(c.manifest), str(Path(tmp) / "s.zarr"), clinical=str(c.clinical), progress=False)
        ds = evaluate(str(Path(tmp) / "s.zarr"), progress=False, csv_path="")
        flags = fit_qc_flags(open_store(str(Path(tmp) / "s.zarr")).open_results())
        truth = json.loads(c.truth.read_text())
    seconds = time.perf_counter() - t0
    rows = []
    for s in truth["scans"]:
        for mc in s["method_volume_mm3"]:
            m, con = mc.split("/")
            rows.append({"subject": s["subject"], "timepoint": s["timepoint"], "method": m, "contrast": con,
                         "planted": s["planted_failures"].get(mc, ""), "has_gt": s["has_gt"]})
    scans = pd.DataFrame(rows)
    key = ["subject", "timepoint", "method", "contrast"]
    anyf = flags.groupby(key).size().rename("n_flags").reset_index()
    errf = flags[flags.severity == "error"].groupby(key).size().rename("n_errors").reset_index()
    scans = scans.merge(anyf, on=key, how="left").merge(errf, on=key, how="left").fillna({"n_flags": 0, "n_errors": 0})
    scans["flagged"], scans["error"] = scans.n_flags > 0, scans.n_errors > 0
    out = {"kinds": [], "flags": [], "n_masks": len(scans), "seconds": round(seconds, 1),
           "subjects": a.subjects, "rate": a.rate, "thaldask": thaldask.__version__,
           "python": platform.python_version(), "machine": platform.processor() or platform.machine()}
    print(f"{len(scans)} masks ({a.subjects} subjects, {ds.sizes['timepoint']} timepoints), "
          f"planted rate {a.rate:g} per kind; {seconds:.0f} s")
    print(f"{'planted failure':<18}{'gt':>5}{'n':>6}{'any flag':>10}{'error flag':>12}")
    for kind in ["missed_side", "swapped_sides", "misregistered", ""]:
        for gt in (True, False):
            d = scans[(scans.planted == kind) & (scans.has_gt == gt)]
            if not len(d):
                continue
            r = {"planted": kind or "none (false-flag rate)", "has_gt": gt, "n": len(d),
                 "any_flag": float(d.flagged.mean()), "error_flag": float(d.error.mean())}
            out["kinds"].append(r)
            print(f"{r['planted']:<18}{'yes' if gt else 'no':>5}{r['n']:>6}{r['any_flag']:>10.2f}{r['error_flag']:>12.2f}")
    clean = scans[scans.planted == ""].set_index(key)
    print(f"\n{'flag':<22}{'raised':>8}{'on planted':>12}{'false-flag rate':>17}")
    for f in QC_FLAGS:
        d = flags[flags.flag == f].set_index(key)
        n_clean = int(d.index.isin(clean.index).sum())
        r = {"flag": f, "raised": len(d), "on_planted": len(d) - n_clean, "false_flag_rate": n_clean / len(clean)}
        if f == "implausible_change":  # the change involves both visits: a failure at either
            failed = scans[scans.planted != ""]
            partner = {(s, m, c) for s, m, c in zip(failed.subject, failed.method, failed.contrast, strict=True)}
            clean_hits = d[d.index.isin(clean.index)].reset_index()
            r["clean_but_other_visit_planted"] = int(sum((s, m, c) in partner for s, m, c in zip(
                clean_hits.subject, clean_hits.method, clean_hits.contrast, strict=True)))
        out["flags"].append(r)
        print(f"{f:<22}{r['raised']:>8}{r['on_planted']:>12}{r['false_flag_rate']:>17.3f}"
              + (f"  ({r['clean_but_other_visit_planted']} with a failure at the subject's other visit)"
                 if "clean_but_other_visit_planted" in r else ""))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
