import numpy as np
import pytest

from thaldask.errors import SegmenterError
from thaldask.segment.ensemble import ensemble_average, ensemble_vote, labels_from_prob


def test_ensemble_vote_three_members_majority_wins():
    a = np.array([[[0, 1, 2, 1]]], dtype=np.uint8)
    b = np.array([[[1, 1, 2, 2]]], dtype=np.uint8)
    c = np.array([[[0, 2, 0, 2]]], dtype=np.uint8)  # voxel 2: two of three say right
    assert ensemble_vote([a, b, c]).tolist() == [[[0, 1, 2, 2]]]


def test_ensemble_vote_two_members_is_agreement():
    a = np.array([[[1, 1, 2, 0]]], dtype=np.uint8)
    b = np.array([[[1, 0, 2, 2]]], dtype=np.uint8)
    assert ensemble_vote([a, b]).tolist() == [[[1, 0, 2, 0]]]


def test_ensemble_average_mean_probability_decides():
    p1 = np.zeros((2, 1, 1, 3), np.float32)
    p2 = np.zeros((2, 1, 1, 3), np.float32)
    p1[0, 0, 0] = [0.9, 0.2, 0.0]
    p2[0, 0, 0] = [0.7, 0.6, 0.0]
    p1[1, 0, 0, 2] = 0.8
    p2[1, 0, 0, 2] = 0.4
    lab, mean = ensemble_average([p1, p2])
    assert np.allclose(mean[0, 0, 0], [0.8, 0.4, 0.0])
    assert lab.tolist() == [[[1, 0, 2]]]


def test_labels_from_prob_keeps_one_component_per_side():
    p = np.zeros((2, 9, 1, 1), np.float32)
    p[0, [0, 1, 2, 6], 0, 0] = 0.9  # left: a 3-voxel run and an isolated voxel
    lab = labels_from_prob(p)
    assert lab[:, 0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_ensemble_vote_no_members_raises():
    with pytest.raises(SegmenterError):
        ensemble_vote([])
