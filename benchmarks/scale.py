"""How thaldask's cost grows with the cohort: ingest, segment, evaluate and stats at several N.

    python benchmarks/scale.py --n 100 1000 10000                 # writes benchmarks/scale.json
    python benchmarks/scale.py --n 1000 --workers 2 --json benchmarks/scale_2workers.json
    python benchmarks/scale.py --metadata-n 1000 10000 100000 --json benchmarks/scale_plan.json

Each N is a cohort of small scans (32x32x24 at 2 mm: an image, ground truth and two
methods' masks each, as NIfTI files) run in a fresh process on a fresh local cluster
(thaldask's own, ``thaldask.cluster.get_client``) of ``--workers`` worker processes with
one thread each, so that each N's memory peaks are its own. The segment stage runs a stand-in segmenter (two fixed boxes, no model:
the stage's own cost around a model). Per stage it reports wall time, the time before the
first task starts (planning), tasks, the peak resident memory of the workers and of this
(client) process, and afterwards the files and folders the store holds per scan and the
entries of its largest folder. The anchor is the smallest N: per-scan cost at each N is
given as a ratio to it, and the log-log slope of wall time against N over all N (1.0 =
linear, flat per-scan cost).

``--metadata-n`` builds metadata-only stores (scan table, clinical table, an image array
and three mask arrays with every scan marked written, no voxel data) and times what
planning reads before the first task: opening the store, the scan and clinical tables,
which scans hold each array, and the content digests evaluate's cache keys on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

SHAPE = (32, 32, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _cohort(root: str, n: int) -> str:
    import nibabel as nib

    rng = np.random.default_rng(0)
    rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
    base = np.zeros(SHAPE, np.uint8)
    base[8:14, 10:20, 8:16], base[18:24, 10:20, 8:16] = 49, 10
    for i in range(n):
        s, t = f"sub-{i // 2:05d}", ("baseline", "m12")[i % 2]
        img = rng.normal(100, 10, SHAPE).astype(np.float32)
        files = {"T1w": img, "gt": base, "a": np.roll(base, 1, 0), "b": np.roll(base, -1, 1)}
        for k, data in files.items():
            nib.save(nib.Nifti1Image(data, AFFINE), os.path.join(root, f"{s}_{t}_{k}.nii.gz"))
        site = "AB"[i % 2]
        rows.append(f"{s},{t},{site},image,T1w,,,{s}_{t}_T1w.nii.gz")
        for m in ("gt", "a", "b"):
            rows.append(f"{s},{t},{site},mask,T1w,{m},freesurfer,{s}_{t}_{m}.nii.gz")
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return os.path.join(root, "manifest.csv")


class _Peak:
    """Peak RSS of the worker processes, sampled every 0.2 s while a stage runs."""

    def __init__(self, client):
        self.client, self.peak, self._stop = client, 0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.client.run(lambda: psutil.Process().memory_info().rss)
                self.peak = max(self.peak, max(rss.values()))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _stage(client, func):
    """Wall time, seconds before the first task started, task count and worker peak."""
    from distributed import get_task_stream

    t0 = time.time()
    with get_task_stream(client) as ts, _Peak(client) as peak:
        func()
    wall = time.time() - t0
    starts = [s["start"] for rec in ts.data for s in rec.get("startstops", ())
              if s.get("action") == "compute"]
    first = (min(starts) - t0) if starts else float("nan")
    return {"wall_s": wall, "first_task_s": first, "tasks": len(ts.data),
            "worker_peak_mib": peak.peak / 2**20}


def _files(store: str) -> tuple[int, int, int]:
    n_files = n_dirs = widest = 0
    for _, dirs, files in os.walk(store):
        n_files += len(files)
        n_dirs += len(dirs)
        widest = max(widest, len(dirs) + len(files))
    return n_files, n_dirs, widest


def _bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def _standin_class():
    from thaldask.segment.base import Prediction, Segmenter

    class ScaleStandin(Segmenter):
        """Two fixed thalamus boxes: the segment stage's cost without a model's."""

        name = "scale-standin"
        contrasts = ("T1w",)

        def load(self, device="auto"):
            self.device = "cpu"

        def predict(self, image, affine, *, contrast):
            lab = np.zeros(np.shape(image), np.uint8)
            lab[9:15, 10:20, 8:16], lab[17:23, 10:20, 8:16] = 1, 2
            return Prediction(lab)

    return ScaleStandin


def _register_standin():
    from thaldask.segment.registry import register_segmenter

    register_segmenter(_standin_class(), replace=True)


def run_one(n: int, client) -> dict:
    from thaldask.metrics import evaluate
    from thaldask.segment.stage import segment_store
    from thaldask.stats.run import write_stats
    from thaldask.store import ingest

    root = tempfile.mkdtemp(prefix=f"thaldask-scale-{n}-")
    try:
        t = time.time()
        man = _cohort(root, n)
        gen = time.time() - t
        store = os.path.join(root, "cohort.zarr")
        out = {"n": n, "generate_s": gen}
        out["ingest"] = _stage(client, lambda: ingest(man, store, client=client, progress=False))
        _register_standin()
        client.run(_register_standin)
        out["segment"] = _stage(client, lambda: segment_store(store, "scale-standin", ["T1w"], client=client,
                                                              progress=False))
        res = {}
        out["evaluate"] = _stage(client, lambda: res.update(ds=evaluate(store, client=client, progress=False,
                                                                        surface=False)))
        out["results_mib"] = res.pop("ds").nbytes / 2**20  # the results dataset the client holds
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["stats"] = _stage(client, lambda: write_stats(store))
        files, dirs, widest = _files(store)
        out["files_per_scan"], out["dirs_per_scan"], out["widest_folder"] = files / n, dirs / n, widest
        out["store_bytes_per_scan"] = _bytes(store) / n
        out["input_bytes_per_scan"] = (_bytes(root) - _bytes(store)) / n
        out["client_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        shutil.rmtree(root)  # the benchmark's own temporary folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--metadata-n", type=int, nargs="+", default=None)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "scale.json"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # one N, in a child
    args = ap.parse_args(argv)
    if args.metadata_n:
        return plan_main(args)
    if args.one is not None:  # a fresh process and cluster per N: its peaks are its own
        from thaldask.cluster import get_client

        with get_client(n_workers=args.workers, threads_per_worker=1, quiet=True) as client:
            row = run_one(args.one, client)
        with open(args.json + ".tmp", "w") as f:
            json.dump(row, f)
        os.replace(args.json + ".tmp", args.json)
        return None
    import subprocess

    rows = []
    for n in sorted(args.n):
        print(f"N = {n} ...", file=sys.stderr, flush=True)
        fd, part = tempfile.mkstemp(prefix=f"thaldask-scale-{n}-", suffix=".json")
        os.close(fd)
        try:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(n),
                            "--workers", str(args.workers), "--json", part], check=True)
            with open(part) as f:
                rows.append(json.load(f))
        finally:
            os.remove(part)  # the benchmark's own temporary file
    base = rows[0]
    print("| N | stage | wall (s) | per scan (ms) | per-scan ratio to N=%d | before first task (s) | tasks | worker peak (MiB) |" % base["n"])
    print("|---|---|---|---|---|---|---|---|")
    slopes = {}
    for stage in ("ingest", "segment", "evaluate", "stats"):
        ns = np.array([r["n"] for r in rows], float)
        walls = np.array([r[stage]["wall_s"] for r in rows])
        firsts = np.array([r[stage]["first_task_s"] for r in rows])
        if len(rows) > 1:
            slopes[stage] = {"wall": float(np.polyfit(np.log(ns), np.log(walls), 1)[0]),
                             "first_task": float(np.polyfit(np.log(ns), np.log(np.maximum(firsts, 1e-3)), 1)[0])}
        for r in rows:
            s = r[stage]
            ratio = (s["wall_s"] / r["n"]) / (base[stage]["wall_s"] / base["n"])
            print(f"| {r['n']} | {stage} | {s['wall_s']:.1f} | {1000 * s['wall_s'] / r['n']:.1f} | "
                  f"{ratio:.2f} | {s['first_task_s']:.2f} | {s['tasks']} | {s['worker_peak_mib']:.0f} |")
    print()
    for r in rows:
        print(f"N = {r['n']}: {r['files_per_scan']:.2f} files and {r['dirs_per_scan']:.2f} folders "
              f"per scan, largest folder {r['widest_folder']} entries; client peak {r['client_peak_mib']:.0f} MiB "
              f"(results dataset {r['results_mib']:.1f} MiB)")
    for stage, sl in slopes.items():
        print(f"log-log slope {stage}: wall {sl['wall']:.2f}, before first task {sl['first_task']:.2f}")
    import dask
    import zarr

    info = {"rows": rows, "slopes": slopes, "workers": args.workers, "python": platform.python_version(),
            "dask": dask.__version__, "zarr": zarr.__version__,
            "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(args.json + ".tmp", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(args.json + ".tmp", args.json)


def _metadata_store(path: str, n: int):
    import pandas as pd

    from thaldask.store.create import create_store, set_clinical
    from thaldask.store.format import WRITTEN, record_array

    rng = np.random.default_rng(0)
    scans = pd.DataFrame({"subject": [f"sub-{i // 2:06d}" for i in range(n)],
                          "timepoint": ["baseline", "m12"] * (n // 2) + ["baseline"] * (n % 2),
                          "site": rng.choice(["A", "B", "C"], n)})
    st = create_store(path, scans=scans, grid_shape=SHAPE,
                      scan_meta={"affine": np.repeat(AFFINE[None], n, 0), "shape": np.tile(SHAPE, (n, 1)),
                                 "spacing": np.full((n, 3), 2.0)},
                      reference=["T1w"] * n, orig_axcodes=["RAS"] * n)
    clin = scans.copy()
    for c in ("age", "edss", "sdmt"):
        clin[c] = rng.normal(40, 10, n).round(2)
    set_clinical(st, clin)
    names = ["images/T1w", "masks/gt/T1w", "masks/a/T1w", "masks/b/T1w"]
    for name in names:
        st.ensure_array(name, dtype="uint8" if name.startswith("masks") else "float32")
        rec = st.zarr_array(record_array(name), mode="r+")
        block = np.zeros(rec.shape)
        block[:, 0] = WRITTEN
        rec[...] = block
    return names


def plan_main(args) -> None:
    from thaldask.store import open_store

    rows = []
    for n in sorted(args.metadata_n):
        root = tempfile.mkdtemp(prefix=f"thaldask-plan-{n}-")
        try:
            path = os.path.join(root, "cohort.zarr")
            t = time.time()
            names = _metadata_store(path, n)
            row = {"n": n, "build_s": time.time() - t}
            for key, f in (
                ("open_ms", lambda: open_store(path).n_scans),
                ("scan_table_ms", lambda: open_store(path).scans),
                ("clinical_ms", lambda: open_store(path).clinical),
                ("written_ms", lambda: [open_store(path).written(x) for x in names]),
                ("tokens_ms", lambda: [open_store(path).content_tokens(x) for x in names]),
            ):
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    f()
                    times.append(time.perf_counter() - t)
                row[key] = 1000 * sorted(times)[1]
            files, dirs, widest = _files(path)
            row.update(files=files, dirs=dirs, widest_folder=widest)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(root)  # the benchmark's own temporary folder
    print("| N | open (ms) | scan table (ms) | clinical (ms) | written, 4 arrays (ms) | digests, 4 arrays (ms) | files | largest folder |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['open_ms']:.1f} | {r['scan_table_ms']:.1f} | {r['clinical_ms']:.1f} | "
              f"{r['written_ms']:.1f} | {r['tokens_ms']:.1f} | {r['files']} | {r['widest_folder']} |")
    with open(args.json + ".tmp", "w") as f:
        json.dump({"rows": rows, "load_average": os.getloadavg(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)
    os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
