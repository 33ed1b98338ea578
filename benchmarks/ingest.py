"""Ingest throughput: NIfTI.gz -> cohort store, next to its bounds in the same run.

Anchors, measured on the same files in the same process, one core:

- ``gunzip``: ``gzip.decompress`` (zlib) of every file, the decompression bound; ingest
  inflates with ISA-L (``isal``), shown as a second anchor;
- ``nibabel+np.save``: ``nibabel.load(...).get_fdata(float32)`` then ``np.save`` (the naive
  converter).

Each store layout (spatial chunking x compressor) is ingested into a fresh store with one
worker thread; throughput is MB/s of uncompressed input voxels. Also reported: store size
relative to the .nii.gz inputs and the speed of reading one whole scan back. Results print
as a table and go to JSON (``--out``).

Usage::

    python benchmarks/ingest.py --scans 6 --repeat 2 [--label-maps DIR] --out ingest.json

``--label-maps`` takes a folder of FreeSurfer label maps (e.g. the SynthSeg training maps).
Three input sets are timed and sized separately, since different codecs apply to them:

- int16 T1w-like images synthesised from the anatomy (random intensity per label, smooth
  bias, noise) with the label maps themselves as masks (256^3 LIA, FreeSurfer labels);
- float32 R1-like maps (s^-1) of the same anatomy written with 4 decimals, as many mapping
  tools write them;
- the same maps at full float precision.

Without ``--label-maps`` a phantom of ellipsoids on a 182x218x182 RAS grid is used.

Measured on an idle 2-core Xeon (6 label-map scans per set, best of 3; ratios of CPU-time
throughput; the fixed cost of one ingest call, 0.13 CPU s, is included)::

    int16 images + masks (403 MB voxels)    CPU s  x gunzip  x naive  size/gz  read MB/s
    gunzip (zlib; the bound)                 1.48    1.00      1.30       -        -
    nibabel + np.save (naive)                1.92    0.77      1.00     6.15       -
    isal gunzip (what ingest inflates with)  0.69    2.14      2.78       -        -
    ingest, default (lz4-5 bitshuffle)       1.63    0.90      1.18     0.86      810
    ingest, zstd-3 bitshuffle                2.17    0.68      0.88     0.69      738
    ingest, zstd-1 bitshuffle                1.90    0.78      1.01     0.69      593
    ingest, 64^3 chunks, zstd-3 bitshuffle   2.83    0.52      0.68     0.68      724

    float32 R1 maps (403 MB voxels)          4 decimals            full precision
                                             x gunzip  size/gz     x gunzip  size/gz
    ingest, default ("auto")                   0.82     0.66         0.90     0.93
    ingest, float32 lz4-5 shuffle              0.82     1.10         0.92     0.93
    ingest, float32 lz4-5 bitshuffle           0.74     1.35         0.83     1.14
    ingest, float32 zstd-3 shuffle             0.43     1.03         0.49     0.87
    ingest, pcodec level 4                     0.32     0.66         0.46     0.94

The store default (thaldask/store/codecs.py ``DEFAULT_LAYOUT``) follows from it: one chunk per
scan; integer arrays in blosc lz4-5 with bitshuffle (the fastest to ingest and to read, and
smaller than the inputs); float arrays "auto": a map whose values all have a fixed number of
decimals (the 4-decimal set) is stored as its integers value * 10**d with blosc lz4 + byte
shuffle, as small as pcodec at 2.6x its speed; any other float map (full precision) as
float32 with blosc lz4 + byte shuffle, which stays below the .nii.gz size where bitshuffle
does not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

LAYOUTS = {
    "default (thaldask.store.*)": None,
    "scan-chunk zstd3 shuffle": {"spatial_chunks": "scan", "cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "scan-chunk zstd3 bitshuffle": {"spatial_chunks": "scan", "cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
    "scan-chunk zstd1 bitshuffle": {"spatial_chunks": "scan", "cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"},
    "scan-chunk lz4-5 shuffle": {"spatial_chunks": "scan", "cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
    "scan-chunk lz4-5 bitshuffle": {"spatial_chunks": "scan", "cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "64^3-chunks zstd3 bitshuffle": {"spatial_chunks": [64, 64, 64], "cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
}
#: float32 quantitative maps: the default ("auto": maps with fixed decimals as integers, others
#: float32, both blosc lz4 + byte shuffle) against float32 throughout and pcodec
FLOAT_LAYOUTS = {
    "default (thaldask.store.*)": None,
    "float32 lz4-5 shuffle": {"float_codec": "blosc"},
    "float32 lz4-5 bitshuffle": {"float_codec": "blosc", "float_shuffle": "bitshuffle"},
    "float32 zstd-3 shuffle": {"float_codec": "blosc", "cname": "zstd", "clevel": 3},
    "pcodec level 4": {"float_codec": "pcodec", "pcodec_level": 4},
}


def _phantom(shape, rng):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    head = (x**2 + y**2 + z**2) < 0.85
    brain = (x**2 / 0.6 + y**2 / 0.7 + z**2 / 0.6) < 0.85
    thal_l = ((x + 0.12) ** 2 + y**2 + z**2) < 0.01
    thal_r = ((x - 0.12) ** 2 + y**2 + z**2) < 0.01
    lab = np.zeros(shape, np.int16)
    lab[head] = 24
    lab[brain] = 2
    lab[thal_l] = 10
    lab[thal_r] = 49
    return lab


def _synth_image(labels, rng):
    ids = np.unique(labels)
    lut = np.zeros(int(ids.max()) + 1, np.float32)
    lut[ids] = rng.uniform(200, 1000, ids.size)
    lut[0] = 0
    img = lut[labels]
    from scipy import ndimage

    img = ndimage.gaussian_filter(img, 0.7)
    bias = np.linspace(0.9, 1.1, labels.shape[0], dtype=np.float32)[:, None, None]
    img = img * bias + rng.normal(0, 15, labels.shape).astype(np.float32)  # noise everywhere
    return np.clip(img, 0, 32000).astype(np.int16)


def _synth_r1(labels, rng, decimals):
    """Float32 R1-like map (s^-1) of a label map: a value per label, blur, noise in the head,
    rounded to ``decimals`` (as many mapping tools write them) unless None."""
    from scipy import ndimage

    ids = np.unique(labels)
    lut = np.zeros(int(ids.max()) + 1, np.float32)
    lut[ids] = rng.uniform(0.3, 1.6, ids.size)
    lut[0] = 0
    r1 = ndimage.gaussian_filter(lut[labels], 1.0)
    head = labels > 0
    r1[head] += rng.normal(0, 0.03, int(head.sum())).astype(np.float32)
    return np.round(r1, decimals) if decimals is not None else r1


#: input sets: integer images with label-map masks, and float32 quantitative maps written with
#: 4 decimals and at full precision (timed and sized separately: different codecs apply)
KINDS = ("int16 T1w + masks", "float32 R1, 4 decimals", "float32 R1, full precision")


def make_inputs(root, n, label_maps=None, rng=0, kind=KINDS[0]):
    import nibabel as nib

    rng = np.random.default_rng(rng)
    rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
    maps = sorted(
        os.path.join(label_maps, f) for f in os.listdir(label_maps) if f.endswith(".nii.gz")
    ) if label_maps else []
    os.makedirs(root, exist_ok=True)
    for k in range(n):
        if maps:
            src = nib.load(maps[k % len(maps)])
            lab = np.asarray(src.dataobj).astype(np.int16)
            aff = src.affine
        else:
            lab = _phantom((182, 218, 182), rng)
            aff = np.diag([1.0, 1.0, 1.0, 1.0])
            aff[:3, 3] = [-90, -126, -72]
        if kind == KINDS[0]:
            img = _synth_image(lab, rng)
            fi, fm = f"sub-{k:03d}_T1w.nii.gz", f"sub-{k:03d}_aseg.nii.gz"
            nib.save(nib.Nifti1Image(img, aff), os.path.join(root, fi))
            nib.save(nib.Nifti1Image(lab.astype(np.uint8 if lab.max() < 256 else np.int16), aff),
                     os.path.join(root, fm))
            rows.append(f"sub-{k:03d},baseline,A,image,T1w,,,{fi}")
            rows.append(f"sub-{k:03d},baseline,A,mask,T1w,freesurfer,freesurfer,{fm}")
        else:
            img = _synth_r1(lab, rng, 4 if kind == KINDS[1] else None)
            fi = f"sub-{k:03d}_R1map.nii.gz"
            nib.save(nib.Nifti1Image(img, aff), os.path.join(root, fi))
            rows.append(f"sub-{k:03d},baseline,A,image,R1,,,{fi}")
    p = os.path.join(root, "manifest.csv")
    with open(p, "w") as f:
        f.write("\n".join(rows) + "\n")
    return p


def _timed(fn, repeat, setup=None):
    """Best (wall, process CPU) seconds over ``repeat`` runs of ``fn`` (``setup`` runs
    untimed before each); CPU time counts every thread of this process (blosc and zarr work
    in their own threads), so it is the per-core cost and robust to other load."""
    best_w = best_c = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_w = min(best_w, time.perf_counter() - w0)
        best_c = min(best_c, time.process_time() - c0)
    return best_w, best_c


def _row(name, mb, wall, cpu, size_ratio=None):
    return {"name": name, "seconds": wall, "cpu_seconds": cpu, "mb_s": mb / wall,
            "mb_s_cpu": mb / cpu, "size_ratio": size_ratio, "read_mb_s": None}


def _dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_kind(work, kind, args):
    """Anchors and every layout on one input set; returns its result dict."""
    import dask
    import nibabel as nib

    from thaldask.store import ingest, open_store

    inp = os.path.join(work, "in")
    t = time.perf_counter()
    man = make_inputs(inp, args.scans, args.label_maps, kind=kind)
    print(f"{kind}: {args.scans} scans written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    files = sorted(os.path.join(inp, f) for f in os.listdir(inp) if f.endswith(".nii.gz"))
    gz_bytes = sum(os.path.getsize(f) for f in files)
    raw_bytes = 0  # voxel bytes of the inputs (decompressed payload)
    for f in files:
        with open(f, "rb") as fh:
            raw_bytes += len(gzip.decompress(fh.read()))
    mb = raw_bytes / 1e6

    def gunzip():
        for f in files:
            with open(f, "rb") as fh:
                gzip.decompress(fh.read())

    out_np = os.path.join(work, "npy")

    def naive():
        os.makedirs(out_np, exist_ok=True)
        for f in files:
            img = nib.load(f)
            arr = img.get_fdata(dtype=np.float32) if "_aseg" not in f else np.asarray(img.dataobj)
            np.save(os.path.join(out_np, os.path.basename(f) + ".npy"), arr)

    results = []
    wall, cpu = _timed(gunzip, args.repeat)
    results.append(_row("gunzip (bound)", mb, wall, cpu))
    wall, cpu = _timed(naive, args.repeat)
    results.append(_row("nibabel+np.save (naive)", mb, wall, cpu, _dir_size(out_np) / gz_bytes))
    shutil.rmtree(out_np)
    from thaldask.store.nifti import decompress

    def isal_gunzip():
        for f in files:
            with open(f, "rb") as fh:
                decompress(fh.read())

    wall, cpu = _timed(isal_gunzip, args.repeat)
    results.append(_row("isal gunzip (what ingest uses)", mb, wall, cpu))
    store = os.path.join(work, "s.zarr")
    with dask.config.set(scheduler="sync"):
        ingest(man, store, progress=False)  # warm-up: imports, caches
    layouts = LAYOUTS if kind == KINDS[0] else FLOAT_LAYOUTS
    contrast = "T1w" if kind == KINDS[0] else "R1"
    for name, layout in layouts.items():

        def one(layout=layout):
            with dask.config.set(scheduler="sync"):  # one core, no task overlap
                rep = ingest(man, store, progress=False, layout=layout)
            assert (rep.status == "written").all(), rep.reason.tolist()

        wall, cpu = _timed(one, args.repeat, setup=lambda: shutil.rmtree(store, ignore_errors=True))
        st = open_store(store)

        def read(st=st):
            for i in range(st.n_scans):
                st.load_image(contrast, i)
                if kind == KINDS[0]:
                    st.load_mask("freesurfer", "T1w", i)

        rwall, rcpu = _timed(read, args.repeat)
        row = _row(f"ingest {name}", mb, wall, cpu, _dir_size(store) / gz_bytes)
        row["read_mb_s"] = mb / rwall
        row["read_mb_s_cpu"] = mb / rcpu
        row["layout"] = st.layout
        row["image_dtype"] = str(st.zarr_array(f"images/{contrast}").dtype)
        row["codecs"] = [type(c).__name__ for c in st.zarr_array(f"images/{contrast}").metadata.codecs]
        results.append(row)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(inp, ignore_errors=True)
    for r in results:
        for k in ("mb_s", "mb_s_cpu"):
            r[f"ratio_to_gunzip{k[4:]}"] = r[k] / results[0][k]
            r[f"ratio_to_naive{k[4:]}"] = r[k] / results[1][k]
    return {"kind": kind, "input_voxel_mb": mb, "input_gz_mb": gz_bytes / 1e6, "results": results}


def fixed_cost(work, repeat):
    """CPU seconds of one ingest call whose scan is tiny (12^3 image + mask): the per-call
    cost (manifest validation, store creation, report, consolidation) that every ingest
    pays once, whatever the cohort size."""
    import dask
    import nibabel as nib

    from thaldask.store import ingest

    root = os.path.join(work, "tiny")
    os.makedirs(root)
    a = np.zeros((12, 12, 12), np.int16)
    a[4:8, 4:8, 4:8] = 10
    for f in ("t.nii.gz", "m.nii.gz"):
        nib.save(nib.Nifti1Image(a, np.eye(4)), os.path.join(root, f))
    man = os.path.join(root, "m.csv")
    with open(man, "w") as f:
        f.write("subject,timepoint,site,kind,contrast,method,labels,path\n"
                "s,b,A,image,T1w,,,t.nii.gz\ns,b,A,mask,T1w,fs,freesurfer,m.nii.gz\n")
    store = os.path.join(root, "s.zarr")

    def one():
        with dask.config.set(scheduler="sync"):
            ingest(man, store, progress=False)

    one()  # warm-up
    return _timed(one, max(repeat, 3), setup=lambda: shutil.rmtree(store, ignore_errors=True))[1]


def run(args):
    import dask
    import nibabel as nib
    import zarr

    work = tempfile.mkdtemp(prefix="thaldask-bench-", dir=args.tmp)
    try:
        fixed = fixed_cost(work, args.repeat)
        sets = [run_kind(work, kind, args) for kind in args.kinds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "fixed_cpu_seconds_per_ingest_call": fixed,
        "benchmark": "ingest",
        "scans": args.scans,
        "inputs": "label maps" if args.label_maps else "phantom",
        "sets": sets,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "zarr": zarr.__version__, "nibabel": nib.__version__, "dask": dask.__version__},
        "hardware": {"machine": platform.machine(), "processor": _cpu(), "cpus": os.cpu_count(),
                     "load_avg_start": args._load},
        "threads": 1,
        "repeat": args.repeat,
    }


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(info):
    print(f"{info['scans']} scans per input set ({info['inputs']}); 1 thread; "
          f"peak RSS {info['peak_rss_mb']:.0f} MB")
    print("MB/s = uncompressed input voxels per second; CPU = per core (process CPU time)")
    print(f"fixed cost of one ingest call (tiny scan): {info['fixed_cpu_seconds_per_ingest_call']:.3f} "
          "CPU s, included in every ingest row below")
    for s in info["sets"]:
        print(f"\n{s['kind']}: {s['input_voxel_mb']:.0f} MB voxels, {s['input_gz_mb']:.0f} MB .nii.gz")
        print(f"{'run':34s} {'wall s':>7s} {'CPU s':>6s} {'MB/s':>7s} {'CPU MB/s':>8s} {'xgunzip':>8s} "
              f"{'xnaive':>7s} {'size/gz':>7s} {'read MB/s':>9s}")
        for r in s["results"]:
            sr = f"{r['size_ratio']:.2f}" if r["size_ratio"] is not None else "-"
            rd = f"{r['read_mb_s']:.0f}" if r["read_mb_s"] is not None else "-"
            print(f"{r['name']:34s} {r['seconds']:7.2f} {r['cpu_seconds']:6.2f} {r['mb_s']:7.1f} "
                  f"{r['mb_s_cpu']:8.1f} {r['ratio_to_gunzip_cpu']:8.2f} {r['ratio_to_naive_cpu']:7.2f} "
                  f"{sr:>7s} {rd:>9s}")
    print("\nxgunzip/xnaive: ratios of CPU MB/s (wall-clock ratios are in the JSON)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best counts")
    ap.add_argument("--label-maps", default=None, help="folder of FreeSurfer label maps (.nii.gz)")
    ap.add_argument("--out", default="ingest-benchmark.json")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND",
                    help=f"input sets to run (default all: {'; '.join(KINDS)})")
    args = ap.parse_args(argv)
    args._load = os.getloadavg()[0]
    info = run(args)
    print_table(info)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2, default=float)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
