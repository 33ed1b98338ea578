"""``thaldask stats`` on a store it cannot write (an archive, another group's data): the
tables go to ``--out`` and the store is left exactly as it was; without ``--out`` it is a
one-line error before any work. The store is made truly unwritable: as root (who ignores
permission bits) the command runs as the unprivileged user ``nobody``."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from helpers.cohort import digests

from thaldask.metrics import evaluate
from thaldask.testing import make_store

NOBODY = 65534


def _run_as_unprivileged(args, env):
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not installed")
        args = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def readonly_store():
    root = tempfile.mkdtemp(prefix="thaldask-ro-", dir="/tmp")  # readable by everyone
    os.chmod(root, 0o755)
    store, _ = make_store(os.path.join(root, "cohort.zarr"), n_subjects=4, seed=3)
    evaluate(store.path, progress=False, surface=False)
    for dirpath, dirs, files in os.walk(store.path):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)
    out = os.path.join(root, "tables")
    os.mkdir(out)
    os.chmod(out, 0o777)
    yield store.path, out
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(root)  # the test's own folder


def test_stats_on_a_read_only_store_writes_tables_to_out_and_leaves_the_store(readonly_store):
    store, out = readonly_store
    env = {**os.environ, "HOME": out, "MPLCONFIGDIR": out}
    before = digests(store)
    cmd = [sys.executable, "-m", "thaldask.cli", "stats", store, "--quiet"]
    res = _run_as_unprivileged(cmd, env)
    assert res.returncode == 2, res.stderr  # bad usage: nothing was computed
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "read-only" in lines[0] and "--out" in lines[0], res.stderr
    res = _run_as_unprivileged(cmd + ["--out", out], env)
    assert res.returncode == 0, res.stderr
    assert "is read-only; the stats dataset was not stored" in res.stderr
    import pandas as pd

    agreement = pd.read_csv(os.path.join(out, "agreement.csv"))
    assert len(agreement) > 0 and agreement["n"].min() >= 1
    assert os.path.exists(os.path.join(out, "longitudinal.csv"))
    assert digests(store) == before  # not one byte of the store changed
