"""Compact 3D U-Nets used by the built-in ``thalnet`` models.

Two networks make one model: a small localiser that sees the whole head at 4 mm and finds the
thalami, and a region-of-interest network that labels a 1 mm box around them (0 background,
1 left thalamus, 2 right thalamus). Both are the same fully convolutional :class:`UNet3D`,
so the region-of-interest network accepts any box whose sides are multiples of
``2 ** (levels - 1)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet3D", "build_network"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(cout, affine=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class UNet3D(nn.Module):
    """A 3D U-Net with ``levels`` resolutions and ``base * 2**level`` channels (capped).

    Parameters
    ----------
    in_channels : int
        Image channels (1 for a single contrast).
    n_classes : int
        Output classes; logits of shape (batch, n_classes, x, y, z).
    base : int
        Channels at full resolution.
    levels : int
        Number of resolutions; input sides must be multiples of ``2 ** (levels - 1)``.
    max_channels : int
        Cap on channels at the coarsest levels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 3,
        base: int = 16,
        levels: int = 4,
        max_channels: int = 128,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            n_classes=n_classes,
            base=base,
            levels=levels,
            max_channels=max_channels,
        )
        chans = [min(base * 2**i, max_channels) for i in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_Block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            self.upconv.append(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2))
            self.up.append(_Block(2 * chans[i], chans[i]))
        self.head = nn.Conv3d(chans[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (self.config["levels"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        for upconv, block in zip(self.upconv, self.up, strict=False):
            x = upconv(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def build_network(config: dict) -> UNet3D:
    """Build a :class:`UNet3D` from the ``config`` dict stored with its weights."""
    return UNet3D(**config)
