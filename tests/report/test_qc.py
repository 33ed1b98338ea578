"""Visual QC: case selection, montages from arrays and from a real cohort store."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.report import make_report_results, make_scan
from PIL import Image

from thaldask.errors import ScanError
from thaldask.report.qc import plot_scan_qc, select_qc_cases, slice_centre


def test_select_qc_cases_dice_order_best_median_worst():
    ds = make_report_results()
    cases = select_qc_cases(ds, "mindglide-sim", "T1w", n_random=2, rng=0)
    dice = ds["dice"].sel({"method": "mindglide-sim", "contrast": "T1w", "side": "total"})
    vals = dice.to_series().dropna().sort_values()
    assert list(cases["case"]) == ["best", "median", "worst", "random", "random"]
    assert cases["dice"].iloc[0] == pytest.approx(vals.iloc[-1])
    assert cases["dice"].iloc[1] == pytest.approx(vals.iloc[(len(vals) - 1) // 2])
    assert cases["dice"].iloc[2] == pytest.approx(vals.iloc[0])
    keys = list(zip(cases.subject, cases.timepoint, strict=True))
    assert len(set(keys)) == len(keys)


def test_select_qc_cases_same_rng_same_sample():
    ds = make_report_results()
    a = select_qc_cases(ds, "first-sim", "T1w", n_random=3, rng=5)
    b = select_qc_cases(ds, "first-sim", "T1w", n_random=3, rng=np.random.default_rng(5))
    assert a.equals(b)


def test_select_qc_cases_without_ground_truth_random_only():
    ds = make_report_results()
    ds["dice"] = ds["dice"] * np.nan
    cases = select_qc_cases(ds, "first-sim", "T1w", n_random=3, rng=0)
    assert list(cases["case"]) == ["random"] * 3
    assert cases["dice"].isna().all()


def test_slice_centre_empty_masks_volume_centre():
    assert slice_centre(np.zeros((8, 10, 6), np.uint8)) == (4, 5, 3)


def test_plot_scan_qc_rows_by_planes_contours_drawn():
    img, lab = make_scan()
    pred = np.roll(lab, 2, axis=1)
    fig = plot_scan_qc(img, [("a · T1w", pred), ("b · T1w", lab)], gt=lab, spacing=(1, 1, 1.5))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    assert [ax.get_title().split(" ")[0] for ax in axes[:3]] == ["axial", "coronal", "sagittal"]
    for k, ax in enumerate(axes):
        assert len(ax.images) == 1
        # axial/coronal: left and right thalamus of the method and of the GT (4 contour
        # sets); sagittal cuts through the left thalamus only (2)
        assert len(ax.collections) == (2 if k % 3 == 2 else 4)
    assert axes[0].get_ylabel() == "a · T1w"


@pytest.mark.slow
def test_write_qc_store_one_montage_per_scan(evaluated_store, tmp_path):
    from thaldask.report import write_qc

    store, _ = evaluated_store
    files = write_qc(store, "sub-01", tmp_path)
    assert [f.name for f in files] == ["qc_sub-01_baseline.png", "qc_sub-01_m12.png"]
    for f in files:
        with Image.open(f) as im:
            im.verify()
    one = write_qc(store, "sub-01", tmp_path / "one", timepoint="m12")
    assert [f.name for f in one] == ["qc_sub-01_m12.png"]
    with Image.open(one[0]) as im:
        # three method × contrast rows (atlas-sim T1w, dl-sim T1w and FLAIR): taller than wide
        assert im.size[1] > im.size[0]


@pytest.mark.slow
def test_write_qc_unknown_subject_scan_error(evaluated_store, tmp_path):
    from thaldask.report import write_qc

    store, _ = evaluated_store
    with pytest.raises(ScanError, match="no scan for subject 'sub-99'"):
        write_qc(store, "sub-99", tmp_path)


@pytest.mark.slow
def test_cli_qc_prints_paths_and_fails_cleanly(evaluated_store, tmp_path):
    from thaldask.cli import main

    store, _ = evaluated_store
    runner = CliRunner()
    res = runner.invoke(main, ["qc", store, "--subject", "sub-02", "--timepoint", "baseline",
                               "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("qc_sub-02_baseline.png")
    bad = runner.invoke(main, ["qc", store, "--subject", "nobody", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    assert "no scan for subject 'nobody'" in bad.output


@pytest.mark.slow
def test_report_figures_render_on_the_cluster_workers(evaluated_store, tmp_path):
    """With a Dask cluster every figure (visual-QC montages and the plots of small inputs)
    is drawn by its worker processes, and each comes out byte for byte as drawn locally;
    with a figure-input limit of 0 MB nothing is sent."""
    import dask
    from distributed import Client, LocalCluster, get_task_stream

    from thaldask import config
    from thaldask.report import write_report
    from thaldask.report.sections import Page, defer_figure, render_png

    store, _ = evaluated_store
    local = write_report(store, tmp_path / "local", progress=False).parent
    pngs = sorted(str(p.relative_to(local)) for p in local.glob("*/*.png"))
    montages = [p for p in pngs if p.startswith("qc/")]
    assert montages and len(pngs) > len(montages)
    config.get("report.cluster-figure-mb")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as ts:
            remote = write_report(store, tmp_path / "remote", progress=False).parent
        with dask.config.set({"thaldask.report.cluster-figure-mb": 0}):
            page = Page(tmp_path / "remote0")
            defer_figure(page, "figures/x.png", "", "", render_png, lambda: None)
        workers = set(client.scheduler_info()["workers"])
    ran = [t for t in ts.data if str(t["key"]).startswith("thaldask-report-")]
    assert len(ran) >= len(pngs)  # every figure was a worker task (absent ones too)
    assert {t["worker"] for t in ran} <= workers
    assert page.pending[0][4] is None  # above the input limit: drawn here, never sent
    assert sorted(str(p.relative_to(remote)) for p in remote.glob("*/*.png")) == pngs
    for rel in pngs:
        assert (remote / rel).read_bytes() == (local / rel).read_bytes(), rel
    html = (remote / "index.html").read_text()
    assert all(rel in html for rel in pngs) and "thaldask figure" not in html
