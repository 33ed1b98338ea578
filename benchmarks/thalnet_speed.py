"""thalnet's whole ``predict`` on a 1 mm whole-head scan, side by side with its anchors.

Timed in one process, interleaved rounds, one torch thread, on 1 mm whole-head renders of
the held-out anatomy shipped with the model (181 x 217 x 181, T1w, FLAIR and R1):

- ``shipped``: the shipped weights through the full inference path (localiser, one check
  pass of the ROI network, the head-region search only when that pass shows no plausible
  thalamus pair, the final flip-averaged pass in ``thaldask.thalnet.shift-tta`` shifted
  boxes, resampling back, connected components);
- ``one ROI box``: the same path with ``thaldask.thalnet.shift-tta`` 1 (the final pass in one
  box, plain and mirrored, instead of the default's half-voxel shifted boxes);
- ``shipped, search always``: the same weights with the head-region search on every scan;
- ``earlier`` (with ``--anchor-weights``): other weights, e.g. the previous model, with the
  search on every scan, as that model was run;
- SAMSEG: its measured time (DESIGN.md: ~650 s wall per 1 mm T1w at 2 threads; it cannot
  run in this environment) as a ratio; MindGlide's network is timed by ``segment.py``.

Reports medians, ratios to each anchor and where the time goes. Example::

    git show 0fd7e13:thaldask/data/models/thalnet.pt > /tmp/thalnet_v1.pt
    python benchmarks/thalnet_speed.py --anchor-weights /tmp/thalnet_v1.pt --json benchmarks/thalnet_speed.json
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

SAMSEG_SECONDS = 650.0  # DESIGN.md: wall time per 1 mm T1w at --threads 2 (samseg 0.4a0)


def whole_head_scans(shape=(181, 217, 181)):
    """1 mm whole-head renders (T1w, FLAIR, R1) of the held-out anatomy, padded to ``shape``."""
    from thaldask.thalnet.validate import load_heldout_anatomy, render_scan

    labels, affine = load_heldout_anatomy()
    out = {}
    for k, c in enumerate(("T1w", "FLAIR", "R1")):
        img, truth, aff = render_scan(labels, affine, c, rng=k)
        full = np.zeros(shape, np.float32)
        n = np.minimum(shape, img.shape)
        off = (np.asarray(shape) - n) // 2
        full[off[0] : off[0] + n[0], off[1] : off[1] + n[1], off[2] : off[2] + n[2]] = img[: n[0], : n[1], : n[2]]
        a = aff.copy()
        a[:3, 3] = aff[:3, 3] - aff[:3, :3] @ off
        out[c] = (full, a)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the three scans")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--anchor-weights", default=None, help="earlier weights, run with the search always on")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from thaldask.segment import get_segmenter

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    scans = whole_head_scans()
    candidates = {}
    seg = get_segmenter("thalnet")
    seg.load("cpu")
    candidates["shipped"] = seg
    one_box = get_segmenter("thalnet", shift_tta=1)
    one_box.load("cpu")
    candidates["shipped weights, one ROI box (shift-tta 1)"] = one_box
    seg_always = get_segmenter("thalnet")
    seg_always.load("cpu")
    seg_always.model.search_mode = "always"
    candidates["shipped, search always"] = seg_always
    if args.anchor_weights:
        from thaldask.thalnet.inference import load_thalnet

        old = get_segmenter("thalnet")
        old.model = load_thalnet("cpu", path=args.anchor_weights, check_hash=False)
        old.model.search_mode = "always"
        old.device = "cpu"
        candidates[f"earlier ({Path(args.anchor_weights).name}), search always"] = old
    times = {k: [] for k in candidates}
    searched = {k: 0 for k in candidates}
    for _ in range(args.repeat):
        for c, (img, aff) in scans.items():
            for name, s in candidates.items():
                calls = []
                orig = s.model.search
                s.model.search = lambda *a, _o=orig, **k: (calls.append(1), _o(*a, **k))[1]
                t0 = time.perf_counter()
                s.predict(img, aff, contrast=c)
                times[name].append(time.perf_counter() - t0)
                s.model.search = orig
                searched[name] += bool(calls)
    # where the time goes, for the shipped path
    m = seg.model
    img, aff = scans["T1w"]
    tens, ref, aff2, shape = m._inputs([img, None, None], aff)
    parts = {}
    t0 = time.perf_counter()
    center = m.localise(ref, aff2)
    parts["localiser"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m.predict_roi(tens, aff2, center, tta=False)
    parts["ROI pass"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    region = m.head_region(ref, aff2)
    m.search(tens, aff2, region, extra=center)
    parts["head-region search (when needed)"] = time.perf_counter() - t0

    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med["shipped"]
    print(f"1 mm whole-head scan {scans['T1w'][0].shape}, {args.threads} torch thread(s), "
          f"{args.repeat} rounds x 3 contrasts; load average {load0[0]:.1f}")
    print(f"{'candidate':<52}{'median s':>10}{'/ shipped':>11}{'searched':>10}")
    for k in candidates:
        print(f"{k:<52}{med[k]:>10.2f}{med[k] / base:>10.1f}x{searched[k]:>7}/{len(times[k])}")
    print(f"{'SAMSEG (DESIGN.md, 2 threads, not run here)':<52}{SAMSEG_SECONDS:>10.0f}{SAMSEG_SECONDS / base:>10.0f}x")
    print("parts of the shipped path (T1w): " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    if args.json:
        res = dict(benchmark="thalnet_speed", argv=sys.argv[1:], threads=args.threads,
                   scan_shape=list(scans["T1w"][0].shape), seconds=times, median_s=med,
                   ratio_to_shipped={k: v / base for k, v in med.items()},
                   searched={k: [searched[k], len(times[k])] for k in candidates},
                   samseg_seconds_design=SAMSEG_SECONDS, samseg_over_shipped=SAMSEG_SECONDS / base,
                   parts_s=parts, torch=torch.__version__, python=platform.python_version(),
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=load0,
                                load_avg_end=os.getloadavg()),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
