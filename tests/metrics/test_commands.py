"""``thaldask compare`` and ``thaldask evaluate`` on real files and a real store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.files import write_nifti

from thaldask.cli import main
from thaldask.metrics.compare import compare_files
from thaldask.metrics.kernels import compute_pair_metrics


def _pair():
    g = np.zeros((20, 22, 18), np.uint8)
    g[4:9, 5:12, 5:11] = 1
    g[10:15, 5:12, 5:11] = 2
    p = np.roll(g, 1, axis=1)
    return g, p


def test_compare_freesurfer_vs_binary_labels_detected_total_only(tmp_path):
    g, p = _pair()
    aff = np.diag([1.0, 1.2, 2.0, 1.0])
    fs = np.where(g == 1, 10, np.where(g == 2, 49, 0)).astype(np.int16)
    fs[0, 0, 0] = 0
    gt = write_nifti(tmp_path / "gt.nii.gz", fs, aff)
    pred = write_nifti(tmp_path / "pred.nii.gz", (p > 0).astype(np.uint8), aff)
    res = compare_files(gt, pred)
    assert res["gt_labels"] == "freesurfer" and res["pred_labels"] == "binary"
    exp = compute_pair_metrics((g > 0).astype(np.uint8), (p > 0).astype(np.uint8), (1.0, 1.2, 2.0))
    assert res["metrics"]["total"]["dice"] == pytest.approx(exp["left"]["dice"])
    assert res["metrics"]["total"]["hd95_mm"] == pytest.approx(exp["left"]["hd95_mm"])
    assert res["metrics"]["left"]["dice"] is None  # binary: sides undefined
    assert not res["resampled"]


def test_compare_cli_json_flipped_grid_resampled_equals_same_grid(tmp_path):
    g, p = _pair()
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    gt = write_nifti(tmp_path / "gt.nii.gz", g, aff)
    # same voxels stored with the first axis flipped (LAS): reorientation, not resampling
    flip = aff.copy()
    flip[0, 0] = -1
    flip[0, 3] = g.shape[0] - 1
    pred_las = write_nifti(tmp_path / "pred_las.nii.gz", p[::-1].copy(), flip)
    out = CliRunner().invoke(main, ["compare", "--gt", gt, "--pred", pred_las, "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    exp = compute_pair_metrics(g, p)
    assert res["metrics"]["left"]["dice"] == pytest.approx(exp["left"]["dice"])
    assert res["pred_labels"] == "L:1;R:2" and res["resampled"] is False
    # a prediction on a shifted grid (half the FOV) is resampled onto the GT grid
    shift = aff.copy()
    shift[1, 3] = 3.0
    pred_shift = write_nifti(tmp_path / "pred_shift.nii.gz", np.roll(p, -3, axis=1), shift)
    res2 = compare_files(gt, pred_shift)
    assert res2["resampled"] is True
    assert res2["metrics"]["left"]["dice"] == pytest.approx(exp["left"]["dice"])


def test_compare_cli_ambiguous_labels_one_line_error(tmp_path):
    g, _ = _pair()
    aff = np.eye(4)
    gt = write_nifti(tmp_path / "gt.nii.gz", g, aff)
    odd = write_nifti(tmp_path / "odd.nii.gz", (g * 3).astype(np.uint8), aff)
    out = CliRunner().invoke(main, ["compare", "--gt", gt, "--pred", odd])
    assert out.exit_code == 2
    assert "odd.nii.gz" in out.output and "--pred-labels" in out.output
    ok = CliRunner().invoke(main, ["compare", "--gt", gt, "--pred", odd, "--pred-labels", "L:3;R:6"])
    assert ok.exit_code == 0 and "total" in ok.output


def test_evaluate_cli_existing_scheduler_writes_results(small_store, tmp_path):
    from distributed import LocalCluster

    st, _ = small_store
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        addr = cluster.scheduler_address
        out = CliRunner().invoke(main, ["evaluate", st.path, "--no-progress", "--scheduler", addr])
        bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nowhere.zarr"), "--no-progress", "--scheduler", addr])
    assert out.exit_code == 0, out.output
    assert "32 rows computed" in out.output
    assert os.path.exists(os.path.join(st.path, "metrics.csv"))  # inside the store
    assert not (tmp_path / "metrics.csv").exists()
    assert bad.exit_code == 2 and "nowhere.zarr" in bad.output
