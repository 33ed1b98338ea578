"""Segmentation speed on CPU: thaldask's thalnet vs MindGlide's network and sliding window.

Measured side by side in one run on the same 1 mm whole-head scan (181 x 217 x 181, rendered
from the held-out anatomy shipped with the model) with the same number of torch threads:

1. seconds per scan, thalnet (full inference path: localiser, ROI, resampling back,
   connected components) vs MindGlide 1.3 (its DynUNet with random weights, since its
   weights cannot be downloaded here; speed does not depend on weight values; its own
   preprocessing, MONAI sliding window 128x128x64, overlap 0.5, gaussian, sw_batch_size 4);
2. scans per minute of the thalnet store stage on a LocalCluster with 1 vs 2 worker
   processes (one thread each).

Prints a table and writes JSON (ratios included). Example::

    python benchmarks/segment.py --threads 1 --json benchmarks/segment.json

``--vs-samseg N`` instead compares thalnet with the real SAMSEG on N synthetic heads (Dice,
volume error, seconds and peak memory per scan; :mod:`segment_samseg` beside this file)::

    python benchmarks/segment.py --vs-samseg 2 --voxel-mm 2 --threads 2
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


def whole_head_scan(shape=(181, 217, 181)):
    """A 1 mm T1w-like whole-head render of the held-out anatomy, padded to ``shape``."""
    from thaldask.thalnet.validate import load_heldout_anatomy, render_scan

    labels, affine = load_heldout_anatomy()
    img, truth, aff = render_scan(labels, affine, "T1w", rng=0)
    out = np.zeros(shape, np.float32)
    n = np.minimum(shape, img.shape)
    off = (np.asarray(shape) - n) // 2
    out[off[0] : off[0] + n[0], off[1] : off[1] + n[1], off[2] : off[2] + n[2]] = img[: n[0], : n[1], : n[2]]
    a = aff.copy()
    a[:3, 3] = aff[:3, 3] - aff[:3, :3] @ off
    return out, a


def time_thalnet(img, aff, repeat):
    from thaldask.segment import get_segmenter

    seg = get_segmenter("thalnet")
    t0 = time.perf_counter()
    seg.load("cpu")
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pred = seg.predict(img, aff, contrast="T1w")
        times.append(time.perf_counter() - t0)
    return dict(seconds=times, median_s=float(np.median(times)), load_s=load_s,
                voxels_labelled=int((pred.labels > 0).sum()))


def time_mindglide(img, aff, repeat):
    try:
        import mindglide
    except ImportError:
        return dict(error="mindglide not installed (pip install 'thaldask[mindglide]')")
    from thaldask.segment import get_segmenter

    seg = get_segmenter("mindglide", label_ids="3", random_weights=True, sw_batch_size=4)
    seg.load("cpu")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        seg.predict(img, aff, contrast="T1w")
        times.append(time.perf_counter() - t0)
    return dict(seconds=times, median_s=float(np.median(times)), version=mindglide.__version__,
                settings=dict(patch=[128, 128, 64], overlap=0.5, mode="gaussian", sw_batch_size=4))


def scans_per_minute(n_scans, workers_list, threads):
    """Throughput of the store stage on small synthetic whole-head scans."""
    import nibabel as nib
    from distributed import Client, LocalCluster

    from thaldask.segment import segment_store
    from thaldask.store import ingest

    out = {}
    img, aff = whole_head_scan()
    with tempfile.TemporaryDirectory(prefix="thaldask-bench-") as tmp:
        rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
        rng = np.random.default_rng(0)
        for s in range(n_scans):
            noisy = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(noisy, aff), os.path.join(tmp, f"s{s}.nii.gz"))
            rows.append(f"s{s},baseline,A,image,T1w,,,s{s}.nii.gz")
        Path(tmp, "manifest.csv").write_text("\n".join(rows) + "\n")
        for w in workers_list:
            store = os.path.join(tmp, f"store{w}.zarr")
            ingest(os.path.join(tmp, "manifest.csv"), store, client=None, progress=False)
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                              env={"OMP_NUM_THREADS": str(threads)}) as cl, Client(cl) as client:
                # warm-up: load the model on every worker before timing
                from thaldask.segment.registry import SegmenterPlugin

                client.register_plugin(SegmenterPlugin("thalnet", {"threads": threads}, "cpu"))
                t0 = time.perf_counter()
                df = segment_store(store, "thalnet", ["T1w"], client=client, device="cpu",
                                   options={"threads": threads}, progress=False)
                dt = time.perf_counter() - t0
            ok = int((df["status"] == "written").sum())
            out[w] = dict(workers=w, scans=ok, seconds=dt, scans_per_minute=60 * ok / dt)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads for both models")
    p.add_argument("--repeat", type=int, default=3, help="thalnet repetitions")
    p.add_argument("--mindglide-repeat", type=int, default=1)
    p.add_argument("--scans", type=int, default=8, help="scans for the throughput part")
    p.add_argument("--skip-mindglide", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", default="benchmarks/segment.json")
    p.add_argument("--vs-samseg", type=int, default=0, metavar="N",
                   help="compare thalnet with SAMSEG on N scans instead (benchmarks/segment_samseg.py)")
    p.add_argument("--voxel-mm", type=float, default=2.0, help="with --vs-samseg: voxel size of the scans")
    a = p.parse_args(argv)
    if a.vs_samseg:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import segment_samseg

        out = a.json if a.json != "benchmarks/segment.json" else "benchmarks/segment_samseg.json"
        return segment_samseg.main(["--scans", str(a.vs_samseg), "--voxel-mm", str(a.voxel_mm),
                                    "--threads", str(a.threads), "--json", out])

    import torch

    torch.set_num_threads(a.threads)
    img, aff = whole_head_scan()
    res = dict(
        benchmark="segment",
        scan_shape=list(img.shape),
        voxel_mm=[1.0, 1.0, 1.0],
        threads=a.threads,
        torch=torch.__version__,
        python=sys.version.split()[0],
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     load_avg_start=os.getloadavg()),
    )

    def save():
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")

    res["thalnet"] = time_thalnet(img, aff, a.repeat)
    print(f"thalnet   {res['thalnet']['median_s']:8.2f} s/scan (median of {a.repeat}, before MindGlide)", flush=True)
    save()
    if not a.skip_mindglide:
        res["mindglide"] = time_mindglide(img, aff, a.mindglide_repeat)
        if "median_s" in res["mindglide"]:
            # thalnet again after MindGlide, so both see the same (shared, varying) machine load
            after = time_thalnet(img, aff, a.repeat)
            res["thalnet"]["seconds"] += after["seconds"]
            res["thalnet"]["median_s"] = float(np.median(res["thalnet"]["seconds"]))
            res["speedup_vs_mindglide"] = res["mindglide"]["median_s"] / res["thalnet"]["median_s"]
            print(f"thalnet   {res['thalnet']['median_s']:8.2f} s/scan (median of all {len(res['thalnet']['seconds'])} runs)")
            print(f"mindglide {res['mindglide']['median_s']:8.2f} s/scan", flush=True)
            print(f"ratio     {res['speedup_vs_mindglide']:8.1f} x faster (thalnet vs MindGlide network)")
        else:
            print(f"mindglide skipped: {res['mindglide']['error']}")
        save()
    if not a.skip_throughput:
        tp = scans_per_minute(a.scans, (1, 2), a.threads)
        res["throughput"] = tp
        res["scaling_2_vs_1_workers"] = tp[2]["scans_per_minute"] / tp[1]["scans_per_minute"]
        for w, r in tp.items():
            print(f"{w} worker(s): {r['scans_per_minute']:6.1f} scans/min ({r['scans']} scans, {r['seconds']:.1f} s)")
        print(f"scaling 2 vs 1 workers: {res['scaling_2_vs_1_workers']:.2f}x (ideal 2.0)")
    res["machine"]["load_avg_end"] = os.getloadavg()
    save()
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
