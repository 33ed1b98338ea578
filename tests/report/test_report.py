"""The HTML report: files it references, tables against the statistics outputs, absent
inputs, and the end-to-end path from a real store (evaluate -> stats -> report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.report import PageParser, cell_matches, make_report_results
from PIL import Image

from thaldask.report import build_report
from thaldask.report.build import AGREEMENT_KEY_COLUMNS
from thaldask.report.page import fmt_value
from thaldask.stats.longitudinal import subject_annualised_change


def assert_references_valid(index: Path) -> PageParser:
    page = PageParser(index.read_text(encoding="utf-8"))
    assert page.images, "the report has no figure"
    for src in page.images:
        assert "://" not in src and not src.startswith("/"), f"non-relative image {src}"
        f = index.parent / src
        assert f.is_file(), src
        with Image.open(f) as im:
            im.verify()
        with Image.open(f) as im:
            assert im.size[0] > 100 and im.size[1] > 100
            px = np.asarray(im.convert("L"), float)
            assert px.std() > 5, f"{src} is blank"
    for href in page.links:
        if href.startswith("#"):
            continue
        assert "://" not in href, f"network link {href}"
        assert (index.parent / href).is_file(), href
    return page


def assert_tables_match(page: PageParser, stats: dict[str, pd.DataFrame]) -> int:
    """Every statistics table on the page equals its source; returns tables checked."""
    checked = 0
    for tid, rows in page.tables.items():
        if not tid.startswith(("table-", "section-")):
            continue
        name = tid.removeprefix("table-").removeprefix("section-").removesuffix("-key")
        df = stats[name]
        header, body = rows[0], rows[1:]
        if tid.endswith("-key") and name == "agreement":
            assert header == [c for c in AGREEMENT_KEY_COLUMNS if c in df.columns]
        elif tid.endswith("-key"):  # the trial section's key columns of its tables
            assert header and set(header) <= set(df.columns), tid
        else:
            assert header == list(df.columns)
        assert len(body) == len(df), tid
        for r, cells in enumerate(body):
            for c, shown in zip(header, cells, strict=True):
                v = df[c].iloc[r]
                assert cell_matches(shown, v), f"{tid} row {r} column {c}: {shown!r} vs {v!r}"
        checked += 1
    return checked


def test_build_report_fixture_figures_exist_and_are_images(fixture_report):
    index, _ = fixture_report
    page = assert_references_valid(index)
    names = {Path(s).stem for s in page.images}
    assert {"agreement_distributions", "precision_sensitivity", "volume_vs_gt", "bland_altman",
            "forest_clinical", "odds_ratios", "annualised_change", "site_distributions"} <= names


def test_build_report_fixture_tables_equal_stats(fixture_report):
    index, stats = fixture_report
    page = PageParser(index.read_text(encoding="utf-8"))
    # each non-empty table in its section (agreement: key columns) and in full in the Tables
    # section; the empty method_comparison is stated, not drawn
    assert assert_tables_match(page, stats) == 2 * sum(not df.empty for df in stats.values())
    text = index.read_text(encoding="utf-8")
    ids = [t.split('"')[0] for t in text.split(' id="')[1:]]
    assert len(ids) == len(set(ids)), "duplicate element ids"
    assert "method_comparison.csv is empty" in index.read_text(encoding="utf-8")
    for name, df in stats.items():
        csv = pd.read_csv(index.parent / "tables" / f"{name}.csv")
        assert list(csv.columns) == list(df.columns)
        assert len(csv) == len(df)
        assert f"tables/{name}.csv" in page.links


def test_build_report_synthetic_flag_banner_at_top(fixture_report, tmp_path):
    index, _ = fixture_report
    text = index.read_text(encoding="utf-8")
    assert text.index('id="synthetic-banner"') < text.index("<header>")
    ds = make_report_results(n_subjects=4).isel(method=[0], contrast=[0])
    ds.attrs["synthetic"] = "False"  # attrs stored as strings by some writers
    real = build_report(tmp_path, results=ds, stats={}, progress=False)
    assert "synthetic-banner" not in real.read_text(encoding="utf-8")


def test_build_report_overview_counts_cohort(fixture_report):
    index, _ = fixture_report
    page = PageParser(index.read_text(encoding="utf-8"))
    grid = page.tables["methods-contrasts"]
    assert grid[0] == ["method \\ contrast", "T1w", "FLAIR", "R1"]
    rows = {r[0]: r[1:] for r in grid[1:]}
    # 12 subjects × 2 timepoints minus subject 3's missing follow-up; GT: 8 baseline scans;
    # one mindglide-sim FLAIR Dice is NaN
    assert rows["freesurfer-sim"] == ["23 / 8", "–", "–"]
    assert rows["mindglide-sim"] == ["23 / 8", "23 / 7", "23 / 8"]
    text = index.read_text(encoding="utf-8")
    assert "8 subjects, 8 scans have manual ground truth (baseline: 8, m12: 0)." in text
    for pkg in ("numpy", "xarray", "zarr", "matplotlib"):
        assert f"<th>{pkg}</th>" in text


def test_build_report_absent_inputs_stated_no_figures(tmp_path):
    index = build_report(tmp_path, results=None, stats={}, progress=False)
    text = index.read_text(encoding="utf-8")
    page = PageParser(text)
    assert page.images == []
    assert text.count('class="absent"') >= 6
    assert "No results dataset in the store" in text
    assert "No statistics tables found" in text
    assert "No cohort store given" in text
    assert "No results dataset: no volumes to compare across sites." in text
    assert "No results dataset: no volumes to compare over time." in text


def test_build_report_no_ground_truth_agreement_absent(tmp_path):
    ds = make_report_results()
    for v in ("dice", "sensitivity", "precision", "gt_volume_mm3"):
        ds[v] = ds[v] * np.nan
    index = build_report(tmp_path, results=ds, stats={}, stored=subject_annualised_change(ds),
                         progress=False)
    text = index.read_text(encoding="utf-8")
    assert "No scan has both a ground-truth mask and a method mask" in text
    names = {Path(s).stem for s in PageParser(text).images}
    assert "bland_altman" not in names and "annualised_change" in names


def test_build_report_note_table_shown_as_reason(tmp_path):
    stats = {"agreement": pd.DataFrame([{"note": "no ground-truth volumes"}])}
    text = build_report(tmp_path, results=None, stats=stats, progress=False).read_text("utf-8")
    assert "agreement: no ground-truth volumes" in text


@pytest.mark.slow
def test_stats_from_dataset_same_tables_as_csvs(evaluated_store):
    from thaldask.report.build import stats_from_dataset
    from thaldask.store import open_store

    store, csvs = evaluated_store
    tables = stats_from_dataset(open_store(store).open_results("stats"))
    assert set(tables) == set(csvs)
    for name, p in csvs.items():
        csv = pd.read_csv(p)
        got = tables[name][list(csv.columns)]
        assert len(got) == len(csv)
        for c in csv.columns:
            for a, b in zip(got[c], csv[c], strict=True):
                assert cell_matches(fmt_value(a), b), (name, c, a, b)


@pytest.mark.slow
def test_cli_report_store_tables_match_stats_csvs(evaluated_store, tmp_path):
    """``thaldask report`` (write_report) on a store that went through evaluate and stats."""
    from thaldask.cli import main

    store, csvs = evaluated_store
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["report", store, "--out", str(out), "--seed", "1",
                                    "--qc-random", "1"])
    assert res.exit_code == 0, res.output
    index = out / "index.html"
    assert res.output.strip().splitlines()[-1] == f"report: {index}"
    page = assert_references_valid(index)
    stats = {name: pd.read_csv(p) for name, p in csvs.items()}
    assert assert_tables_match(page, stats) >= len(stats)
    qc = [s for s in page.images if s.startswith("qc/qc_")]
    assert sorted(Path(s).stem for s in qc) == ["qc_atlas-sim_T1w", "qc_dl-sim_FLAIR", "qc_dl-sim_T1w"]
    # the QC-flags section shows the montage of flagged scans, each one a row of qc_flags.csv
    flagged = {f"qcflag_{r.subject}_{r.timepoint}_{r.method}_{r.contrast}"
               for r in stats["qc_flags"].itertuples()} if "flag" in stats["qc_flags"] else set()
    assert {Path(s).stem for s in page.images if s.startswith("qc/qcflag_")} <= flagged
    text = index.read_text(encoding="utf-8")
    assert "CSV files in" in text
    assert 'id="synthetic-banner"' in text


def test_cli_report_missing_store_one_line_error(tmp_path):
    from thaldask.cli import main

    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope.zarr"), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.startswith("thaldask: error:") and res.output.count("\n") == 1


@pytest.mark.slow
def test_pipeline_report_stage_writes_and_prints_path(evaluated_store, tmp_path):
    import io

    from rich.console import Console

    from thaldask.pipeline import Context, print_summary, run_stages

    store, _ = evaluated_store
    ctx = Context(out=str(Path(store).parent), store=store, progress=False,
                  config={"report": {"out": str(tmp_path / "rep"), "qc_random": 0}})
    ctx.timings["evaluate"] = 1.5
    run_stages(ctx, only=["report"])
    index = tmp_path / "rep" / "index.html"
    assert ctx.outputs["report"] == index and index.is_file()
    text = index.read_text(encoding="utf-8")
    assert "<th>stage evaluate</th><td>1.5 s</td>" in text
    buf = io.StringIO()
    print_summary(ctx, Console(file=buf, width=200))
    assert f"report: {index}" in buf.getvalue()


@pytest.mark.slow
def test_build_report_rerun_same_folder_no_stale_files(tmp_path):
    ds = make_report_results(n_subjects=4).isel(method=[0], contrast=[0])
    build_report(tmp_path, results=ds, stats={}, progress=False)
    from thaldask._shared.paths import write_bytes

    write_bytes(tmp_path / "figures" / "old_figure.png", b"stale")  # an earlier run's figure
    (tmp_path / "figures" / "my_own.png").write_bytes(b"the user's")  # not thaldask's
    index = build_report(tmp_path, results=ds, stats={}, progress=False)
    assert not (tmp_path / "figures" / "old_figure.png").exists()
    assert (tmp_path / "figures" / "my_own.png").read_bytes() == b"the user's"
    referenced = set(PageParser(index.read_text(encoding="utf-8")).images)
    on_disk = {f"figures/{p.name}" for p in (tmp_path / "figures").iterdir()
               if p.name not in (".thaldask-outputs.json", "my_own.png")}
    assert on_disk == referenced


def test_build_report_refuses_an_index_html_it_did_not_write(tmp_path):
    from thaldask.errors import OutputExistsError

    (tmp_path / "index.html").write_text("<html>my page</html>")
    with pytest.raises(OutputExistsError, match="index.html: exists and was not written by thaldask"):
        build_report(tmp_path, results=make_report_results(n_subjects=4), stats={}, progress=False)
    assert (tmp_path / "index.html").read_text() == "<html>my page</html>"


@pytest.mark.slow
def test_build_report_left_side_captions_name_side(tmp_path):
    ds = make_report_results(n_subjects=6).isel(method=[2])
    index = build_report(tmp_path, results=ds, stats={}, side="left",
                         stored=subject_annualised_change(ds, side="all"), progress=False)
    text = index.read_text(encoding="utf-8")
    assert "Thalamic volume (left, mm³) per acquisition site" in text
    assert "figures/annualised_change.png" in text
