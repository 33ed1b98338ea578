"""The model card of a set of thalnet weights, written beside a copy of them.

:func:`write_model_card` (``thaldask model-card WEIGHTS --out DIR``) puts ``thalnet.pt``
into a folder of your choosing with ``thalnet.json`` (machine-readable: SHA-256 checked at
load time, label maps used and held out, seed, steps, augmentation, validation Dice) and
``thalnet.md`` (the same for people). Nothing is written into the installed package: load
such weights with ``--option weights=DIR/thalnet.pt`` (or ``load_thalnet(path=...)``); the
card beside them is checked. The shipped model files in ``thaldask/data/models`` are these
three files, committed. With ``heldout`` (from :func:`heldout_dice`) the held-out maps,
rendered as whole-head T1w-, FLAIR- and R1-like scans at 1 mm and 1 x 1 x 1.5 mm and
segmented through the full inference path (localiser included), give the card's Dice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from thaldask._shared.paths import write_bytes, write_text
from thaldask.errors import ModelWeightsError
from thaldask.thalnet.assets import SLOTS, sha256
from thaldask.thalnet.inference import load_thalnet
from thaldask.thalnet.validate import evaluate_segmenter, response_slope, volume_response

__all__ = ["write_model_card", "heldout_dice"]


def heldout_dice(weights, label_maps_dir, names, *, log=print) -> dict:
    """Full-pipeline Dice on held-out label maps (whole head, three contrasts, two grids)."""
    import nibabel as nib

    model = load_thalnet("cpu", path=weights, check_hash=False)

    def maps():
        for n in names:
            p = next(Path(label_maps_dir).glob(n + ".*"))
            img = nib.as_closest_canonical(nib.load(str(p)))
            lab = np.rint(np.asarray(img.dataobj)).astype(np.int32)
            nz = np.argwhere(lab > 0)
            lo, hi = np.maximum(nz.min(0) - 2, 0), np.minimum(nz.max(0) + 3, lab.shape)
            aff = img.affine.copy()
            aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
            log(f"rendering {n}")
            yield n, lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], aff

    def predict(img, aff, contrast):
        t0 = time.perf_counter()
        channels = [None] * len(SLOTS)
        parts = contrast.split("+")
        for p, im in zip(parts, img if len(parts) > 1 else [img], strict=True):
            channels[SLOTS.index(p)] = im
        lab = model.segment(channels, aff)
        log(f"  {contrast} {np.shape(img)}: {time.perf_counter() - t0:.1f} s")
        return lab

    rows = evaluate_segmenter(predict, maps(), contrasts=("T1w", "FLAIR", "R1", "T1w+FLAIR+R1"))
    df = pd.DataFrame(rows)
    g = df.groupby(["contrast", "spacing"])
    table = g["dice"].agg(["mean", "min"]).round(4)
    table["volume_error"] = g["volume_error"].mean().round(2)
    out = {f"{c}@{s}": dict(mean=float(r["mean"]), min=float(r["min"]),
                            volume_error_pct=float(r["volume_error"]))
           for (c, s), r in table.iterrows()}
    out["overall_mean"] = float(df["dice"].mean())
    out["overall_volume_error_pct"] = float(df["volume_error"].mean())
    out["per_scan"] = rows
    resp = volume_response(predict, maps(), contrast="T1w")
    rf = pd.DataFrame(resp)
    out["volume_response"] = dict(
        contrast="T1w",
        slope=response_slope(resp),
        volume_error_pct={f"{f:g}": float(v) for f, v in rf.groupby("factor")["volume_error"].mean().items()},
        per_scan=resp,
    )
    return out


def write_model_card(weights, out, *, heldout: dict | None = None, notes: str = "",
                     overwrite: bool = False) -> dict:
    """Copy ``weights`` to ``out/thalnet.pt`` and write the model card beside them.

    Parameters
    ----------
    weights : path
        A ``thalnet.pt`` from ``thaldask train``.
    out : path
        Folder to write into (created if missing; may be the folder ``weights`` is in).
    heldout : dict, optional
        Full-pipeline validation from :func:`heldout_dice`.
    overwrite : bool
        Replace a different ``thalnet.pt`` already in ``out`` (else an error).

    Returns
    -------
    dict
        The card, as written to ``out/thalnet.json`` (and, for people, ``out/thalnet.md``;
        ``heldout`` also goes to ``out/thalnet.heldout.json`` for reuse). Every file is
        written to a temporary name and renamed.

    Raises
    ------
    ModelWeightsError
        ``weights`` missing, or ``out`` holds other weights and ``overwrite`` is False.
    """
    weights, dest = Path(weights), Path(out)
    if not weights.is_file():
        raise ModelWeightsError(f"{weights}: weights file not found")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "thalnet.pt"
    sha = sha256(weights)
    if not (target.exists() and target.resolve() == weights.resolve()):
        if target.exists() and sha256(target) != sha and not overwrite:
            raise ModelWeightsError(
                f"{target}: other weights are already there; choose another --out or pass --overwrite"
            )
        write_bytes(target, Path(weights).read_bytes())
    w = torch.load(target, map_location="cpu", weights_only=True)
    meta = w["meta"]
    n_params = {k: int(sum(v.numel() for v in w[k].values())) for k in ("roi", "loc")}
    card = dict(
        name="thalnet",
        names=["thalnet", "thalnet-multi"],
        file="thalnet.pt",
        sha256=sha,
        size_bytes=target.stat().st_size,
        dtype="float16",
        parameters=n_params,
        outputs="0 background, 1 left thalamus, 2 right thalamus, on the input grid",
        architecture=dict(
            localiser=dict(w["loc_config"], input=f"{meta['loc_shape']} voxels at {meta['loc_spacing']} mm, RAS"),
            roi=dict(w["roi_config"], input=f"{meta['roi_shape']} voxels at {meta['roi_spacing']} mm, RAS",
                     slots=list(meta["slots"])),
        ),
        training=dict(
            command="thaldask train --label-maps DIR --out DIR --steps {} --seed {} --device cpu".format(
                meta["steps"], meta["seed"]),
            label_maps_used=meta["label_maps"],
            label_maps_held_out=meta["held_out"],
            label_maps_source="SynthSeg training label maps (Billot et al. 2023), Apache-2.0",
            seed=meta["seed"],
            steps=meta["steps"],
            config=meta["config"],
            notes=notes,
        ),
        validation_roi=dict(
            description="ROI network alone on fixed renders of the held-out maps (box at the true "
                        "thalamus centre +- 4 mm, no deformation); mean Dice of left and right",
            dice=meta.get("validation", {}),
        ),
    )
    if heldout is not None:
        card["validation_full"] = dict(
            description="full inference path (localiser, head-region search, ROI network with flip "
                        "averaging, resampling back) on whole-head renders of "
                        "the held-out maps; tissue priors with jitter, blur, bias field, noise; "
                        "1x1x1.5 = thick slices along z; Dice and volume error per side",
            **heldout,
        )
    for k in ("fine_tuned_from", "fine_tune_manifest", "fine_tune_steps"):
        if k in meta:
            card["training"][k] = meta[k]
    text = json.dumps(card, indent=1, default=str) + "\n"
    write_text(dest / "thalnet.json", text)
    write_text(dest / "thalnet.md", _markdown(card))
    if heldout is not None:
        held = json.dumps(heldout, indent=1, default=str)
        write_text(dest / "thalnet.heldout.json", held)
    return card


def _markdown(card: dict) -> str:
    t = card["training"]
    lines = [
        "# Model card: thalnet / thalnet-multi",
        "",
        "Left and right thalamus (0 background, 1 left, 2 right) from one scan of any contrast",
        "(`thalnet`) or several co-registered contrasts (`thalnet-multi`, slots T1w, FLAIR, R1;",
        "missing ones zeroed). Same weights for both names.",
        "",
        f"- weights: `{card['file']}` ({card['size_bytes'] / 1e6:.1f} MB, fp16), SHA-256 `{card['sha256']}`",
        f"- parameters: ROI network {card['parameters']['roi']:,}, localiser {card['parameters']['loc']:,}",
        f"- ROI input: {card['architecture']['roi']['input']}; localiser: {card['architecture']['localiser']['input']}",
        "",
        "## Training",
        "",
        "Synthetic images only (SynthSeg-style domain randomisation): random affine and smooth",
        "non-linear deformation, per-label Gaussian intensities (or jittered T1w/FLAIR/R1-like tissue",
        "priors), random skull stripping, bias field, gamma, blur, thick slices, noise, left-right",
        "flips with swapped labels; half of the samples single-channel, half random channel subsets.",
        "",
        f"- reproduce: `{t['command']}`",
        f"- label maps used ({len(t['label_maps_used'])}): {', '.join(t['label_maps_used'])}",
        f"- held out: {', '.join(t['label_maps_held_out'])}",
        f"- source: {t['label_maps_source']}",
        f"- seed {t['seed']}, steps {t['steps']}",
    ]
    if t.get("notes"):
        lines.append(f"- notes: {t['notes']}")
    lines += ["", "## Validation (held-out anatomy)", ""]
    v = card["validation_roi"]
    lines.append(f"ROI network alone: {v['description'].removeprefix('ROI network alone on ')}.")
    lines.append("")
    lines.append("| contrast | Dice |")
    lines.append("|---|---|")
    for k, d in v["dice"].items():
        lines.append(f"| {k} | {d:.3f} |")
    if "validation_full" in card:
        f = card["validation_full"]
        lines += ["", f"Full inference path {f['description'].removeprefix('full inference path ')}.", "",
                  "| contrast @ voxel size (mm) | mean Dice | min Dice | mean volume error |",
                  "|---|---|---|---|"]
        for k, d in f.items():
            if isinstance(d, dict) and "mean" in d:
                ve = f"{d['volume_error_pct']:+.1f} %" if "volume_error_pct" in d else "-"
                lines.append(f"| {k} | {d['mean']:.3f} | {d['min']:.3f} | {ve} |")
        lines.append(f"\nOverall mean Dice: {f['overall_mean']:.3f}")
        if "overall_volume_error_pct" in f:
            lines.append(f"Overall mean volume error (predicted - true): "
                         f"{f['overall_volume_error_pct']:+.1f} %")
        if "volume_response" in f:
            r = f["volume_response"]
            lines += ["", "Atrophy and growth: each held-out thalamus scaled by a factor (the exposed",
                      "rim takes the neighbouring labels), rendered as 1 mm T1w and segmented.",
                      f"Slope of measured on true volume: {r['slope']:.2f} (1 = every change measured).",
                      "", "| thalamus volume factor | mean volume error |", "|---|---|"]
            for k, v in r["volume_error_pct"].items():
                lines.append(f"| {k} | {v:+.1f} % |")
    lines += [
        "",
        "## Limits",
        "",
        "Trained and validated on synthetic renders of 20 real label maps only; accuracy on real",
        "scans with manual labels has not been measured here. Healthy-looking anatomy: no lesion",
        "or atrophy model beyond random scaling and deformation. Where the thalamic boundary is",
        "faint the network leans on the typical thalamic shape: it measures only part of a",
        "thalamus-specific volume change (slope above), so small thalami come out too large and",
        "atrophy rates too small.",
        "",
    ]
    return "\n".join(lines)
