"""Commands never replace a file they did not write, fail on bad output paths before any
work, and keep the outputs of two stores in one folder apart."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from helpers.cohort import digests

from thaldask.cli import main
from thaldask.metrics.evaluate import evaluate
from thaldask.testing import make_store


@pytest.fixture
def two_stores(tmp_path):
    a, _ = make_store(tmp_path / "a.zarr", n_subjects=2, images=())
    b, _ = make_store(tmp_path / "b.zarr", n_subjects=2, seed=1, images=())
    return tmp_path, a, b


def test_two_stores_in_one_folder_keep_their_own_tables(two_stores):
    folder, a, b = two_stores
    for st in (a, b):
        evaluate(st.path, progress=False, surface=False)
        res = CliRunner().invoke(main, ["stats", st.path])
        assert res.exit_code == 0, res.output
    for st in (a, b):
        assert os.path.isfile(os.path.join(st.path, "metrics.csv"))
        assert os.path.isfile(os.path.join(st.path, "agreement.csv"))
    assert open(os.path.join(a.path, "metrics.csv")).read() != open(os.path.join(b.path, "metrics.csv")).read()
    assert not [p for p in os.listdir(folder) if p.endswith(".csv")]  # nothing beside the stores


def test_evaluate_csv_into_a_missing_folder_fails_before_any_work(two_stores):
    folder, a, _ = two_stores
    res = CliRunner().invoke(main, ["evaluate", a.path, "--csv", str(folder / "nope" / "m.csv"), "--no-progress"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == f"thaldask: error: {folder / 'nope'}: folder does not exist"
    assert "results" not in os.listdir(a.path)  # nothing was computed


def test_evaluate_csv_never_replaces_a_users_file(two_stores):
    folder, a, _ = two_stores
    mine = folder / "my_table.csv"
    mine.write_text("my,own\n1,2\n")
    before = mine.read_bytes()
    with pytest.raises(FileExistsError, match="exists and was not written by thaldask"):
        evaluate(a.path, csv_path=str(mine), progress=False)
    assert mine.read_bytes() == before
    evaluate(a.path, csv_path=str(folder / "new.csv"), progress=False)
    evaluate(a.path, csv_path=str(folder / "new.csv"), progress=False)  # its own: replaced


def test_stats_out_never_replaces_a_users_table(two_stores):
    folder, a, _ = two_stores
    evaluate(a.path, progress=False, surface=False)
    out = folder / "tables"
    out.mkdir()
    (out / "agreement.csv").write_text("mine\n")
    before = digests(out)
    res = CliRunner().invoke(main, ["stats", a.path, "--out", str(out)])
    assert res.exit_code == 2
    assert "agreement.csv: exists and was not written by thaldask" in res.output
    assert digests(out) == before


def test_demo_never_replaces_a_users_readme(tmp_path):
    from thaldask.errors import OutputExistsError
    from thaldask.pipeline import run_demo

    (tmp_path / "README.txt").write_text("my notes\n")
    with pytest.raises(OutputExistsError, match="README.txt: exists and was not written by thaldask"):
        run_demo(tmp_path, subjects=2, progress=False)
    assert (tmp_path / "README.txt").read_text() == "my notes\n"
    assert sorted(os.listdir(tmp_path)) == ["README.txt"]
