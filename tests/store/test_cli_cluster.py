"""CLI exit codes and an ingest on a LocalCluster with worker processes."""

import contextlib
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.store import make_affine, make_cohort, write_nifti

from thaldask.cli import main
from thaldask.store import ingest, open_store


@contextlib.contextmanager
def _threaded_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      silence_logs=40) as cluster:
        yield cluster.scheduler_address


def test_ingest_cli_bad_scan_exit_code_one_and_report(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": f"s{k}", "timepoint": "baseline", "shape": (12, 10, 8)} for k in range(2)])
    write_nifti(root / "s1_baseline_T1w.nii.gz", np.full((12, 10, 8), np.nan, np.float32), make_affine("RAS", (12, 10, 8)))
    clin = tmp_path / "clinical.csv"
    clin.write_text("subject,timepoint,group,edss\ns0,baseline,MS,2.5\ns1,baseline,HC,0\n")
    store = str(tmp_path / "c.zarr")
    with _threaded_cluster() as address:
        res = CliRunner().invoke(main, ["ingest", str(man), "--store", store, "--clinical", str(clin),
                                        "--scheduler", address, "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "2 written, 0 skipped, 2 failed" in res.output
    rep = pd.read_csv(os.path.join(store, "ingest_report.csv"))
    assert rep.status.tolist() == ["written", "written", "failed", "failed"]
    st = open_store(store)
    assert st.clinical["edss"].tolist() == [2.5, 0.0]
    (tmp_path / "out").mkdir()
    res = CliRunner().invoke(main, ["export", store, "--method", "gt", "--contrast", "T1w", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    # the mask, and the record of what thaldask wrote there
    assert sorted(os.listdir(tmp_path / "out")) == [".thaldask-outputs.json", "s0_baseline_gt_T1w.nii.gz"]


def test_ingest_cli_missing_files_fail_their_rows_exit_one(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("subject,timepoint,kind,contrast,path\ns1,t,image,T1w,nope.nii.gz\ns2,t,image,T1w,gone.nii\n")
    res = CliRunner().invoke(main, ["ingest", str(man), "--store", str(tmp_path / "c.zarr")])
    assert res.exit_code == 1  # every row failed on its own; nothing was created
    assert res.output.count("file not found") == 2
    assert not os.path.exists(tmp_path / "c.zarr")


@pytest.mark.slow
def test_ingest_local_cluster_processes_matches_threaded(tmp_path):
    from distributed import Client, LocalCluster

    root = tmp_path / "in"
    specs = [{"subject": f"s{k}", "timepoint": t, "shape": (14 + k, 12, 10), "orient": o}
             for k, o in enumerate(["RAS", "LAS", "LIA"]) for t in ("baseline", "m12")]
    man = make_cohort(root, specs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, nanny=False, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        rep = ingest(man, str(tmp_path / "dist.zarr"), client=client, progress=False)
        assert (rep.status == "written").all(), rep.reason.tolist()
        again = ingest(man, str(tmp_path / "dist.zarr"), client=client, progress=False)
        assert (again.status == "skipped").all()
        # lazy views compute on the workers from the store path
        st = open_store(str(tmp_path / "dist.zarr"))
        vol = (st.mask("gt", "T1w") > 0).sum(("x", "y", "z")).compute()
    ingest(man, str(tmp_path / "local.zarr"), progress=False)
    ref = open_store(str(tmp_path / "local.zarr"))
    assert vol.values.tolist() == [96] * 6
    for i in range(6):
        np.testing.assert_array_equal(st.load_image("T1w", i), ref.load_image("T1w", i))
        np.testing.assert_array_equal(st.load_mask("gt", "T1w", i), ref.load_mask("gt", "T1w", i))
