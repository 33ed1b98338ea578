"""Fixtures of the report tests, built from the hand-made inputs in :mod:`helpers.report`."""

from __future__ import annotations

import warnings

import pytest
from helpers.report import make_report_results, make_report_store, make_stats

from thaldask.metrics import evaluate
from thaldask.report import build_report
from thaldask.stats import fit_agreement, write_stats
from thaldask.stats.longitudinal import subject_annualised_change


@pytest.fixture
def results():
    return make_report_results()


@pytest.fixture
def stats():
    return make_stats()


@pytest.fixture(scope="session")
def evaluated_store(tmp_path_factory):
    """A store with results (thaldask evaluate) and statistics (thaldask stats) on disk."""
    root = tmp_path_factory.mktemp("cohort")
    st = make_report_store(root / "cohort.zarr")
    evaluate(st.path, progress=False, synthetic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = write_stats(st.path, config={"mixed": False})
    return st.path, paths


@pytest.fixture(scope="session")
def fixture_report(tmp_path_factory):
    """A report built from the hand-made results and tables (agreement and the stored
    per-subject annualised change from the stats stage)."""
    out = tmp_path_factory.mktemp("report")
    ds = make_report_results()
    stats = make_stats()
    stats["agreement"] = fit_agreement(ds, as_frame=True)
    index = build_report(out, results=ds, stats=stats, stored=subject_annualised_change(ds),
                         progress=False)
    return index, stats
