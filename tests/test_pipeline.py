"""Pipeline: config parsing, ``thaldask run`` on an existing store, the demo end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import thaldask
from thaldask.cli import main
from thaldask.errors import ConfigError
from thaldask.pipeline import STAGES, load_config, run_config, run_demo
from thaldask.testing import make_store

EXAMPLE = Path(thaldask.__file__).parent / "data" / "example_config.yaml"


def test_stages_fixed_order_known_names():
    names = [s.name for s in STAGES]
    order = ["synth", "ingest", "segment", "evaluate", "stats", "report"]
    assert names == [n for n in order if n in names]
    assert {"synth", "ingest", "evaluate"} <= set(names)


def test_load_config_example_resolves_relative_paths(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "cohort.yaml")
    (tmp_path / "manifest.csv").write_text("subject\n")
    cfg = load_config(tmp_path / "cohort.yaml")
    assert cfg["store"] == str(tmp_path / "cohort.zarr")
    assert cfg["manifest"] == str(tmp_path / "manifest.csv")
    assert cfg["cluster"]["kind"] == "local"
    assert cfg["stages"]["evaluate"]["surface"] is True


@pytest.mark.parametrize(
    "text,match",
    [
        ("store: a.zarr\nstagez: {}\n", "unknown key 'stagez' \\(did you mean 'stages'\\?\\)"),
        ("manifest: m.csv\n", "'store'"),
        ("store: a.zarr\nstages: {evaluat: {}}\n", "unknown key 'evaluat' \\(did you mean 'evaluate'\\?\\)"),
        ("store: a.zarr\nstages: {report: {qc_randm: 3}}\n",
         "stages.report: unknown key 'qc_randm' \\(did you mean 'qc_random'\\?\\)"),
        ("store: a.zarr\nstages: {stats: {sid: all}}\n", "stages.stats: unknown key 'sid' \\(did you mean 'side'\\?\\)"),
        ("store: a.zarr\nstages: {segment: {batch_size: two}}\n", "stages.segment.batch_size: expected int"),
        ("store: a.zarr\nstages: {ingest: {overwrite: 1}}\n", "stages.ingest.overwrite: expected true or false"),
        ("store: [a\n", "not valid YAML"),
    ],
)
def test_load_config_bad_file_raises_config_error(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_run_cli_bad_config_one_line_exit_2(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("store: a.zarr\nbogus: 1\n")
    out = CliRunner().invoke(main, ["run", str(p)])
    assert out.exit_code == 2
    assert "c.yaml" in out.output and "bogus" in out.output


def test_run_config_existing_store_evaluates_into_out(tmp_path):
    from distributed import Client, LocalCluster

    st, _ = make_store(tmp_path / "cohort.zarr")
    (tmp_path / "run.yaml").write_text(
        "store: cohort.zarr\nout: tables\nstages:\n  evaluate:\n    surface: false\n"
        "  segment: {enabled: false}\n  stats: {enabled: false}\n  report: {enabled: false}\n"
    )
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cl, Client(cl) as c:
        ctx = run_config(tmp_path / "run.yaml", client=c, progress=False)
    assert "ingest" in ctx.skipped and "evaluate" in ctx.outputs
    df = pd.read_csv(tmp_path / "tables" / "metrics.csv")
    assert df["dice"].notna().any() and df["hd95_mm"].isna().all()  # surface switched off
    assert st.open_results().attrs["synthetic"] is False


@pytest.mark.slow
def test_run_demo_two_subjects_process_cluster_outputs(tmp_path):
    from thaldask.cluster import get_client

    out = tmp_path / "demo"
    with get_client(n_workers=2, threads_per_worker=1, quiet=True) as client:
        ctx = run_demo(out, subjects=2, client=client, progress=False, gt_fraction=1.0)
    ds = ctx.outputs["evaluate"]
    assert {"README.txt", "metrics.csv", "cohort.zarr"} <= {p.name for p in out.iterdir()}
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    assert ds.attrs["synthetic"] is True
    assert ds.sizes["subject"] == 2 and ds.sizes["side"] == 3
    tot = ds.dice.sel(side="total")
    assert float(tot.max()) <= 1.0 and int(tot.notnull().sum()) > 0
    df = pd.read_csv(out / "metrics.csv")
    # one row per side of every scored (subject, timepoint, method, contrast), no placeholders
    assert len(df) == int(np.isfinite(ds.volume_mm3).any("side").sum()) * 3
    assert df["pred_empty"].notna().all()


@pytest.mark.slow
def test_run_cli_manifest_ingests_and_evaluates(tmp_path):
    from distributed import LocalCluster

    from thaldask.synth import make_cohort

    cohort = make_cohort(tmp_path / "cohort", n_subjects=2, shape="small", progress=False, gt_fraction=1.0)
    cfg = tmp_path / "cohort" / "run.yaml"
    cfg.write_text(
        "store: cohort.zarr\nmanifest: manifest.csv\nclinical: clinical.csv\n"
        "stages:\n  evaluate: {surface: true}\n"
        "  segment: {enabled: false}\n  stats: {enabled: false}\n  report: {enabled: false}\n"
    )
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", dashboard_address=":0") as cl:
        out = CliRunner().invoke(main, ["run", str(cfg), "--no-progress", "--scheduler", cl.scheduler_address])
    assert out.exit_code == 0, out.output
    df = pd.read_csv(tmp_path / "cohort" / "cohort.zarr" / "metrics.csv")  # default out: the store
    manifest = pd.read_csv(cohort.manifest)
    preds = manifest[(manifest.kind == "mask") & (manifest.method != "gt")]
    n_pairs = len(preds.groupby(["subject", "timepoint", "method", "contrast"]))
    assert int(df[df.side == "total"].volume_mm3.notna().sum()) == n_pairs
    assert df["edss"].notna().any()  # clinical covariates joined


@pytest.mark.slow
def test_run_cli_cluster_file_overrides_config_cluster_section(tmp_path):
    # the config points at a scheduler that does not exist; --cluster replaces that section
    make_store(tmp_path / "cohort.zarr")
    (tmp_path / "run.yaml").write_text(
        "store: cohort.zarr\nout: tables\n"
        "cluster: {kind: address, address: 'tcp://127.0.0.1:9', timeout: 2}\n"
        "stages:\n  evaluate:\n    surface: false\n"
        "  segment: {enabled: false}\n  stats: {enabled: false}\n  report: {enabled: false}\n"
    )
    (tmp_path / "local.yaml").write_text("cluster:\n  kind: local\n  n_workers: 1\n  threads_per_worker: 1\n")
    out = CliRunner().invoke(
        main, ["run", str(tmp_path / "run.yaml"), "--cluster", str(tmp_path / "local.yaml"), "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    assert pd.read_csv(tmp_path / "tables" / "metrics.csv")["dice"].notna().any()
