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
from thaldask.thalnet.validate import (
    crop_around_thalami,
    evaluate_segmenter,
    response_slope,
    volume_response,
)

__all__ = ["write_model_card", "heldout_dice", "heldout_maps"]


def heldout_maps(label_maps_dir, names):
    """(name, labels, affine) of each held-out label map, in RAS, cropped to its labels
    with a 2-voxel margin (the affine follows the crop)."""
    import nibabel as nib

    for n in names:
        p = next(Path(label_maps_dir).glob(n + ".*"))
        img = nib.as_closest_canonical(nib.load(str(p)))
        lab = np.rint(np.asarray(img.dataobj)).astype(np.int32)
        nz = np.argwhere(lab > 0)
        lo, hi = np.maximum(nz.min(0) - 2, 0), np.minimum(nz.max(0) + 3, lab.shape)
        aff = img.affine.copy()
        aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
        yield n, lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], aff


def heldout_dice(weights, label_maps_dir, names, *, log=print) -> dict:
    """Full-pipeline Dice on held-out label maps (whole head, three contrasts, two grids)."""
    model = load_thalnet("cpu", path=weights, check_hash=False)

    def maps():
        for n, lab, aff in heldout_maps(label_maps_dir, names):
            log(f"rendering {n}")
            yield n, lab, aff

    def predict(img, aff, contrast):
        t0 = time.perf_counter()
        channels = [None] * len(SLOTS)
        parts = contrast.split("+")
        for p, im in zip(parts, img if len(parts) > 1 else [img], strict=True):
            channels[SLOTS.index(p)] = im
        res = model.predict(channels, aff)
        voxel = float(abs(np.linalg.det(np.asarray(aff)[:3, :3])))
        searched.append(bool(res["searched"]))
        log(f"  {contrast} {np.shape(img)}: {time.perf_counter() - t0:.1f} s"
            + (" (head-region search)" if res["searched"] else ""))
        return dict(labels=res["labels"], soft_voxels=res["soft_volume_mm3"] / voxel)

    searched = []
    contrasts = ("T1w", "FLAIR", "R1", "T1w+FLAIR+R1")
    rows = evaluate_segmenter(predict, maps(), contrasts=contrasts)
    df = pd.DataFrame(rows)
    g = df.groupby(["contrast", "spacing"])
    table = g["dice"].agg(["mean", "min"]).round(4)
    table["volume_error"] = g["volume_error"].mean().round(2)
    table["soft_volume_error"] = g["soft_volume_error"].mean().round(2)
    out = {f"{c}@{s}": dict(mean=float(r["mean"]), min=float(r["min"]),
                            volume_error_pct=float(r["volume_error"]),
                            soft_volume_error_pct=float(r["soft_volume_error"]))
           for (c, s), r in table.iterrows()}
    out["overall_mean"] = float(df["dice"].mean())
    out["overall_volume_error_pct"] = float(df["volume_error"].mean())
    out["overall_soft_volume_error_pct"] = float(df["soft_volume_error"].mean())
    out["per_scan"] = rows
    def crops():  # the volume response on 112 x 112 x 96 mm around the thalami (faster renders)
        for n, lab, aff in maps():
            yield (n, *crop_around_thalami(lab, aff))

    out["volume_response"] = {c: _response(predict, crops, c) for c in contrasts}
    out["head_region_search"] = dict(scans=len(searched), searched=int(sum(searched)))
    out["shift_tta"] = int(model.shift_tta)
    return out


def _response(predict, maps, contrast) -> dict:
    resp = volume_response(predict, maps(), contrast=contrast)
    rf = pd.DataFrame(resp)
    by = rf.groupby("factor")
    return dict(
        slope=response_slope(resp),
        soft_slope=response_slope(resp, "pred_soft_voxels"),
        volume_error_pct={f"{f:g}": float(v) for f, v in by["volume_error"].mean().items()},
        soft_volume_error_pct={f"{f:g}": float(v) for f, v in by["soft_volume_error"].mean().items()},
        per_scan=resp,
    )


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
            command=_train_command(meta),
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
        n = int(heldout.get("shift_tta", 1))
        boxes = "one box" if n == 1 else f"{n} boxes shifted by half voxels of its grid, every other one mirrored"
        card["validation_full"] = dict(
            description="full inference path (localiser, checked by one ROI pass, head-region search "
                        "only when that pass shows no plausible thalamus pair, ROI network with flip "
                        f"averaging in {boxes} (thaldask.thalnet.shift-tta {n}), resampling back, "
                        "averaged on the input grid) on whole-head renders of "
                        "the held-out maps; tissue priors with jitter, blur, bias field, noise; "
                        "1x1x1.5 = thick slices along z; Dice and volume error per side",
            **heldout,
        )
    if meta.get("init_sha256"):
        card["training"]["init_sha256"] = meta["init_sha256"]
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


def _train_command(meta: dict) -> str:
    cfg = meta.get("config", {})
    cmd = "thaldask train --label-maps DIR --out DIR --steps {} --seed {}".format(meta["steps"], meta["seed"])
    if meta.get("init_sha256"):
        cmd += f" --init INIT.pt --lr {cfg.get('lr', 1e-3):g}"
    ss = cfg.get("augmentation", {}).get("pv_supersample", 1)
    if ss > 1:
        cmd += f" --pv-supersample {ss}"
    return cmd + " --device cpu"


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
        "Each thalamus' volume is scaled on its own by a random factor (0.65-1.2; the exposed rim",
        "takes the neighbouring labels, growth takes over the neighbours' border) so that its size",
        "varies independently of its surroundings; the loss adds the relative error of each",
        "thalamus' soft volume (sum of probabilities) to cross-entropy and soft Dice.",
        "",
        f"- reproduce: `{t['command']}`",
        f"- label maps used ({len(t['label_maps_used'])}): {', '.join(t['label_maps_used'])}",
        f"- held out: {', '.join(t['label_maps_held_out'])}",
        f"- source: {t['label_maps_source']}",
        f"- seed {t['seed']}, steps {t['steps']}",
    ]
    if t.get("init_sha256"):
        lines.append(f"- starts from the weights INIT.pt with SHA-256 `{t['init_sha256']}`")
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
                  "| contrast @ voxel size (mm) | mean Dice | min Dice | volume error (mask) | "
                  "volume error (soft) |", "|---|---|---|---|---|"]
        for k, d in f.items():
            if isinstance(d, dict) and "mean" in d:
                ve = f"{d['volume_error_pct']:+.1f} %" if "volume_error_pct" in d else "-"
                se = f"{d['soft_volume_error_pct']:+.1f} %" if "soft_volume_error_pct" in d else "-"
                lines.append(f"| {k} | {d['mean']:.3f} | {d['min']:.3f} | {ve} | {se} |")
        lines.append(f"\nOverall mean Dice: {f['overall_mean']:.3f}")
        if "overall_volume_error_pct" in f:
            lines.append(f"Overall mean volume error (predicted - true): "
                         f"{f['overall_volume_error_pct']:+.1f} % (mask), "
                         f"{f.get('overall_soft_volume_error_pct', float('nan')):+.1f} % (soft)")
        if "head_region_search" in f:
            h = f["head_region_search"]
            lines.append(f"Head-region search needed (localiser's box without a plausible thalamus "
                         f"pair): {h['searched']} of {h['scans']} scans")
        if "volume_response" in f:
            resp = f["volume_response"]
            if "slope" in resp:  # one contrast (older cards)
                resp = {resp.get("contrast", "T1w"): resp}
            factors = list(next(iter(resp.values()))["volume_error_pct"])
            lines += ["", "Atrophy and growth: each held-out thalamus scaled by a factor (the exposed",
                      "rim takes the neighbouring labels), rendered at 1 mm (112 x 112 x 96 mm around the",
                      "thalami: the ROI network's response, without the localiser) and segmented. Slope of",
                      "measured on true volume (1 = every change measured) and mean volume error per",
                      "factor, of the mask (what the segmenter returns) and of the soft volume (sum of",
                      "probabilities).", "",
                      "| contrast | slope (mask) | slope (soft) | " + " | ".join(f"error at {x}" for x in factors)
                      + " |", "|---" * (3 + len(factors)) + "|"]
            for c, r in resp.items():
                errs = " | ".join(
                    f"{r['volume_error_pct'][x]:+.1f} % / {r.get('soft_volume_error_pct', {}).get(x, float('nan')):+.1f} %"
                    for x in factors)
                lines.append(f"| {c} | {r['slope']:.3f} | {r.get('soft_slope', float('nan')):.3f} | {errs} |")
            lines.append("\n(errors: mask / soft)")
    lines += [
        "",
        "## Limits",
        "",
        "Trained and validated on synthetic renders of 20 real label maps only; accuracy on real",
        "scans with manual labels has not been measured here. Healthy-looking anatomy: no lesion",
        "model; thalamus-specific atrophy and growth are modelled by scaling each thalamus on its",
        "own (0.65-1.2 in volume, the exposed rim taking the neighbouring labels), which the",
        "validation's resizing resembles; a real thalamus may shrink in other shapes.",
        "",
    ]
    return "\n".join(lines)
