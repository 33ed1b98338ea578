"""Object-store requests per scan: ingest, a no-op re-ingest, evaluate and stats against an
S3-compatible server (moto's server, in this process, on 127.0.0.1), counted per stage and
kind (LIST, HEAD, GET, PUT, DELETE) with the requests that failed (404: existence probes).

Two cohorts of N and 2N small scans (T1w image, ground truth, one method's mask); the
per-scan count is the difference divided by N, so fixed costs per command (opening, the
lock, tables) are separated from what grows with the cohort. Runs on Dask's threaded
scheduler in this process so that every request is counted.

Usage::

    python benchmarks/object_store.py --n 10 --out benchmarks/object_store.json [--paths]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qs

import nibabel as nib
import numpy as np

import thaldask

BUCKET = "thaldask-bench"
_STAGE = ["setup"]  # the stage being counted (read by tracing tools)


class Counter:
    """WSGI middleware counting requests by (stage, kind, failed)."""

    def __init__(self, app):
        self.app, self.stage, self.lock = app, "setup", threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.paths: collections.Counter = collections.Counter()

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        path = environ.get("PATH_INFO", "")
        kind = "LIST" if method == "GET" and ("list-type" in query or "prefix" in query) else method
        status = {}

        def start(s, headers, exc_info=None):
            status["code"] = int(s.split()[0])
            return start_response(s, headers, exc_info)

        out = self.app(environ, start)
        with self.lock:
            failed = status.get("code", 200) >= 400
            self.counts[(self.stage, kind, failed)] += 1
            leaf = path.rsplit("/", 1)[-1]
            tail = leaf if not leaf.isdigit() else "<chunk>"
            self.paths[(self.stage, kind, failed, tail if kind != "LIST" else query.get("prefix", [""])[0][-40:])] += 1
        return out


def _server():
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = Counter(DomainDispatcherApplication(create_backend_app))
    srv = make_server("127.0.0.1", 0, counter, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, counter, f"http://127.0.0.1:{srv.server_port}"


def _cohort(root: Path, n: int):
    rng = np.random.default_rng(n)
    shape, aff = (32, 32, 24), np.diag([2.0, 2.0, 2.0, 1.0])
    rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
    for s in range(n):
        img = rng.normal(100, 10, shape).astype(np.float32)
        gt = np.zeros(shape, np.uint8)
        gt[8:14, 10:18, 8:14] = 10
        gt[17:23, 10:18, 8:14] = 49
        for name, data in (("T1w", img), ("gt", gt), ("pred", np.roll(gt, 1, axis=1))):
            nib.save(nib.Nifti1Image(data, aff), root / f"s{s:04d}_{name}.nii.gz")
        rows += [f"s{s:04d},baseline,A,image,T1w,,,s{s:04d}_T1w.nii.gz",
                 f"s{s:04d},baseline,A,mask,T1w,gt,freesurfer,s{s:04d}_gt.nii.gz",
                 f"s{s:04d},baseline,A,mask,T1w,testmethod,freesurfer,s{s:04d}_pred.nii.gz"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _run(counter, n, tmp):
    import dask

    from thaldask.metrics.evaluate import evaluate
    from thaldask.stats.run import write_stats
    from thaldask.store import ingest

    root = Path(tmp) / f"c{n}"
    root.mkdir()
    man = _cohort(root, n)
    url = f"s3://{BUCKET}/c{n}.zarr"
    with dask.config.set(scheduler="threads"):
        for stage, f in (("ingest", lambda: ingest(str(man), url, progress=False)),
                         ("re-ingest", lambda: ingest(str(man), url, progress=False)),
                         ("evaluate", lambda: evaluate(url, progress=False)),
                         ("stats", lambda: write_stats(url))):
            counter.stage = _STAGE[0] = f"{stage}@{n}"
            f()
    counter.stage = "setup"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--out", default=None)
    ap.add_argument("--paths", action="store_true", help="print the most requested keys per stage")
    a = ap.parse_args()
    srv, counter, endpoint = _server()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (a.n, 2 * a.n):
            _run(counter, n, tmp)
    srv.shutdown()
    kinds = ["LIST", "HEAD", "GET", "PUT", "DELETE"]
    out = {"n": a.n, "stages": [], "thaldask": thaldask.__version__, "python": platform.python_version()}
    print(f"requests per scan (from N = {a.n} and {2 * a.n}; fixed = the rest at N = {a.n})")
    print(f"{'stage':<11}{'per scan':>9}{'fixed':>7}  " + "  ".join(f"{k:>6}" for k in kinds) + "  failed/scan")
    for stage in ("ingest", "re-ingest", "evaluate", "stats"):
        c1 = {k: sum(v for (s, kk, _), v in counter.counts.items() if s == f"{stage}@{a.n}" and kk == k) for k in kinds}
        c2 = {k: sum(v for (s, kk, _), v in counter.counts.items() if s == f"{stage}@{2 * a.n}" and kk == k) for k in kinds}
        f1 = sum(v for (s, _, bad), v in counter.counts.items() if s == f"{stage}@{a.n}" and bad)
        f2 = sum(v for (s, _, bad), v in counter.counts.items() if s == f"{stage}@{2 * a.n}" and bad)
        per = {k: (c2[k] - c1[k]) / a.n for k in kinds}
        tot = sum(per.values())
        fixed = sum(c1.values()) - tot * a.n
        row = {"stage": stage, "per_scan": tot, "fixed": fixed, "per_scan_by_kind": per,
               "failed_per_scan": (f2 - f1) / a.n, "total_at_n": sum(c1.values()), "total_at_2n": sum(c2.values())}
        out["stages"].append(row)
        print(f"{stage:<11}{tot:>9.1f}{fixed:>7.0f}  " + "  ".join(f"{per[k]:>6.1f}" for k in kinds)
              + f"  {row['failed_per_scan']:>10.1f}")
    if a.paths:
        for stage in ("ingest", "re-ingest", "evaluate", "stats"):
            top = sorted(((v, k) for k, v in counter.paths.items() if k[0] == f"{stage}@{2 * a.n}"), reverse=True)[:12]
            print(f"\n{stage} at N = {2 * a.n}, most requested:")
            for v, (_, kind, bad, tail) in top:
                print(f"  {v:>6}  {kind:<6}{' 404' if bad else '    '}  {tail}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
