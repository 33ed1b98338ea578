"""Training of the built-in ``thalnet`` models from label maps (domain randomisation).

One run trains both networks of the model: the 4 mm whole-head localiser and the 1 mm
region-of-interest network. The region-of-interest network has three input slots
(T1w, FLAIR, R1); half of its training samples fill only the first slot with an image of any
random contrast (the single-contrast ``thalnet``), the other half fill a random subset of the
slots with co-registered renders of the same deformed anatomy (``thalnet-multi``), missing
slots zeroed. The same weights therefore serve both model names.

Run ``thaldask train --label-maps DIR --out DIR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from thaldask._shared.paths import write_text
from thaldask.cohort.labels import to_sides
from thaldask.cohort.manifest import read_manifest
from thaldask.metrics.kernels import side_dice
from thaldask.thalnet import augment
from thaldask.thalnet.assets import SLOTS, weights_path
from thaldask.thalnet.inference import affine_grid, box_affine, normalise, resolve_device
from thaldask.thalnet.network import UNet3D
from thaldask.thalnet.validate import ThalamusResizer

__all__ = ["TrainConfig", "load_label_maps", "train_model", "finetune_manifest", "export_weights"]

ROI_SHAPE = (56, 40, 32)  # voxels at 1.5 mm, RAS: 84 x 60 x 48 mm, both thalami
ROI_SPACING = 1.5
LOC_SHAPE = (64, 64, 64)  # voxels at 4 mm: a 256 mm field of view
LOC_SPACING = 4.0
MULTI_SUBSETS = ((0, 2), (0, 1), (1, 2), (0, 1, 2))


@dataclass
class TrainConfig:
    steps: int = 2000
    seed: int = 0
    batch: int = 2
    lr: float = 1e-3
    loc_every: int = 4
    n_holdout: int = 3
    roi_base: int = 16
    loc_base: int = 8
    single_fraction: float = 0.5
    # weight of the soft-volume term of the loss (relative error of the summed probabilities)
    volume_weight: float = 1.0
    checkpoint_every: int = 50
    validate_every: int = 250
    # one thread: on a shared CPU two torch threads burn ~3x the CPU time per step
    threads: int = 1
    augmentation: dict = field(
        default_factory=lambda: dict(
            roi_rotation_deg=15.0,
            roi_scale=(0.85, 1.15),
            roi_shift_mm=8.0,
            roi_elastic_mm=2.5,
            loc_rotation_deg=20.0,
            loc_scale=(0.85, 1.15),
            loc_shift_mm=25.0,
            loc_elastic_mm=4.0,
            lr_flip_prob=0.5,
            prior_prob=0.4,
            skull_strip_prob=0.25,
            gmm_std_max=0.1,
            bias_field_std_max=0.3,
            gamma_log_std=0.25,
            noise_std_max=0.05,
            blur_sigma_mm_max=0.6,
            thick_slice_prob=0.5,
            thick_slice_mm=(1.2, 3.5),
            fov_cut_prob=0.3,
            # each thalamus on its own scaled in volume by a random factor (what is exposed
            # takes the neighbouring labels, growth takes over the neighbours' border), so
            # that thalamus size varies independently of its surroundings
            thal_resize_prob=0.8,
            thal_resize_factor=(0.65, 1.2),
            # optional "pv_supersample": N (absent = 1): labels sampled N times finer than the
            # ROI grid, intensities averaged over each voxel (partial volume), targets the
            # fraction of each class (``thaldask train --pv-supersample N``)
        )
    )


class LabelMaps:
    """Label maps in memory: 1 mm crops around the thalami and 2 mm whole heads (uint8),
    and per crop a :class:`~thaldask.thalnet.validate.ThalamusResizer` (thalamus-size
    augmentation)."""

    def __init__(self, names, roi, roi_center, head, head_center, bank, resizers=None):
        self.names = names
        self.roi = roi
        self.roi_center = roi_center
        self.head = head
        self.head_center = head_center
        self.bank = bank
        self.resizers = resizers

    def resized_roi(self, i: int, factors) -> torch.Tensor:
        """The 1 mm crop of map ``i`` with the left and right thalamus volumes scaled by
        ``factors``."""
        if self.resizers is None:
            self.resizers = [None] * len(self.roi)
        if self.resizers[i] is None:
            self.resizers[i] = ThalamusResizer(self.roi[i].numpy(), (self.bank.left, self.bank.right))
        return torch.from_numpy(self.resizers[i](factors))


def _read_ras(path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj)
    return np.rint(data).astype(np.int32)


def load_label_maps(folder, crop: int = 128) -> LabelMaps:
    """Read every NIfTI/MGZ label map in ``folder`` (FreeSurfer labels, thalamus 10/49).

    Maps are reoriented to RAS; kept are a ``crop``³ 1 mm box centred on the thalami and the
    whole head subsampled to 2 mm, as uint8 label indices.
    """
    folder = Path(folder)
    paths = sorted(
        p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz", ".mgz")) and p.is_file()
    )
    if not paths:
        raise FileNotFoundError(f"{folder}: no label maps (.nii, .nii.gz, .mgz) found")
    maps = []
    values = set()
    for p in paths:
        d = _read_ras(p)
        if not ((d == 10).any() and (d == 49).any()):
            raise ValueError(f"{p}: label map has no thalamus labels 10 and 49")
        values.update(np.unique(d).tolist())
        maps.append((p.name.split(".")[0], d))
    bank = augment.LabelBank(values)
    names, roi, roi_c, head, head_c = [], [], [], [], []
    half = crop // 2
    for name, d in maps:
        idx = bank.encode(d)
        thal = np.argwhere((d == 10) | (d == 49))
        c = np.rint(thal.mean(0)).astype(int)
        padded = np.pad(idx, half)
        box = padded[c[0] : c[0] + crop, c[1] : c[1] + crop, c[2] : c[2] + crop]
        names.append(name)
        roi.append(torch.from_numpy(np.ascontiguousarray(box)))
        roi_c.append(np.full(3, (crop - 1) / 2.0))
        small = np.ascontiguousarray(idx[::2, ::2, ::2])
        head.append(torch.from_numpy(small))
        nz = np.argwhere(small > 0)
        head_c.append((nz.min(0) + nz.max(0)) / 2.0)
        del d
    return LabelMaps(names, roi, roi_c, head, head_c, bank)


def _uniform(gen, lo, hi):
    return float(lo + (hi - lo) * torch.rand(1, generator=gen))


def make_roi_sample(maps: LabelMaps, i: int, gen: torch.Generator, cfg: TrainConfig, *, slots=None,
                    contrasts=None, deform=True):
    """One training pair: image (3, *ROI_SHAPE) and target: labels (ROI_SHAPE) in {0, 1, 2},
    or with ``pv_supersample`` > 1 class fractions (3, *ROI_SHAPE)."""
    a = cfg.augmentation
    geom = None
    if deform:
        geom = augment.sample_geometry(
            gen,
            max_rotation_deg=a["roi_rotation_deg"],
            scale_range=tuple(a["roi_scale"]),
            max_elastic_mm=a["roi_elastic_mm"],
            max_shift_mm=a["roi_shift_mm"],
        )
    else:
        geom = augment.sample_geometry(gen, max_rotation_deg=0, scale_range=(1, 1), max_shear=0,
                                     max_elastic_mm=0, max_shift_mm=a["roi_shift_mm"] / 2)
    vol = maps.roi[i]
    if deform and a.get("thal_resize_prob", 0.0) > 0 and _uniform(gen, 0, 1) < a["thal_resize_prob"]:
        lo, hi = a["thal_resize_factor"]
        vol = maps.resized_roi(i, (_uniform(gen, lo, hi), _uniform(gen, lo, hi)))
    ss = int(a.get("pv_supersample", 1))
    idx = augment.sample_labels(vol, 1.0, maps.roi_center[i], tuple(n * ss for n in ROI_SHAPE),
                                ROI_SPACING / ss, geom)
    flip = deform and _uniform(gen, 0, 1) < a["lr_flip_prob"]
    if flip:
        idx = idx.flip(0)
    target = maps.bank.sides(idx)
    if flip:
        target = torch.where(target > 0, 3 - target, target)
    if ss > 1:  # soft target: the share of each class in every ROI voxel
        target = F.avg_pool3d(F.one_hot(target, 3).permute(3, 0, 1, 2).float()[None], ss)[0]
    if slots is None:
        if _uniform(gen, 0, 1) < cfg.single_fraction:
            slots = (0,)
        else:
            slots = MULTI_SUBSETS[int(torch.randint(len(MULTI_SUBSETS), (1,), generator=gen))]
    image = torch.zeros((len(SLOTS), *ROI_SHAPE), dtype=torch.float32)
    for s in slots:
        if contrasts is not None:
            contrast = contrasts[s]
        elif len(slots) > 1 and _uniform(gen, 0, 1) < 0.5:
            contrast = SLOTS[s]
        else:
            contrast = None
        image[s] = augment.render_image(idx, maps.bank, gen, spacing=ROI_SPACING, contrast=contrast,
                                      prior_prob=a["prior_prob"], skull_strip_prob=a["skull_strip_prob"],
                                      supersample=ss)
    return image, target


def make_loc_sample(maps: LabelMaps, i: int, gen: torch.Generator, cfg: TrainConfig):
    """One localiser pair: image (1, *LOC_SHAPE) at 4 mm and target in {0, 1, 2}."""
    a = cfg.augmentation
    geom = augment.sample_geometry(
        gen,
        max_rotation_deg=a["loc_rotation_deg"],
        scale_range=tuple(a["loc_scale"]),
        max_elastic_mm=a["loc_elastic_mm"],
        max_shift_mm=a["loc_shift_mm"],
    )
    idx = augment.sample_labels(maps.head[i], 2.0, maps.head_center[i], LOC_SHAPE, LOC_SPACING, geom)
    flip = _uniform(gen, 0, 1) < a["lr_flip_prob"]
    if flip:
        idx = idx.flip(0)
    target = maps.bank.sides(idx)
    if flip:
        target = torch.where(target > 0, 3 - target, target)
    img = augment.render_image(idx, maps.bank, gen, spacing=LOC_SPACING, prior_prob=a["prior_prob"],
                             skull_strip_prob=a["skull_strip_prob"])
    img = augment.blur(img, [_uniform(gen, 0.3, 1.0)] * 3)
    if _uniform(gen, 0, 1) < a["fov_cut_prob"]:  # partial head coverage
        axis = int(torch.randint(3, (1,), generator=gen))
        cut = int(_uniform(gen, 4, 16))
        sl = [slice(None)] * 3
        sl[axis] = slice(0, cut) if _uniform(gen, 0, 1) < 0.5 else slice(LOC_SHAPE[axis] - cut, None)
        img[tuple(sl)] = 0
    return normalise(img)[None], target


def seg_loss(logits: torch.Tensor, target: torch.Tensor, volume_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the two thalamus classes, plus ``volume_weight``
    times the relative error of each thalamus' soft volume (sum of probabilities) per sample.
    """
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    if target.is_floating_point():  # class fractions (batch, classes, ...)
        onehot = target
    else:
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1) / (denom + 1)
    loss = ce + (1 - dice[1:].mean())
    if volume_weight:
        v_pred = prob[:, 1:].sum((2, 3, 4))
        v_true = onehot[:, 1:].sum((2, 3, 4))
        loss = loss + volume_weight * ((v_pred - v_true).abs() / (v_true + 100.0)).mean()
    return loss


def dice_sides(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Left and right Dice of two label volumes (tensors on the CPU; class fractions
    (3, ...) count as their most likely class)."""
    if target.is_floating_point():
        target = target.argmax(0)
    left, right, _ = side_dice(target.numpy(), pred.numpy())
    return float(left), float(right)


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_weights(roi_net, loc_net, meta: dict, out: Path) -> str:
    """Write fp16 weights ``thalnet.pt`` and return their SHA-256."""
    payload = {
        "roi": {k: v.detach().cpu().half() for k, v in roi_net.state_dict().items()},
        "roi_config": roi_net.config,
        "loc": {k: v.detach().cpu().half() for k, v in loc_net.state_dict().items()},
        "loc_config": loc_net.config,
        "meta": meta,
    }
    path = out / "thalnet.pt"
    _atomic_save(payload, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate(roi_net, maps: LabelMaps, held: list[int], cfg: TrainConfig) -> dict:
    """Dice of the region-of-interest network on fixed renders of held-out maps."""
    device = next(roi_net.parameters()).device
    roi_net.eval()
    res = {}
    with torch.no_grad():
        for ci, contrast in enumerate(SLOTS):
            ds = []
            for i in held:
                gen = torch.Generator().manual_seed(10_000 + 97 * i + ci)
                img, tgt = make_roi_sample(maps, i, gen, cfg, slots=(0,), contrasts=(contrast,) * 3,
                                           deform=False)
                pred = roi_net(img[None].to(device)).argmax(1)[0].cpu()
                ds.extend(dice_sides(pred, tgt))
            res[contrast] = float(np.nanmean(ds))
        ds = []
        for i in held:
            gen = torch.Generator().manual_seed(20_000 + 97 * i)
            img, tgt = make_roi_sample(maps, i, gen, cfg, slots=(0, 1, 2), contrasts=SLOTS, deform=False)
            pred = roi_net(img[None].to(device)).argmax(1)[0].cpu()
            ds.extend(dice_sides(pred, tgt))
        res["T1w+FLAIR+R1"] = float(np.nanmean(ds))
    roi_net.train()
    return res


def _train_step(net, opt, make_sample, maps: LabelMaps, train_idx, gen, cfg: TrainConfig,
                volume_weight: float = 0.0) -> float:
    """One optimiser step on a batch of fresh samples of random training maps; the loss.

    Samples are generated on the CPU (one random stream, whatever the device), the step runs
    on the network's device."""
    device = next(net.parameters()).device
    pairs = [make_sample(maps, train_idx[int(torch.randint(len(train_idx), (1,), generator=gen))], gen, cfg)
             for _ in range(cfg.batch)]
    x = torch.stack([p[0] for p in pairs]).to(device).contiguous(memory_format=torch.channels_last_3d)
    y = torch.stack([p[1] for p in pairs]).to(device)
    loss = seg_loss(net(x), y, volume_weight)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_model(label_maps, out, cfg: TrainConfig | None = None, *, init=None, log=print,
                stop_after: int | None = None, device="cpu") -> dict:
    """Train localiser + region-of-interest network; resumable from ``out/checkpoint.pt``.

    With one torch thread on CPU the result is bit-reproducible: the same label maps, seed
    and ``cfg`` give the same weights, also when the run is stopped and resumed (every random
    draw comes from one generator whose state is checkpointed). Keep ``cfg.steps`` the same
    across a resume: it sets the learning-rate schedule.

    Parameters
    ----------
    label_maps : path
        Folder of label maps (FreeSurfer labels; thalamus 10 left, 49 right).
    out : path
        Output folder: ``checkpoint.pt`` (resume), ``thalnet.pt`` (fp16 weights),
        ``train_hashes.json`` (SHA-256 of the weights at every checkpoint),
        ``train_history.json`` (losses and validation, at the end).
    init : path, optional
        Weights file to start from (fine-tuning).
    stop_after : int, optional
        Checkpoint and return once this many steps are done (train in slices on a shared
        machine; run again to resume).
    device : str
        ``"cpu"`` (bit-reproducible), ``"cuda"`` or ``"auto"`` (CUDA when available).
    """
    device = resolve_device(device)
    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    maps = load_label_maps(label_maps)
    n = len(maps.names)
    n_hold = min(cfg.n_holdout, max(0, n - 1))
    held = list(range(n - n_hold, n))
    train_idx = list(range(n - n_hold))
    log(f"loaded {n} label maps in {time.time() - t0:.1f}s; held out {[maps.names[i] for i in held]}")

    roi_net = UNet3D(len(SLOTS), 3, base=cfg.roi_base, levels=4)
    loc_net = UNet3D(1, 3, base=cfg.loc_base, levels=3)
    cl = torch.channels_last_3d  # ~25% faster convolutions on CPU
    roi_net.to(device=device, memory_format=cl)
    loc_net.to(device=device, memory_format=cl)
    opt_roi = torch.optim.AdamW(roi_net.parameters(), lr=cfg.lr, weight_decay=1e-5)
    opt_loc = torch.optim.AdamW(loc_net.parameters(), lr=cfg.lr, weight_decay=1e-5)
    start = 0
    history = []
    hashes = []  # SHA-256 of the exported weights at every checkpoint (reproducibility)
    ckpt_path = out / "checkpoint.pt"
    gen = torch.Generator().manual_seed(cfg.seed)
    # the weights a run starts from are part of its recipe (checked on resume too)
    init_sha = hashlib.sha256(Path(init).read_bytes()).hexdigest() if init is not None else None
    if ckpt_path.exists():
        # loaded on the CPU (the generator state must be); load_state_dict moves to the device
        ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        roi_net.load_state_dict(ck["roi"])
        loc_net.load_state_dict(ck["loc"])
        opt_roi.load_state_dict(ck["opt_roi"])
        opt_loc.load_state_dict(ck["opt_loc"])
        start = ck["step"]
        history = ck.get("history", [])
        hashes = ck.get("hashes", [])
        gen.set_state(ck["gen"])
        log(f"resumed from step {start}")
    elif init is not None:
        w = torch.load(init, weights_only=False)
        roi_net.load_state_dict({k: v.float() for k, v in w["roi"].items()})
        loc_net.load_state_dict({k: v.float() for k, v in w["loc"].items()})
        log(f"initialised from {init}")

    def meta(step, val):
        return dict(
            label_maps=[maps.names[i] for i in train_idx],
            held_out=[maps.names[i] for i in held],
            seed=cfg.seed,
            steps=step,
            config={k: v for k, v in asdict(cfg).items()},
            roi_shape=ROI_SHAPE,
            roi_spacing=ROI_SPACING,
            loc_shape=LOC_SHAPE,
            loc_spacing=LOC_SPACING,
            slots=SLOTS,
            validation=val,
            **({"init_sha256": init_sha} if init_sha else {}),
        )

    roi_net.train()
    loc_net.train()
    tl = time.time()
    losses, llosses = [], []
    val = history[-1]["val"] if history else {}
    for step in range(start, cfg.steps):
        frac = step / max(cfg.steps, 1)
        lr = cfg.lr * (1 - frac) ** 0.9
        for g in opt_roi.param_groups + opt_loc.param_groups:
            g["lr"] = lr
        losses.append(_train_step(roi_net, opt_roi, make_roi_sample, maps, train_idx, gen, cfg,
                                  cfg.volume_weight))
        if step % cfg.loc_every == 0:
            llosses.append(_train_step(loc_net, opt_loc, make_loc_sample, maps, train_idx, gen, cfg))
        done = step + 1
        if done % 10 == 0:
            rate = 10 / (time.time() - tl)
            tl = time.time()
            log(f"step {done} lr {lr:.2e} roi_loss {np.mean(losses):.4f} loc_loss {np.mean(llosses) if llosses else float('nan'):.4f} {rate:.3f} steps/s")
            history.append(dict(step=done, roi_loss=float(np.mean(losses)),
                                loc_loss=float(np.mean(llosses)) if llosses else None, val=val))
            losses, llosses = [], []
        if done % cfg.validate_every == 0 or done == cfg.steps:
            val = validate(roi_net, maps, held, cfg)
            log(f"step {done} validation dice {json.dumps(val)}")
            if history:
                history[-1]["val"] = val
            export_weights(roi_net, loc_net, meta(done, val), out)
        stop = stop_after is not None and done >= stop_after and done < cfg.steps
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
            sha = export_weights(roi_net, loc_net, meta(done, val), out)
            hashes.append(dict(step=done, sha256=sha))
            _atomic_save(dict(roi=roi_net.state_dict(), loc=loc_net.state_dict(),
                              opt_roi=opt_roi.state_dict(), opt_loc=opt_loc.state_dict(),
                              step=done, history=history, hashes=hashes, gen=gen.get_state()), ckpt_path)
            write_text(out / "train_hashes.json", json.dumps(hashes, indent=0))
            log(f"checkpoint step {done} weights sha256 {sha}")
        if stop:
            log(f"stopped after step {done} of {cfg.steps}; run again to resume")
            return dict(weights=str(out / "thalnet.pt"), sha256=None, validation=val, steps=done,
                        stopped=True)
    sha = export_weights(roi_net, loc_net, meta(cfg.steps, val), out)
    write_text(out / "train_history.json", json.dumps(history))
    log(f"done: {cfg.steps} steps, weights {out / 'thalnet.pt'} sha256 {sha}")
    return dict(weights=str(out / "thalnet.pt"), sha256=sha, validation=val, steps=cfg.steps,
                stopped=False)


def _read_pairs(manifest, log):
    """(image, sides, affine) of every image with a ground-truth mask on the same grid."""
    import nibabel as nib

    df = read_manifest(manifest)
    img_rows = df[df.kind == "image"]
    gt_rows = df[(df.kind == "mask") & (df.method.str.lower() == "gt")]
    pairs = []
    for _, m in gt_rows.iterrows():
        cand = img_rows[(img_rows.subject == m.subject) & (img_rows.timepoint == m.timepoint)]
        same = cand[cand.contrast == m.contrast]
        cand = same if len(same) else cand
        for _, r in cand.iterrows():
            try:
                im = nib.load(r.file)
                mk = nib.load(m.file)
                if im.shape[:3] != mk.shape[:3] or not np.allclose(im.affine, mk.affine, atol=1e-3):
                    log(f"{manifest} row {m.row}: mask grid differs from image row {r.row}; skipped")
                    continue
                sides = to_sides(np.asarray(mk.dataobj), m.labels or "binary")
                if not ((sides == 1).any() and (sides == 2).any()):
                    log(f"{manifest} row {m.row}: mask lacks a left or right thalamus; skipped")
                    continue
                data = np.asarray(im.dataobj, dtype=np.float32)
                pairs.append((data.reshape(data.shape[:3]), sides.astype(np.uint8), im.affine))
            except Exception as exc:  # noqa: BLE001 - a bad file is skipped, not fatal
                log(f"{manifest} row {r.row}: {type(exc).__name__}: {exc}; skipped")
    return pairs


def finetune_manifest(manifest, out, *, steps: int = 300, seed: int = 0, init=None, lr: float = 2e-4,
                      threads: int = 1, log=print, device="cpu") -> dict:
    """Fine-tune the region-of-interest network on a user's images with ground truth.

    Each step takes a random (image, GT) pair from the manifest, a 1.5 mm box around the GT
    thalami with a random shift and rotation, and random intensity changes (gamma, bias
    field, noise); the localiser is kept as it is. Writes ``out/thalnet.pt``.
    """
    device = resolve_device(device)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = _read_pairs(manifest, log)
    if not pairs:
        raise ValueError(f"{manifest}: no image with a usable ground-truth mask on its grid")
    init = Path(init) if init else weights_path("thalnet")
    w = torch.load(init, map_location="cpu", weights_only=True)
    roi_net = UNet3D(**w["roi_config"])
    roi_net.load_state_dict({k: v.float() for k, v in w["roi"].items()})
    loc_net = UNet3D(**w["loc_config"])
    loc_net.load_state_dict({k: v.float() for k, v in w["loc"].items()})
    roi_net.to(device)
    meta = dict(w["meta"])
    shape, spacing = tuple(meta["roi_shape"]), float(meta["roi_spacing"])
    opt = torch.optim.AdamW(roi_net.parameters(), lr=lr, weight_decay=1e-5)
    roi_net.train()
    for step in range(steps):
        data, sides, aff = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
        fg = np.argwhere(sides > 0)
        c = aff @ np.append(fg.mean(0), 1)
        center = c[:3] + (torch.rand(3, generator=gen).numpy() * 2 - 1) * 6
        ang = (torch.rand(3, generator=gen).numpy() * 2 - 1) * np.radians(10)
        box = box_affine(center, shape, spacing)
        rot = augment.rotation(ang.tolist()).numpy()
        box[:3, :3] = rot @ box[:3, :3]
        box[:3, 3] = center - rot @ (spacing * (np.asarray(shape) - 1) / 2)
        grid = affine_grid(shape, box, np.linalg.inv(aff), data.shape)
        x = F.grid_sample(torch.from_numpy(data)[None, None], grid, mode="bilinear", align_corners=True)[0, 0]
        y = F.grid_sample(torch.from_numpy(sides)[None, None].float(), grid, mode="nearest",
                          align_corners=True)[0, 0].long()
        x = normalise(x, 0.0, 1.0) ** math.exp(0.2 * float(torch.randn(1, generator=gen)))
        field = torch.randn(1, 1, 4, 4, 4, generator=gen) * 0.1
        x = x * torch.exp(F.interpolate(field, size=shape, mode="trilinear", align_corners=True)[0, 0])
        x = normalise(x + torch.randn(shape, generator=gen) * 0.02)
        inp = torch.zeros((1, roi_net.config["in_channels"], *shape))
        inp[0, 0] = x
        loss = seg_loss(roi_net(inp.to(device)), y[None].to(device))
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps) ** 0.9
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0:
            log(f"fine-tune step {step + 1}/{steps} loss {float(loss.detach()):.4f}")
    meta.update(fine_tuned_from=str(init), fine_tune_manifest=str(manifest), fine_tune_steps=steps,
                fine_tune_seed=seed, fine_tune_pairs=len(pairs))
    sha = export_weights(roi_net, loc_net, meta, out)
    log(f"done: fine-tuned on {len(pairs)} scans, weights {out / 'thalnet.pt'} sha256 {sha}")
    return dict(weights=str(out / "thalnet.pt"), sha256=sha, steps=steps)
