"""Inference of the built-in ``thalnet`` model on one scan.

Steps: the scan is read in world (RAS, mm) coordinates through its affine, so any orientation
and voxel size works; a 4 mm whole-head localiser finds the thalami; a 1.5 mm box around them
goes through the region-of-interest network (with a left-right flip average), optionally in
several boxes shifted by half a voxel of that grid (``thaldask.thalnet.shift-tta``); the
probabilities of every box are resampled back onto the input grid and averaged there; one
connected component per side is kept. Every resampling is a
``torch.nn.functional.grid_sample`` between world-aligned grids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from thaldask import config
from thaldask.errors import ModelWeightsError, ScanError, SegmenterError
from thaldask.thalnet.assets import SLOTS, card_beside, model_card, models_dir, sha256, weights_path
from thaldask.thalnet.network import build_network
from thaldask.thalnet.postprocess import labels_from_prob, labels_of_volume, largest_component

__all__ = [
    "SLOTS",
    "ThalNet",
    "affine_grid",
    "box_affine",
    "load_thalnet",
    "model_card",
    "normalise",
    "resolve_device",
    "shift_offsets",
    "weights_path",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    device = str(device).lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SegmenterError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SegmenterError(f"device {device!r} not understood; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def normalise(img: torch.Tensor, lo: float = 0.005, hi: float = 0.995) -> torch.Tensor:
    """Robust min-max scaling to [0, 1] by the ``lo``/``hi`` quantiles, clipped.

    What every image the networks see goes through, at inference and in training.
    """
    flat = img.reshape(-1)
    if flat.numel() > 100_000:  # a regular subsample estimates the quantiles well enough
        flat = flat[:: flat.numel() // 100_000 + 1]
    if lo <= 0.0 and hi >= 1.0:
        q = torch.stack([flat.min(), flat.max()]).float()
    else:
        q = torch.quantile(flat.float(), torch.tensor([lo, hi]))
    scale = float(q[1] - q[0])
    if scale <= 1e-8:
        return torch.zeros_like(img)
    return ((img - q[0]) / scale).clamp(0, 1)


def affine_grid(shape, affine_vox2world: np.ndarray, target_world2vox: np.ndarray, target_shape):
    """Normalised grid_sample coordinates of the voxels of ``shape`` in a target volume."""
    m = torch.as_tensor(target_world2vox @ affine_vox2world, dtype=torch.float32)
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    vox = ijk @ m[:3, :3].T + m[:3, 3]
    size = torch.tensor(target_shape, dtype=torch.float32)
    norm = 2 * vox / (size - 1).clamp_min(1) - 1
    return norm.flip(-1)[None]


def box_affine(center, shape, spacing) -> np.ndarray:
    """vox->world affine of a world-aligned (RAS) box of ``shape`` centred at ``center`` mm."""
    a = np.eye(4)
    a[:3, :3] = np.diag([spacing] * 3)
    a[:3, 3] = np.asarray(center, float) - spacing * (np.asarray(shape, float) - 1) / 2
    return a


def _pool_to(img: torch.Tensor, affine: np.ndarray, target_mm: float):
    """Average-pool by integer factors so voxels approach ``target_mm`` (anti-aliasing)."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    k = [max(1, int(np.floor(target_mm / s + 1e-3))) for s in spacing]
    k = [min(kk, n) for kk, n in zip(k, img.shape, strict=False)]
    if max(k) == 1:
        return img, affine
    pooled = F.avg_pool3d(img[None, None], kernel_size=k, stride=k, ceil_mode=True)[0, 0]
    a = affine.copy()
    a[:3, :3] = affine[:3, :3] * np.asarray(k, float)
    a[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((np.asarray(k, float) - 1) / 2)
    return pooled, a


def _resample(img: torch.Tensor, affine: np.ndarray, box: np.ndarray, box_shape, mode="bilinear"):
    grid = affine_grid(box_shape, box, np.linalg.inv(affine), img.shape)
    out = F.grid_sample(img[None, None], grid.to(img.device), mode=mode, padding_mode="zeros",
                        align_corners=True)
    return out[0, 0]


#: half-voxel offsets of the ROI grid in the order shifted boxes are added: the first 2, 4
#: or 8 shift every axis in half of the boxes
_SHIFT_ORDER = 0.5 * np.array([(0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 1),
                               (0, 1, 0), (1, 0, 1), (0, 0, 1), (1, 1, 0)], dtype=float)


def shift_offsets(n: int) -> np.ndarray:
    """Offsets (n, 3), in voxels of the ROI grid, of ``n`` shifted boxes: half-voxel shifts,
    centred so that their mean is the box centre asked for (n = 1: no shift).

    >>> shift_offsets(4).shape
    (4, 3)
    >>> bool(np.allclose(shift_offsets(8).mean(0), 0))
    True
    """
    n = int(n)
    if not 1 <= n <= len(_SHIFT_ORDER):
        raise SegmenterError(f"shift-tta must be 1 to {len(_SHIFT_ORDER)} ROI boxes; got {n}")
    o = _SHIFT_ORDER[:n]
    return o - o.mean(0)


#: fewest voxels (of the model grid, 3.375 mm³ each) per side for a box to count as holding
#: the thalami (about 3.4 cm³; a thalamus is 5-8 cm³)
MIN_SIDE_VOXELS = 1000


def _pair_score(prob, spacing: float = 1.5) -> float:
    """How much a box's prediction looks like a thalamus pair: voxels of the smaller side
    times the mean confidence, 0 unless left and right lie side by side (left at lower x,
    12-45 mm apart, within 15 mm in y and z) with plausible sizes."""
    p = prob.numpy() if hasattr(prob, "numpy") else np.asarray(prob)
    m1, m2 = p[1] > 0.5, p[2] > 0.5
    n1, n2 = int(m1.sum()), int(m2.sum())
    if min(n1, n2) < 50:
        return 0.0
    c1, c2 = np.argwhere(m1).mean(0) * spacing, np.argwhere(m2).mean(0) * spacing
    d = c2 - c1
    if not (12 <= d[0] <= 45 and abs(d[1]) <= 15 and abs(d[2]) <= 15):
        return 0.0
    if max(n1, n2) > 3 * min(n1, n2):
        return 0.0
    conf = float(np.concatenate([p[1][m1], p[2][m2]]).mean())
    return min(n1, n2) * conf


def _plausible(center, region) -> bool:
    """Whether a thalamic centre (world mm) lies where the thalami can be in a head region
    (x centre, y centre, top z): 50-100 mm below its top, near its middle."""
    xc, yc, top = region
    return abs(center[0] - xc) <= 20 and abs(center[1] - yc) <= 35 and 50 <= top - center[2] <= 100


@dataclass
class ThalNet:
    """Loaded localiser + region-of-interest networks of the built-in model."""

    roi_net: torch.nn.Module
    loc_net: torch.nn.Module
    meta: dict
    device: torch.device
    tta: bool = True
    #: ``"auto"``: the head-region search only when the localiser's box shows no plausible
    #: thalamus pair; ``"always"``: search every whole-head scan (the earlier behaviour,
    #: kept for comparison)
    search_mode: str = "auto"

    @property
    def roi_shape(self):
        return tuple(self.meta["roi_shape"])

    #: localiser box: the trained one (``"full"``) or the scan's extent plus a margin
    #: (``"fit"``, at most the trained one; fewer voxels through the network)
    loc_box: str = "fit"
    #: what the returned mask's volume is: ``"mask"`` (voxels where a side beats the rest)
    #: or ``"soft"`` (the most probable voxels up to the sum of probabilities)
    volumes: str = "mask"
    #: ROI boxes of the final pass, shifted by half voxels of the ROI grid
    #: (:func:`shift_offsets`); their probabilities are averaged on the input grid
    shift_tta: int = 1
    #: with several boxes and ``tta``: ``"alternate"`` runs every other box mirrored (one
    #: network pass per box), ``"each"`` runs every box plain and mirrored (two per box)
    shift_mirror: str = "alternate"

    def _loc_shape(self, affine, shape) -> tuple:
        full = tuple(int(n) for n in self.meta["loc_shape"])
        if self.loc_box != "fit":
            return full
        spacing = float(self.meta["loc_spacing"])
        m = self.loc_net.multiple
        # world extent of the scan along each axis (any orientation), plus 2 voxels a side
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
        world = np.asarray(affine)[:3, :3] @ corners
        ext = world.max(1) - world.min(1)
        fit = [int(np.ceil((e / spacing + 4) / m) * m) for e in ext]
        return tuple(min(f, n) for f, n in zip(fit, full, strict=True))

    # ---------------------------------------------------------------- steps
    def localise(self, img: torch.Tensor, affine: np.ndarray) -> np.ndarray:
        """World (RAS mm) centre of the thalami, from the 4 mm localiser."""
        spacing = float(self.meta["loc_spacing"])
        shape = self._loc_shape(affine, img.shape)
        fov_center = affine @ np.append((np.asarray(img.shape) - 1) / 2, 1)
        pooled, paff = _pool_to(img, affine, spacing)
        box = box_affine(fov_center[:3], shape, spacing)
        x = normalise(_resample(pooled, paff, box, shape))
        with torch.no_grad():
            prob = self.loc_net(x[None, None].to(self.device)).softmax(1)[0].float().cpu()
        thal = (prob[1] + prob[2]).numpy()
        mask = thal > 0.5
        if mask.sum() < 3:
            mask = thal >= max(thal.max() * 0.5, 1e-6)
        mask = largest_component(mask)
        # both sides: keep everything within 30 mm of the component's centre
        c = np.argwhere(mask).mean(0)
        w = thal * (thal > 0.25)
        ijk = np.indices(thal.shape).reshape(3, -1).T
        near = np.linalg.norm((ijk - c) * spacing, axis=1) < 30
        wv = w.ravel() * near
        if wv.sum() > 0:
            c = (ijk * wv[:, None]).sum(0) / wv.sum()
        return (box @ np.append(c, 1))[:3]

    def predict_roi(self, channels: list[torch.Tensor | None], affine: np.ndarray, center, *,
                    tta: bool | None = None, passes: list | None = None) -> tuple:
        """Probabilities (3, *roi_shape) on the model's box centred at ``center`` (world mm).

        With ``tta`` (default: the model's setting) the left-right mirrored prediction is
        averaged in; ``passes``, when a list, receives (mirrored, probabilities) of each pass."""
        return self.predict_rois(channels, affine, center, np.zeros((1, 3)), tta=tta, passes=passes)[0]

    def predict_rois(self, channels: list[torch.Tensor | None], affine: np.ndarray, center, offsets, *,
                     tta: bool | None = None, passes: list | None = None, mirror: str | None = None) -> list:
        """(probabilities (3, *roi_shape), box vox->world affine) of boxes centred at
        ``center`` (world mm) plus each of ``offsets`` (n, 3) in ROI voxels, all through the
        network as one batch.

        With ``tta`` (default: the model's setting) the left-right mirrored prediction comes
        in: with ``mirror`` ``"each"`` every box runs plain and mirrored (averaged, 2n network
        passes); with ``"alternate"`` (default: the model's ``shift_mirror``) every other box
        runs mirrored instead of plain (n passes; one box alone still runs both). ``passes``,
        when a list, receives (mirrored, probabilities) of each pass."""
        shape = self.roi_shape
        spacing = float(self.meta["roi_spacing"])
        boxes = [box_affine(np.asarray(center, float) + spacing * np.asarray(o, float), shape, spacing)
                 for o in offsets]
        pooled = [None if img is None else _pool_to(img, affine, spacing) for img in channels]
        x = torch.zeros((len(boxes), len(SLOTS), *shape), dtype=torch.float32)
        for b, box in enumerate(boxes):
            for s, pa in enumerate(pooled):
                if pa is not None:
                    x[b, s] = normalise(_resample(pa[0], pa[1], box, shape))
        x = x.to(self.device)
        tta = self.tta if tta is None else tta
        mirror = (mirror or self.shift_mirror) if len(boxes) > 1 else "each"
        if mirror not in ("each", "alternate"):
            raise SegmenterError(f"mirror must be 'each' or 'alternate'; got {mirror!r}")
        n = len(boxes)
        with torch.no_grad():
            if tta and mirror == "each":  # plain and mirrored as one batch (a third faster on CPU)
                both = self.roi_net(torch.cat([x, x.flip(2)])).float().softmax(1).cpu()
                plain, flipped = both[:n], both[n:].flip(2)[:, [0, 2, 1]]
                if passes is not None:
                    passes.extend([(False, p) for p in plain] + [(True, p) for p in flipped])
                prob = 0.5 * (plain + flipped)
            elif tta:  # every other box mirrored: as many passes as boxes
                odd = torch.arange(n) % 2 == 1
                x[odd] = x[odd].flip(2)
                prob = self.roi_net(x).float().softmax(1).cpu()
                prob[odd] = prob[odd].flip(2)[:, [0, 2, 1]]
                if passes is not None:
                    passes.extend((bool(m), p) for m, p in zip(odd, prob, strict=True))
            else:
                prob = self.roi_net(x).float().softmax(1).cpu()
                if passes is not None:
                    passes.extend((False, p) for p in prob)
        return list(zip(prob, boxes, strict=True))

    def head_region(self, img: torch.Tensor, affine: np.ndarray):
        """(x centre, y centre, top z) of the head in world mm from a 4 mm view, or None."""
        spacing = float(self.meta["loc_spacing"])
        shape = tuple(self.meta["loc_shape"])
        fov_center = affine @ np.append((np.asarray(img.shape) - 1) / 2, 1)
        pooled, paff = _pool_to(img, affine, spacing)
        box = box_affine(fov_center[:3], shape, spacing)
        x = normalise(_resample(pooled, paff, box, shape)).numpy()
        head = x > 0.15
        if head.sum() < 100:
            return None
        head = largest_component(head)
        xyz = np.argwhere(head) @ box[:3, :3].T + box[:3, 3]
        top = float(np.percentile(xyz[:, 2], 99.5))
        upper = xyz[xyz[:, 2] > top - 110]
        return float(upper[:, 0].mean()), float(upper[:, 1].mean()), top

    def search(self, tens, affine, region, extra=None, batch: int = 8):
        """Best box centre (world mm) on a grid over the head region where the thalami can
        be, scored by the ROI network's thalamus pair; None if nothing plausible."""
        shape = self.roi_shape
        spacing = float(self.meta["roi_spacing"])
        xc, yc, top = region
        cands = [np.array([xc, yc + dy, top - dz]) for dy in np.arange(-30, 31, 15)
                 for dz in np.arange(50, 101, 12.5)]
        if extra is not None and abs(extra[1] - yc) <= 35 and 45 <= top - extra[2] <= 105:
            cands.insert(0, np.asarray(extra, float))
        # prior on depth below the top of the head (thalamic centre ~75 mm below the vertex)
        prior = [float(np.exp(-0.5 * ((top - c[2] - 75.0) / 20.0) ** 2)) for c in cands]
        pooled = [None if t is None else _pool_to(t, affine, spacing) for t in tens]
        best, best_score = None, 0.3 * MIN_SIDE_VOXELS
        for k in range(0, len(cands), batch):
            xs = []
            for c in cands[k : k + batch]:
                box = box_affine(c, shape, spacing)
                x = torch.zeros((len(SLOTS), *shape), dtype=torch.float32)
                for s, pa in enumerate(pooled):
                    if pa is not None:
                        x[s] = normalise(_resample(pa[0], pa[1], box, shape))
                xs.append(x)
            with torch.no_grad():
                prob = self.roi_net(torch.stack(xs).to(self.device)).float().softmax(1).cpu()
            for j, pr in enumerate(prob):
                sc = _pair_score(pr, spacing) * prior[k + j]
                if sc > best_score:
                    best_score = sc
                    fg = (pr[1] + pr[2]).numpy() > 0.5
                    box = box_affine(cands[k + j], shape, spacing)
                    best = (box @ np.append(np.argwhere(fg).mean(0), 1))[:3]
        return best

    def segment(self, channels: list[np.ndarray | None], affine: np.ndarray, *, return_prob: bool = False):
        """Labels (uint8 0/1/2) and optionally probabilities (2, X, Y, Z) on the input grid.

        Parameters
        ----------
        channels : list of 3 arrays or None
            Images for the slots (T1w, FLAIR, R1), co-registered on one grid; a single
            contrast of any kind goes in the first slot.
        affine : (4, 4) array
            vox->world (RAS mm) affine shared by the channels.
        """
        out = self.predict(channels, affine)
        return (out["labels"], out["prob"]) if return_prob else out["labels"]

    def _inputs(self, channels, affine):
        present = [c for c in channels if c is not None]
        if not present:
            raise ScanError("no image given")
        shape = present[0].shape
        if len(shape) != 3:
            raise ScanError(f"image must be 3D; got shape {shape}")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ScanError(f"affine must be an invertible 4x4 matrix; got {affine.tolist()}")
        tens = []
        for c in channels:
            if c is None:
                tens.append(None)
                continue
            if c.shape != shape:
                raise ScanError(f"channels must share one grid; got shapes {c.shape} and {shape}")
            a = np.nan_to_num(np.asarray(c, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            tens.append(torch.from_numpy(np.ascontiguousarray(a)))
        ref = next(t for t in tens if t is not None)
        if float(ref.max()) == float(ref.min()):
            raise ScanError("image is constant (empty or blank scan)")
        return tens, ref, affine, shape

    def find_center(self, tens, ref, affine, shape):
        """World centre (mm) of the box for the final pass: the localiser's answer, checked
        (and recentred) by one pass of the ROI network; the search over the head region
        only when that pass does not show a plausible thalamus pair."""
        spacing = float(self.meta["roi_spacing"])
        extent = np.sqrt((affine[:3, :3] ** 2).sum(0)) * np.asarray(shape)
        if extent.min() < 110:
            # a small field of view (already around the deep grey matter): start at its centre
            center = (affine @ np.append((np.asarray(shape) - 1) / 2, 1))[:3]
        else:
            center = self.localise(ref, affine)
        always = self.search_mode == "always"
        prob, box = (None, None) if always else self.predict_roi(tens, affine, center, tta=False)
        region = self.head_region(ref, affine) if extent.min() >= 110 else None
        if region is not None and (always or _pair_score(prob, spacing) < MIN_SIDE_VOXELS
                                   or not _plausible(self._recentre(prob, box, center), region)):
            # the localiser missed (or found a thalamus-like pair elsewhere): search the ROI
            # network over the region where the thalami can be (50-100 mm below the top of
            # the head, near its middle), the localiser's answer included when it falls there
            if region is not None:
                self._searched = True
                best = self.search(tens, affine, region, extra=center)
                if best is not None:
                    return best
        if prob is None:
            prob, box = self.predict_roi(tens, affine, center, tta=False)
        return self._recentre(prob, box, center)

    @staticmethod
    def _recentre(prob, box, center):
        """Centre (world mm) of the thalami predicted in a box, or ``center`` if none."""
        fg = (prob[1] + prob[2]).numpy() > 0.5
        if fg.sum() > 50:
            return (box @ np.append(np.argwhere(fg).mean(0), 1))[:3]
        return np.asarray(center, float)

    def predict(self, channels: list[np.ndarray | None], affine: np.ndarray) -> dict:
        """Segment one scan: a dict with ``labels`` (uint8 0/1/2, input grid), ``prob``
        (left/right probabilities (2, X, Y, Z), input grid), ``volume_mm3`` (left, right; of
        the labels), ``soft_volume_mm3`` (sum of probabilities times voxel volume),
        ``volume_sd`` (left, right uncertainty in mm³, one SD), ``center`` (world mm) and
        ``searched`` (whether the head-region search ran).

        With ``shift_tta`` > 1 the final pass runs in that many boxes shifted by half voxels
        of the ROI grid, every other one mirrored (``shift_mirror``), whose probabilities are
        averaged on the input grid (what makes the volume depend less on where the head lies
        against the 1.5 mm grid).

        ``volume_sd`` combines the disagreement of the plain and the left-right mirrored passes
        (half the difference of their mean soft volumes) with the gap between the soft and the
        hard volume (how much of the thalamus lies in voxels of intermediate probability), in
        quadrature; both grow when the boundary is hard to see.
        """
        tens, ref, affine, shape = self._inputs(channels, affine)
        self._searched = False
        center = self.find_center(tens, ref, affine, shape)
        passes = []
        rois = self.predict_rois(tens, affine, center, shift_offsets(self.shift_tta), passes=passes)
        labels, full = self._to_input_grid(rois, affine, shape, True)
        voxel = float(abs(np.linalg.det(affine[:3, :3])))
        box_voxel = float(self.meta["roi_spacing"]) ** 3
        hard = np.array([np.count_nonzero(labels == s) for s in (1, 2)], float) * voxel
        soft = full.reshape(2, -1).sum(1).astype(float) * voxel
        # the uncertainty looks at the mask where a side beats the rest, whatever is returned
        mask = self._mask_voxels * voxel if self.volumes == "soft" else hard
        pv = np.array([[float(p[s].sum()) * box_voxel for s in (1, 2)] for _, p in passes])
        mirrored = np.array([m for m, _ in passes], bool)
        tta_sd = (0.5 * np.abs(pv[~mirrored].mean(0) - pv[mirrored].mean(0))
                  if mirrored.any() and (~mirrored).any() else np.zeros(2))
        sd = np.sqrt(tta_sd**2 + (soft - mask) ** 2)
        return dict(labels=labels, prob=full, volume_mm3=hard, soft_volume_mm3=soft, volume_sd=sd,
                    center=np.asarray(center, float), searched=self._searched)

    def _to_input_grid(self, rois, affine, shape, return_prob):
        """Labels (and probabilities) on the input grid from ``rois``, a list of
        (probabilities, box affine): each box's probabilities resampled onto the input voxels
        the boxes cover, averaged, then turned into labels."""
        roi_shape = rois[0][0].shape[1:]
        self._mask_voxels = np.zeros(2)  # voxels per side of the plain mask (before "soft")
        # input voxels that the boxes cover: map the box corners into input voxel space
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in roi_shape], indexing="ij")).reshape(3, -1)
        corners = np.vstack([corners, np.ones(corners.shape[1])])
        inv = np.linalg.inv(affine)
        vox = np.hstack([inv @ box @ corners for _, box in rois])
        lo = np.maximum(np.floor(vox[:3].min(1)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(vox[:3].max(1)).astype(int) + 2, np.asarray(shape))
        labels = np.zeros(shape, dtype=np.uint8)
        full_prob = np.zeros((2, *shape), dtype=np.float32) if return_prob else None
        if np.any(hi <= lo):
            return (labels, full_prob) if return_prob else labels
        sub_shape = tuple(int(v) for v in hi - lo)
        sub_aff = affine.copy()
        sub_aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        p = None
        for prob, box in rois:
            grid = affine_grid(sub_shape, sub_aff, np.linalg.inv(box), roi_shape)
            one = F.grid_sample(prob[None, 1:], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0]
            p = one if p is None else p + one
        p = (p / len(rois)).numpy()
        out = labels_from_prob(p)
        if self.volumes == "soft":  # the mask holds as many voxels as the probabilities sum to
            self._mask_voxels = np.array([np.count_nonzero(out == s) for s in (1, 2)], float)
            out = labels_of_volume(p, p.reshape(2, -1).sum(1))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=False))
        labels[sl] = out
        if return_prob:
            full_prob[(slice(None),) + sl] = np.clip(p, 0, 1)
            return labels, full_prob
        return labels


def load_thalnet(device="auto", *, path=None, check_hash: bool = True, tta: bool = True,
                 shift_tta: int | None = None) -> ThalNet:
    """Load the shipped ``thalnet`` weights, or those at ``path`` (e.g. from ``thaldask train``).

    ``shift_tta``: shifted ROI boxes of the final pass (default: ``thaldask.thalnet.shift-tta``).

    With ``check_hash`` the weights' SHA-256 must match their model card: the shipped card,
    or a ``thalnet.json`` beside ``path`` (``thaldask model-card``); weights without a card
    beside them load unchecked.

    Raises
    ------
    ModelWeightsError
        weights missing or their hash differs from the model card's.
    """
    device = resolve_device(device)
    path = Path(path) if path is not None else weights_path("thalnet")
    if not path.exists():
        raise ModelWeightsError(f"{path}: model weights missing; reinstall thaldask or run 'thaldask train'")
    card_path = card_beside(path)
    shipped = path.parent == models_dir()
    if check_hash and (shipped or card_path.exists()):
        # the shipped weights always have their card; weights of your own are checked when
        # a card written by ``thaldask model-card`` sits beside them
        card = model_card("thalnet") if shipped else json.loads(card_path.read_text())
        expected = card.get("sha256")
        got = sha256(path)
        if expected != got:
            raise ModelWeightsError(
                f"{path}: SHA-256 {got[:12]}… does not match the model card's {str(expected)[:12]}…"
            )
    try:
        w = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a weights problem
        raise ModelWeightsError(f"{path}: cannot read model weights ({exc})") from None
    roi = build_network(w["roi_config"])
    roi.load_state_dict({k: v.float() for k, v in w["roi"].items()})
    loc = build_network(w["loc_config"])
    loc.load_state_dict({k: v.float() for k, v in w["loc"].items()})
    roi.eval().to(device)
    loc.eval().to(device)
    if shift_tta is None:
        shift_tta = config.get("thalnet.shift-tta")
    shift_offsets(shift_tta)  # a bad count fails here, not at the first scan
    return ThalNet(roi, loc, w["meta"], device, tta=tta, shift_tta=int(shift_tta))
