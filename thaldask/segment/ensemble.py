"""Ensembles of one segmenter's outputs on several contrasts of the same scan.

Probability averaging (:func:`ensemble_average`) turns the mean left/right probabilities into
labels with the rule the built-in model uses on its own output
(:func:`~thaldask.thalnet.postprocess.labels_from_prob`); majority vote
(:func:`ensemble_vote`) works on labels alone, so it serves segmenters without
probabilities too.
"""

from __future__ import annotations

import numpy as np

from thaldask.errors import SegmenterError
from thaldask.thalnet.postprocess import labels_from_prob

__all__ = ["ensemble_average", "ensemble_vote", "labels_from_prob"]


def ensemble_average(probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Probability averaging: mean of (2, X, Y, Z) probabilities -> (labels, mean prob)."""
    if not probs:
        raise SegmenterError("ensemble of no members")
    mean = np.mean(np.stack([np.asarray(p, dtype=np.float32) for p in probs]), axis=0)
    return labels_from_prob(mean), mean


def ensemble_vote(labels: list[np.ndarray]) -> np.ndarray:
    """Majority vote of 0/1/2 label maps: a side wins a voxel with more than half the votes.

    With two members this is their agreement (intersection per side).

    >>> a, b, c = np.array([1, 1, 2]), np.array([1, 2, 2]), np.array([0, 2, 2])
    >>> ensemble_vote([a, b, c]).tolist()
    [1, 2, 2]
    """
    if not labels:
        raise SegmenterError("ensemble of no members")
    stack = np.stack([np.asarray(lab, dtype=np.uint8) for lab in labels])
    n = stack.shape[0]
    out = np.zeros(stack.shape[1:], dtype=np.uint8)
    for side in (1, 2):
        out[(stack == side).sum(0) * 2 > n] = side
    return out
