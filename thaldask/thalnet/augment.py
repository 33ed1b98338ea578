"""Domain-randomised training images from label maps (the SynthSeg idea), in torch.

A label map is deformed (random affine + smooth non-linear field), each label gets a random
Gaussian intensity (or, part of the time, a randomly jittered T1w-, FLAIR- or R1-like tissue
prior), then the image is degraded: bias field, gamma, blur, thick slices, noise. No contrast
is special. Everything here works on one region: a box of ``shape`` voxels of ``spacing`` mm
centred at a point of a label volume. Images are scaled to [0, 1] by the same
:func:`~thaldask.thalnet.inference.normalise` that inference applies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from thaldask.thalnet.inference import normalise

__all__ = [
    "BRAIN_LABELS",
    "TISSUE_PRIORS",
    "LabelBank",
    "blur",
    "render_image",
    "rotation",
    "sample_geometry",
    "sample_labels",
    "tissue_classes",
]

# FreeSurfer label -> tissue class used by the contrast priors.
_CLASS_OF = {}
for _lab in (2, 41, 7, 46, 16, 28, 60, 85):
    _CLASS_OF[_lab] = "wm"
for _lab in (3, 42, 8, 47, 17, 53, 18, 54, 26, 58):
    _CLASS_OF[_lab] = "gm"
for _lab in (4, 43, 5, 44, 14, 15, 24, 72):
    _CLASS_OF[_lab] = "csf"
_CLASS_OF.update({10: "thal", 49: "thal", 11: "caud", 50: "caud", 12: "put", 51: "put", 13: "pal", 52: "pal"})
BRAIN_LABELS = frozenset(_CLASS_OF) | {0}

# Mean intensity per tissue class (0..1) for the three contrast families; the thalamus sits
# between grey and white matter in all of them, which is what makes its boundary hard.
TISSUE_PRIORS = {
    "T1w": dict(wm=0.80, gm=0.50, csf=0.15, thal=0.66, caud=0.55, put=0.60, pal=0.72, bg=0.02),
    "FLAIR": dict(wm=0.45, gm=0.62, csf=0.06, thal=0.52, caud=0.58, put=0.55, pal=0.45, bg=0.02),
    "R1": dict(wm=0.78, gm=0.48, csf=0.20, thal=0.64, caud=0.50, put=0.56, pal=0.76, bg=0.03),
}
CONTRASTS = tuple(TISSUE_PRIORS)


def tissue_classes(label_values) -> list[str | None]:
    """Tissue class of each FreeSurfer label value (None: extra-cerebral / unknown)."""
    return [("bg" if int(v) == 0 else _CLASS_OF.get(int(v))) for v in label_values]


class LabelBank:
    """Label values shared by all maps, as consecutive indices (uint8).

    Parameters
    ----------
    values : sequence of int
        FreeSurfer label values; index 0 must be background (value 0).
    """

    def __init__(self, values):
        values = sorted({int(v) for v in values} | {0})
        if len(values) > 255:
            raise ValueError(f"too many labels ({len(values)}); at most 255 are supported")
        self.values = np.asarray(values, dtype=np.int32)
        self.classes = tissue_classes(values)
        self.left = values.index(10) if 10 in values else -1
        self.right = values.index(49) if 49 in values else -1
        extra = [i for i, v in enumerate(values) if v not in BRAIN_LABELS]
        self.extra = torch.as_tensor(extra, dtype=torch.long)
        lut = np.zeros(int(self.values.max()) + 1, dtype=np.uint8)
        lut[self.values] = np.arange(len(values), dtype=np.uint8)
        self._lut = lut

    def __len__(self) -> int:
        return len(self.values)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """FreeSurfer label values -> uint8 indices (unknown values become background)."""
        labels = np.asarray(labels).astype(np.int64)
        out = np.zeros(labels.shape, dtype=np.uint8)
        ok = (labels >= 0) & (labels < len(self._lut))
        out[ok] = self._lut[labels[ok]]
        return out

    def sides(self, idx: torch.Tensor) -> torch.Tensor:
        """Index volume -> 0 background / 1 left thalamus / 2 right thalamus (int64)."""
        out = torch.zeros_like(idx, dtype=torch.long)
        out[idx == self.left] = 1
        out[idx == self.right] = 2
        return out


def rotation(angles) -> torch.Tensor:
    """3x3 rotation matrix (float32) about x, then y, then z by ``angles`` in radians."""
    ax, ay, az = angles
    cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az))
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float32)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float32)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float32)
    return rz @ ry @ rx


def sample_geometry(
    gen: torch.Generator,
    *,
    max_rotation_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_shear: float = 0.05,
    max_elastic_mm: float = 2.5,
    elastic_grid: int = 5,
    max_shift_mm: float = 6.0,
) -> dict:
    """Random affine (3x3 on mm), shift (mm) and a coarse displacement field (mm)."""

    def u(lo, hi, n=None):
        size = (n,) if n else (1,)
        r = lo + (hi - lo) * torch.rand(size, generator=gen)
        return r if n else float(r)

    angles = [math.radians(a) for a in u(-max_rotation_deg, max_rotation_deg, 3).tolist()]
    scale = u(*scale_range) * torch.exp(u(-0.05, 0.05, 3))
    shear = torch.eye(3) + (torch.rand(3, 3, generator=gen) * 2 - 1) * max_shear * (1 - torch.eye(3))
    matrix = rotation(angles) @ torch.diag(scale) @ shear
    elastic = torch.randn(1, 3, elastic_grid, elastic_grid, elastic_grid, generator=gen)
    elastic = elastic * u(0.0, max_elastic_mm)
    shift = u(-max_shift_mm, max_shift_mm, 3)
    return dict(matrix=matrix, elastic=elastic, shift=shift)


def sample_labels(
    volume: torch.Tensor,
    src_spacing: float,
    center_vox,
    shape,
    spacing,
    geometry: dict | None = None,
) -> torch.Tensor:
    """Resample an index volume (X, Y, Z) onto a deformed box (nearest neighbour).

    Parameters
    ----------
    volume : torch.Tensor
        uint8 index volume, shape (X, Y, Z), isotropic voxels of ``src_spacing`` mm.
    center_vox : sequence of 3 float
        Box centre in voxel coordinates of ``volume``.
    shape : tuple of 3 int
        Output box in voxels; ``spacing`` its voxel size in mm (float or 3 floats).

    Returns
    -------
    torch.Tensor
        uint8 index volume of ``shape``.
    """
    spacing = torch.as_tensor(np.broadcast_to(np.asarray(spacing, dtype=np.float32), (3,)).copy())
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * spacing[i] for i, n in enumerate(shape)]
    mm = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (X, Y, Z, 3) in mm
    if geometry is not None:
        mm = mm @ geometry["matrix"].T + geometry["shift"]
        disp = F.interpolate(geometry["elastic"], size=tuple(shape), mode="trilinear", align_corners=True)
        mm = mm + disp[0].permute(1, 2, 3, 0)
    vox = mm / src_spacing + torch.as_tensor(center_vox, dtype=torch.float32)
    size = torch.tensor(volume.shape, dtype=torch.float32)
    norm = 2 * vox / (size - 1) - 1
    grid = norm.flip(-1)[None]  # grid_sample wants (z, y, x) order for (X, Y, Z) input
    out = F.grid_sample(
        volume[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )
    return out[0, 0].round().to(torch.uint8)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return k / k.sum()


def blur(img: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of a (X, Y, Z) tensor; sigmas in voxels (0 = none)."""
    x = img[None, None]
    for axis, s in enumerate(sigmas):
        if s < 0.2:
            continue
        k = _gauss_kernel(float(s))
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = k.numel() // 2
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x[0, 0]


def render_image(
    idx: torch.Tensor,
    bank: LabelBank,
    gen: torch.Generator,
    *,
    spacing: float = 1.0,
    contrast: str | None = None,
    prior_prob: float = 0.4,
    skull_strip_prob: float = 0.25,
    degrade: bool = True,
    supersample: int = 1,
) -> torch.Tensor:
    """Random-contrast image (X, Y, Z) float32 in [0, 1] from an index volume.

    Parameters
    ----------
    idx : torch.Tensor
        uint8 label indices from :class:`LabelBank`.
    contrast : str, optional
        Force a tissue prior (``"T1w"``, ``"FLAIR"``, ``"R1"``); None draws a fully random
        Gaussian mixture with probability ``1 - prior_prob``, else a random prior.
    spacing : float
        Voxel size in mm of ``idx`` (scales blur and slice thickness).
    degrade : bool
        Apply bias field, gamma, blur, thick slices and noise.
    supersample : int
        ``idx`` is ``supersample`` times finer than the output along each axis: intensities
        are drawn there and averaged over each output voxel (partial volume), then degraded
        on the output grid of ``spacing`` mm.
    """

    def u(lo, hi):
        return float(lo + (hi - lo) * torch.rand(1, generator=gen))

    k = len(bank)
    if contrast is None and u(0, 1) < prior_prob:
        contrast = CONTRASTS[int(torch.randint(len(CONTRASTS), (1,), generator=gen))]
    if contrast is not None:
        prior = TISSUE_PRIORS[contrast]
        means = torch.rand(k, generator=gen)  # extra-cerebral tissue: anything
        for i, c in enumerate(bank.classes):
            if c is not None:
                means[i] = prior[c]
        means = means + torch.randn(k, generator=gen) * u(0.0, 0.05)
        stds = torch.rand(k, generator=gen) * u(0.005, 0.05)
    else:
        means = torch.rand(k, generator=gen)
        stds = torch.rand(k, generator=gen) * 0.1
    if u(0, 1) < skull_strip_prob and bank.extra.numel():
        means[bank.extra] = float(means[0])
        stds[bank.extra] = float(stds[0])
    li = idx.long()
    img = means[li] + stds[li] * torch.randn(idx.shape, generator=gen)
    if supersample > 1:
        img = F.avg_pool3d(img[None, None], supersample)[0, 0]
    if degrade:
        shape = tuple(img.shape)
        # blur (partial volume / scanner PSF), in voxels of this grid
        sig = [u(0.0, 0.6) / spacing for _ in range(3)]
        if u(0, 1) < 0.5:  # thick slices along one axis
            axis = int(torch.randint(3, (1,), generator=gen))
            thick = u(1.2, 3.5)
            sig[axis] = 0.42 * thick / spacing
            img = blur(img, sig)
            small = list(shape)
            small[axis] = max(4, int(round(shape[axis] * spacing / thick)))
            img = F.interpolate(img[None, None], size=small, mode="trilinear", align_corners=True)
            img = F.interpolate(img, size=shape, mode="trilinear", align_corners=True)[0, 0]
        else:
            img = blur(img, sig)
        # bias field
        field = torch.randn(1, 1, 4, 4, 4, generator=gen) * u(0.0, 0.3)
        img = img * torch.exp(F.interpolate(field, size=shape, mode="trilinear", align_corners=True)[0, 0])
        img = img.clamp_min(0)
        # gamma
        img = normalise(img, 0.0, 1.0) ** math.exp(0.25 * float(torch.randn(1, generator=gen)))
        # noise
        img = img + torch.randn(shape, generator=gen) * u(0.0, 0.05)
    return normalise(img)
