"""Agreement of each mask with the other methods on its scan (consensus Dice)."""

from __future__ import annotations

import numpy as np
import pytest

from thaldask.metrics.consensus import consensus_dice
from thaldask.metrics.evaluate import evaluate
from thaldask.store import open_store
from thaldask.store.cohort_store import write_derived_rows
from thaldask.store.format import consensus_array
from thaldask.testing import make_store


def _dice(a, b):
    """Plain Dice of two boolean masks (NaN when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return np.nan if s == 0 else 2.0 * int((a & b).sum()) / s


def _reference(masks):
    """Median over the others of per-side Dice, written out the long way."""
    out = np.full((len(masks), 3), np.nan)
    for i, a in enumerate(masks):
        if a is None:
            continue
        rows = []
        for j, b in enumerate(masks):
            if j == i or b is None:
                continue
            rows.append([_dice(a == 1, b == 1), _dice(a == 2, b == 2), _dice(a > 0, b > 0)])
        if rows:
            with np.errstate(all="ignore"):
                out[i] = np.nanmedian(np.array(rows, float), axis=0) if np.isfinite(rows).any() else np.nan
    return out


def test_consensus_hand_case():
    # two cubes of 8 voxels per side; the third mask is shifted by one voxel along x
    a = np.zeros((6, 4, 4), np.uint8)
    a[0:2, :2, :2] = 1
    a[3:5, :2, :2] = 2
    b = np.roll(a, 1, axis=0)
    got = consensus_dice([a, a.copy(), b])
    # a vs a: 1; a vs b: each cube overlaps half (4 of 8 voxels) -> Dice 0.5 per side;
    # total: a's 16 voxels vs b's 16, overlap 8 -> 0.5
    np.testing.assert_allclose(got[0], [0.75, 0.75, 0.75])  # median of {1, 0.5}
    np.testing.assert_allclose(got[2], [0.5, 0.5, 0.5])
    # a scan without other masks has no consensus
    assert np.isnan(consensus_dice([a, None])).all()


def test_consensus_matches_long_hand_reference():
    rng = np.random.default_rng(3)
    masks = [rng.integers(0, 3, size=(7, 6, 5)).astype(np.uint8) for _ in range(4)]
    masks[1] = np.zeros_like(masks[1])  # an empty mask
    masks.append(None)
    np.testing.assert_allclose(consensus_dice(masks), _reference(masks), equal_nan=True)


@pytest.fixture()
def store(tmp_path):
    st, truth = make_store(tmp_path / "s.zarr", n_subjects=3, images=())
    return st, truth


def test_evaluate_consensus_finds_swapped_sides_without_ground_truth(store):
    st, truth = store
    # method a's FLAIR mask of scan 3 has its sides swapped
    bad = truth[("a", "FLAIR", 3)]
    swapped = np.where(bad == 1, 2, np.where(bad == 2, 1, 0)).astype(np.uint8)
    st.write_mask("a", "FLAIR", 3, swapped, overwrite=True)
    ds = evaluate(st.path, progress=False, csv_path="")
    cd = ds["consensus_dice"]
    sub, tp = str(st.scans.subject[3]), str(st.scans.timepoint[3])
    at = cd.sel({"subject": sub, "timepoint": tp, "method": "a", "contrast": "FLAIR"})
    assert float(at.sel(side="left")) < 0.2 and float(at.sel(side="right")) < 0.2
    assert float(at.sel(side="total")) > 0.6
    # every other mask of that scan agrees with the others side by side
    ok = cd.sel({"subject": sub, "timepoint": tp, "method": "a", "contrast": "T1w", "side": "left"})
    assert float(ok) > 0.4  # the test masks are small and shifted: typical Dice 0.5-0.7
    # independent reference per scan: the stored masks, compared long-hand
    st2 = open_store(st.path)
    preds = [(m, c) for m, c in st2.methods if m != "gt"]
    for i in range(st2.n_scans):
        masks = [st2.load_mask(m, c, i) if st2.has_mask(m, c)[i] else None for m, c in preds]
        ref = _reference(masks)
        s, t = str(st2.scans.subject[i]), str(st2.scans.timepoint[i])
        for k, (m, c) in enumerate(preds):
            if masks[k] is None:
                continue
            got = cd.sel({"subject": s, "timepoint": t, "method": m, "contrast": c}).values
            np.testing.assert_allclose(got, ref[k], equal_nan=True, atol=1e-12)
    # in the tidy table too
    assert "consensus_dice" in st2.open_results().data_vars


def test_consensus_rows_are_reused_and_recomputed_only_for_changed_scans(store):
    st, truth = store
    evaluate(st.path, progress=False, csv_path="")
    sentinel = np.full((len([m for m in st.methods if m[0] != "gt"]), 3), 0.123)
    # a cached row with an up-to-date token is read back, not recomputed
    write_derived_rows(st.path, consensus_array("raw"), {0: sentinel, 4: sentinel})
    st.write_mask("b", "T1w", 4, np.roll(truth[("b", "T1w", 4)], 3, axis=0), overwrite=True)
    ds = evaluate(st.path, progress=False, csv_path="")
    cd = ds["consensus_dice"]
    s0, t0 = str(st.scans.subject[0]), str(st.scans.timepoint[0])
    s4, t4 = str(st.scans.subject[4]), str(st.scans.timepoint[4])
    assert float(cd.sel({"subject": s0, "timepoint": t0, "method": "a", "contrast": "T1w", "side": "left"})) == pytest.approx(0.123)
    # scan 4 changed: recomputed from its masks
    assert float(cd.sel({"subject": s4, "timepoint": t4, "method": "a", "contrast": "T1w", "side": "left"})) != pytest.approx(0.123)
