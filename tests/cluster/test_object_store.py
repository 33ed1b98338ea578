"""The cohort store on object storage: s3:// against a real S3-compatible server (moto's
server mode) on 127.0.0.1, credentials and endpoint from the environment, work done by
Dask worker processes."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.requires_s3, pytest.mark.slow]

BUCKET = "thaldask-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Credentials and endpoint the way a user (or a Kubernetes Secret) provides them."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "thaldask-test",
        "AWS_SECRET_ACCESS_KEY": "thaldask-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


def _tiny_cohort(root):
    """Two scans: a T1w image, a ground-truth mask and one method's mask (FreeSurfer labels)."""
    rng = np.random.default_rng(7)
    shape, aff = (28, 24, 20), np.diag([1.0, 1.0, 1.2, 1.0])
    rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
    for s in ("sub-01", "sub-02"):
        img = rng.normal(100, 10, shape).astype(np.float32)
        gt = np.zeros(shape, np.uint8)
        gt[8:13, 8:16, 6:14] = 10
        gt[15:20, 8:16, 6:14] = 49
        pred = np.roll(gt, 1 if s == "sub-01" else 2, axis=1)
        for name, data in (("T1w", img), ("gt", gt), ("pred", pred)):
            nib.save(nib.Nifti1Image(data, aff), root / f"{s}_{name}.nii.gz")
        rows += [
            f"{s},baseline,A,image,T1w,,,{s}_T1w.nii.gz",
            f"{s},baseline,A,mask,T1w,gt,freesurfer,{s}_gt.nii.gz",
            f"{s},baseline,A,mask,T1w,testmethod,freesurfer,{s}_pred.nii.gz",
        ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_store_s3_ingest_evaluate_on_workers_matches_local(s3_env, s3_endpoint, tmp_path):
    from thaldask.cluster import get_client
    from thaldask.metrics.evaluate import evaluate
    from thaldask.store import ingest, open_store

    manifest = _tiny_cohort(tmp_path)
    url = f"s3://{BUCKET}/cohort.zarr"
    local = str(tmp_path / "local.zarr")
    # worker processes inherit the environment: that is where their credentials come from
    with get_client(n_workers=1, threads_per_worker=1, quiet=True) as client:
        report = ingest(manifest, url, client=client, progress=False)
        assert (report["status"] == "written").all(), report
        remote_ds = evaluate(url, client=client, progress=False, csv_path="")
        seen = client.run(lambda: __import__("os").environ.get("AWS_ENDPOINT_URL"))
        assert set(seen.values()) == {s3_endpoint}
    ingest(manifest, local, progress=False)
    local_ds = evaluate(local, progress=False, csv_path="")

    # objects really are in the bucket
    keys = s3_env.find(f"{BUCKET}/cohort.zarr")
    assert f"{BUCKET}/cohort.zarr/zarr.json" in keys
    assert any("/images/" in k for k in keys) and any("/masks/" in k for k in keys)

    st, lst = open_store(url), open_store(local)
    assert st.n_scans == lst.n_scans == 2
    for i in range(2):
        np.testing.assert_array_equal(st.load_image("T1w", i), lst.load_image("T1w", i))
        np.testing.assert_array_equal(st.load_mask("gt", "T1w", i), lst.load_mask("gt", "T1w", i))
    where = {"method": "testmethod", "contrast": "T1w"}
    dice = remote_ds["dice"].sel(where).values
    np.testing.assert_allclose(dice, local_ds["dice"].sel(where).values)
    assert np.isfinite(dice).all() and (dice < 1).all() and (dice > 0.5).all()
    # the results dataset was written into the bucket too
    reopened = open_store(url).open_results()
    np.testing.assert_allclose(reopened["dice"].values, remote_ds["dice"].values)


def test_store_s3_stats_tables_go_inside_the_store(s3_env, tmp_path, monkeypatch):
    import warnings

    import pandas as pd

    from thaldask.metrics.evaluate import evaluate
    from thaldask.stats.run import write_stats
    from thaldask.store import ingest

    url = f"s3://{BUCKET}/stats.zarr"
    ingest(_tiny_cohort(tmp_path), url, progress=False)
    evaluate(url, progress=False, surface=False)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = write_stats(url)
    assert paths["agreement"] == f"{url}/agreement.csv"
    assert s3_env.exists(f"{BUCKET}/stats.zarr/agreement.csv")
    assert s3_env.exists(f"{BUCKET}/stats.zarr/metrics.csv")  # evaluate's default table too
    assert len(pd.read_csv(paths["agreement"])) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing in the working folder


def test_store_s3_missing_store_not_found(s3_env):
    from thaldask.errors import StoreNotFoundError
    from thaldask.store import open_store

    with pytest.raises(StoreNotFoundError):
        open_store(f"s3://{BUCKET}/no-such-store.zarr")


def test_store_s3_two_ingests_never_write_at_once(s3_env, tmp_path):
    import json
    import subprocess
    import sys

    from thaldask.errors import StoreBusyError
    from thaldask.store import ingest, open_store
    from thaldask.store.lock import lock_path, store_lock

    url = f"s3://{BUCKET}/locked.zarr"
    man = _tiny_cohort(tmp_path)
    key = lock_path(url)[len("s3://"):]
    assert key == f"{BUCKET}/locked.zarr.thaldask-lock"
    with store_lock(url):
        assert json.loads(s3_env.cat_file(key))["what"] == "ingest"
        with pytest.raises(StoreBusyError, match="another ingest"):
            ingest(man, url, progress=False)
        with pytest.raises(StoreBusyError):  # the holder's own second attempt too
            with store_lock(url):
                pass
    assert not s3_env.exists(key)  # released, and nothing was created meanwhile
    assert not s3_env.exists(f"{BUCKET}/locked.zarr")
    # a lock left by a process of this host that died is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import socket

    s3_env.pipe_file(key, json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                      "since": 0, "what": "ingest"}).encode())
    rep = ingest(man, url, progress=False)
    assert (rep.status == "written").all()
    assert open_store(url).n_scans == 2 and not s3_env.exists(key)
