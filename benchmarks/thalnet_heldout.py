"""The model card's held-out validation, for several ``shift-tta`` settings on the same renders.

The held-out label maps of the shipped weights (``meta["held_out"]``, from a folder of
SynthSeg label maps) are rendered as whole-head scans exactly as the model card does
(the renders and seeds of :func:`thaldask.thalnet.validate.evaluate_segmenter` and
:func:`~thaldask.thalnet.validate.volume_response`, so the same images) and each render is
segmented by every setting in turn: whole-head scans, then the volume response on T1w (each
thalamus scaled by 0.7-1.15, 112 x 112 x 96 mm crops). Reports mean Dice and volume error
(mask, soft) per contrast and voxel size, and the response slopes. Example::

    python benchmarks/thalnet_heldout.py --label-maps /work/shared/data/synthseg_label_maps \\
        --shift-tta 1,2 --json benchmarks/thalnet_heldout.json
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label-maps", required=True)
    ap.add_argument("--shift-tta", default="1,2", help="settings compared, comma-separated")
    ap.add_argument("--spacings", default="1x1x1,1x1x1.5")
    ap.add_argument("--contrasts", default="T1w,FLAIR,R1,T1w+FLAIR+R1")
    ap.add_argument("--no-response", action="store_true", help="skip the volume response")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from thaldask.thalnet.assets import SLOTS
    from thaldask.thalnet.card import heldout_maps
    from thaldask.thalnet.inference import load_thalnet
    from thaldask.thalnet.validate import (  # noqa: PLC2701 - the card's own renders
        ThalamusResizer,
        _renders,
        _volume_fields,
        crop_around_thalami,
        dice,
        response_slope,
    )

    torch.set_num_threads(args.threads)
    t_start, load0 = time.time(), os.getloadavg()
    settings = [int(s) for s in args.shift_tta.split(",")]
    model = load_thalnet("cpu")
    names = model.meta["held_out"]


    seconds = {k: [] for k in settings}

    def segment(img, aff, contrast):
        """Every setting's (labels, soft voxels per side) of one render."""
        channels = [None] * len(SLOTS)
        parts = contrast.split("+")
        for p, im in zip(parts, img if len(parts) > 1 else [img], strict=True):
            channels[SLOTS.index(p)] = im
        voxel = float(abs(np.linalg.det(np.asarray(aff)[:3, :3])))
        out = {}
        for k in settings:
            model.shift_tta = k
            t0 = time.perf_counter()
            res = model.predict(channels, aff)
            seconds[k].append(time.perf_counter() - t0)
            out[k] = (res["labels"], res["soft_volume_mm3"] / voxel)
        print(f"  {contrast} {np.shape(img)} ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
        return out

    # the renders of evaluate_segmenter and volume_response (the model card's), same seeds
    all_spacings = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.5))
    spacings = [tuple(float(v) for v in s.split("x")) for s in args.spacings.split(",")]
    contrasts = ("T1w", "FLAIR", "R1", "T1w+FLAIR+R1")
    wanted = args.contrasts.split(",")
    rows = {k: [] for k in settings}
    response_rows = {k: [] for k in settings}
    for m, (name, labels, affine) in enumerate(heldout_maps(args.label_maps, names)):
        for ci, c in enumerate(contrasts):
            for si, sp in enumerate(all_spacings):
                if c not in wanted or sp not in spacings:
                    continue
                img, truth, aff = _renders(labels, affine, c, sp, 100 * m + 10 * ci + si)
                for k, (pred, soft) in segment(img, aff, c).items():
                    for side, sname in ((1, "left"), (2, "right")):
                        rows[k].append(dict(map=name, contrast=c, spacing="x".join(f"{v:g}" for v in sp),
                                            side=sname, dice=dice(pred, truth, side),
                                            **_volume_fields(pred, soft, truth, side)))
        if args.no_response:
            continue
        crop, caff = crop_around_thalami(labels, affine)
        resize = ThalamusResizer(crop, (10, 49))
        for j, f in enumerate((0.7, 0.85, 1.0, 1.15)):
            img, truth, aff = _renders(resize((f, f)), caff, "T1w", (1.0, 1.0, 1.0), 100 * m + j)
            for k, (pred, soft) in segment(img, aff, "T1w").items():
                for side, sname in ((1, "left"), (2, "right")):
                    response_rows[k].append(dict(map=name, factor=f, side=sname,
                                                 **_volume_fields(pred, soft, truth, side)))
    table = {}
    for k in settings:
        df = pd.DataFrame(rows[k])
        g = df.groupby(["contrast", "spacing"])
        t = {f"{c}@{s}": dict(dice=float(r["dice"]), volume_error_pct=float(r["volume_error"]),
                              soft_volume_error_pct=float(r["soft_volume_error"]))
             for (c, s), r in g[["dice", "volume_error", "soft_volume_error"]].mean().iterrows()}
        t["overall"] = dict(dice=float(df.dice.mean()), volume_error_pct=float(df.volume_error.mean()),
                            soft_volume_error_pct=float(df.soft_volume_error.mean()))
        table[k] = t
    response = {}
    for k in settings:
        if response_rows[k]:
            response[k] = dict(slope=response_slope(response_rows[k]),
                               soft_slope=response_slope(response_rows[k], "pred_soft_voxels"))
    print(f"held-out maps {', '.join(names)}; mean Dice / volume error mask / soft")
    keys = list(table[settings[0]])
    print(f"{'contrast@spacing':<24}" + "".join(f"{'shift-tta ' + str(k):>30}" for k in settings))
    for key in keys:
        cells = [f"{table[k][key]['dice']:.4f} {table[k][key]['volume_error_pct']:+.1f}% "
                 f"{table[k][key]['soft_volume_error_pct']:+.1f}%" for k in settings]
        print(f"{key:<24}" + "".join(f"{c:>30}" for c in cells))
    for k in response:
        print(f"shift-tta {k}: T1w volume response slope {response[k]['slope']:.3f} (mask), "
              f"{response[k]['soft_slope']:.3f} (soft); median {np.median(seconds[k]):.2f} s per scan")
    if args.json:
        res = dict(benchmark="thalnet_heldout", argv=sys.argv[1:], threads=args.threads, held_out=names,
                   table={str(k): v for k, v in table.items()}, response={str(k): v for k, v in response.items()},
                   rows={str(k): v for k, v in rows.items()},
                   median_seconds={str(k): float(np.median(v)) for k, v in seconds.items()},
                   wall_seconds=time.time() - t_start, torch=torch.__version__, python=platform.python_version(),
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_avg_start=load0,
                                load_avg_end=os.getloadavg()),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
