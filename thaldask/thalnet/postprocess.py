"""From left/right probabilities to labels: one connected component per side (no torch).

Shared by the model's own resampling back to the input grid and by probability-averaging
ensembles of any segmenter, so that both turn probabilities into labels the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["largest_component", "labels_from_prob", "labels_of_volume"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the mask itself if it has at most
    one).

    >>> m = np.zeros(7, bool); m[[0, 1, 2, 5]] = True
    >>> largest_component(m).nonzero()[0].tolist()
    [0, 1, 2]
    """
    from scipy import ndimage  # scipy loads on first use: importing the runtime stays light

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def labels_from_prob(prob: np.ndarray) -> np.ndarray:
    """Left/right probabilities (2, X, Y, Z) -> uint8 labels 0/1/2, one component per side.

    A voxel is left (1) where the left probability beats both background (1 - left - right)
    and right (ties to left), right (2) where the right one beats both; then only the largest
    component of each side is kept.
    """
    p = np.asarray(prob, dtype=np.float32)
    bg = 1.0 - p.sum(0)
    lab = np.zeros(p.shape[1:], dtype=np.uint8)
    lab[(p[0] > bg) & (p[0] >= p[1])] = 1
    lab[(p[1] > bg) & (p[1] > p[0])] = 2
    out = np.zeros_like(lab)
    for side in (1, 2):
        m = lab == side
        if m.any():
            out[largest_component(m)] = side
    return out


def labels_of_volume(prob: np.ndarray, voxels) -> np.ndarray:
    """Like :func:`labels_from_prob`, but each side keeps the ``voxels[side]`` most probable
    voxels where it beats the other side (then its largest component): a mask whose volume
    is the given one, e.g. the soft volume (sum of probabilities).

    >>> p = np.zeros((2, 6, 1, 1), np.float32); p[0, :, 0, 0] = [0.9, 0.8, 0.6, 0.4, 0.2, 0.0]
    >>> labels_of_volume(p, (2.0, 0.0))[:, 0, 0].tolist()
    [1, 1, 0, 0, 0, 0]
    """
    p = np.asarray(prob, dtype=np.float32)
    out = np.zeros(p.shape[1:], dtype=np.uint8)
    for k, side in ((0, 1), (1, 2)):
        n = int(round(float(voxels[k])))
        own = p[k] >= p[1 - k] if k == 0 else p[k] > p[1 - k]
        score = np.where(own & (p[k] > 0), p[k], -1.0).ravel()
        n = min(n, int((score > 0).sum()))
        if n <= 0:
            continue
        top = np.argpartition(-score, n - 1)[:n]
        m = np.zeros(score.size, bool)
        m[top] = True
        out[largest_component(m.reshape(out.shape))] = side
    return out
