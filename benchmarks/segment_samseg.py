"""thalnet vs SAMSEG on the same synthetic scans, side by side in one run.

For each scan (a synthetic whole head from ``thaldask synth --shape full``, resampled to
``--voxel-mm``), each method runs as its own process, one after the other:

- thalnet: ``thaldask segment-file`` (process start, model load and inference);
- SAMSEG: ``run_samseg`` from its own environment (``thaldask tools install samseg``) with its
  default settings, run through thaldask's external-tool runner
  (:func:`thaldask.segment.external.run_tool`: scratch folder, label mapping, grid).

Reported per scan and method: Dice and volume error (mm³ and %) per side against the
planted ground truth, wall seconds and peak resident memory of the process tree (sampled
every 0.2 s); and the ratios SAMSEG / thalnet. Run through ``benchmarks/segment.py
--vs-samseg N`` or directly::

    python benchmarks/segment_samseg.py --scans 3 --voxel-mm 2 --json benchmarks/segment_samseg.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """Peak resident memory (bytes) of a process and its children while the block runs."""

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        self.pid, self.interval, self.peak = pid or os.getpid(), interval, 0
        self._stop = threading.Event()

    def _sample(self):
        import psutil

        me = psutil.Process(self.pid)
        while not self._stop.is_set():
            total = 0
            try:
                if self.pid != os.getpid():  # a child process: itself and its children
                    total = me.memory_info().rss
                for c in me.children(recursive=True):
                    try:
                        total += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def make_scans(folder: Path, n: int, voxel_mm: float, seed: int):
    """``n`` synthetic heads: list of (T1w path, ground-truth sides array, affine)."""
    import nibabel as nib
    from nibabel.processing import resample_to_output

    from thaldask.synth.cohort import make_cohort

    c = make_cohort(folder / "synth", n_subjects=2 * n + 2, n_timepoints=1, n_sites=1, seed=seed,
                    shape="full", gt_fraction=1.0, progress=False)
    import pandas as pd

    man = pd.read_csv(c.manifest)
    out = []
    with_gt = sorted(man[(man.kind == "mask") & (man.method == "gt")].subject.unique())[:n]
    for sub, grp in man[man.subject.isin(with_gt)].groupby("subject", sort=True):
        t1 = grp[(grp.kind == "image") & (grp.contrast == "T1w")].iloc[0]
        gt = grp[(grp.kind == "mask") & (grp.method == "gt")].iloc[0]
        img = nib.load(folder / "synth" / t1.path)
        msk = nib.load(folder / "synth" / gt.path)
        if voxel_mm != 1.0:
            img = resample_to_output(img, (voxel_mm,) * 3, order=1)
            msk = resample_to_output(msk, (voxel_mm,) * 3, order=0)
        p = folder / f"{sub}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine), p)
        from thaldask.cohort.labels import to_sides

        out.append((p, to_sides(np.asarray(msk.dataobj), gt["labels"]), img.affine))
    return out


def scores(labels, truth, voxel_mm3):
    from thaldask.thalnet.validate import dice

    row = {}
    for s, side in ((1, "left"), (2, "right")):
        v, g = float((labels == s).sum()) * voxel_mm3, float((truth == s).sum()) * voxel_mm3
        row[f"dice_{side}"] = float(dice(labels, truth, s))
        row[f"vol_err_{side}_mm3"] = v - g
        row[f"vol_err_{side}_pct"] = 100 * (v - g) / g
    return row


def run_thalnet(path: Path, out: Path, threads: int):
    import nibabel as nib

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "thaldask.cli", "segment-file", str(path), str(out),
                             "--device", "cpu", "--option", f"threads={threads}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRSS(proc.pid) as mem:
        _, err = proc.communicate()
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"thalnet failed: {err.decode()[-300:]}")
    return np.asarray(nib.load(out).dataobj), dt, mem.peak


def run_samseg(path: Path, threads: int, scratch: str):
    import nibabel as nib

    from thaldask.segment.external import run_tool
    from thaldask.segment.presets import tool_spec

    spec = tool_spec("samseg")
    img = nib.load(path)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        lab, prob, info = run_tool(spec, [np.asarray(img.dataobj, np.float32)], img.affine, ["T1w"],
                                   threads=threads, scratch=scratch)
    return lab, time.perf_counter() - t0, mem.peak, info


def compare(n_scans: int, *, voxel_mm: float = 2.0, threads: int = 2, seed: int = 0, echo=print):
    rows = []
    with tempfile.TemporaryDirectory(prefix="thaldask-bench-samseg-") as tmp:
        tmp = Path(tmp)
        scans = make_scans(tmp, n_scans, voxel_mm, seed)
        for k, (path, truth, aff) in enumerate(scans):
            vox = float(abs(np.linalg.det(aff[:3, :3])))
            lab, dt, peak = run_thalnet(path, tmp / f"thalnet_{k}.nii.gz", threads)
            rows.append(dict(scan=path.name, method="thalnet", seconds=dt, peak_mb=peak / 2**20,
                             **scores(lab, truth, vox)))
            echo(_fmt(rows[-1]))
            lab, dt, peak, info = run_samseg(path, threads, str(tmp))
            rows.append(dict(scan=path.name, method="samseg", seconds=dt, peak_mb=peak / 2**20,
                             version=info["version"], **scores(lab, truth, vox)))
            echo(_fmt(rows[-1]))
    return rows


def _fmt(r):
    return (f"{r['scan']:<22} {r['method']:<8} Dice L {r['dice_left']:.3f} R {r['dice_right']:.3f}  "
            f"vol err L {r['vol_err_left_pct']:+6.1f}% R {r['vol_err_right_pct']:+6.1f}%  "
            f"{r['seconds']:7.1f} s  {r['peak_mb']:7.0f} MB")


def summary(rows):
    import pandas as pd

    df = pd.DataFrame(rows)
    med = df.groupby("method")[["seconds", "peak_mb", "dice_left", "dice_right"]].median()
    return dict(
        median=med.to_dict(orient="index"),
        samseg_vs_thalnet_seconds=float(med.loc["samseg", "seconds"] / med.loc["thalnet", "seconds"]),
        samseg_vs_thalnet_peak_memory=float(med.loc["samseg", "peak_mb"] / med.loc["thalnet", "peak_mb"]),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=3)
    p.add_argument("--voxel-mm", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2, help="threads of each method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/segment_samseg.json")
    a = p.parse_args(argv)
    res = dict(benchmark="segment_samseg", voxel_mm=a.voxel_mm, threads=a.threads, scans=a.scans,
               python=sys.version.split()[0],
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=os.getloadavg()))
    res["rows"] = compare(a.scans, voxel_mm=a.voxel_mm, threads=a.threads, seed=a.seed)
    res.update(summary(res["rows"]))
    res["machine"]["load_avg_end"] = os.getloadavg()
    print(f"SAMSEG / thalnet: {res['samseg_vs_thalnet_seconds']:.1f}x the seconds, "
          f"{res['samseg_vs_thalnet_peak_memory']:.1f}x the peak memory per scan")
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
