"""Two ingests into one store never run at once; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from thaldask.errors import StoreBusyError
from thaldask.store import ingest, open_store
from thaldask.store.lock import lock_path, store_lock


def test_second_ingest_while_one_holds_the_lock_fails_at_once(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    with store_lock(store):
        with pytest.raises(StoreBusyError, match=r"another ingest \(process \d+ on .*\) is writing this store"):
            ingest(small_cohort, store, progress=False)
        assert not os.path.exists(store)  # the refused ingest created nothing
    assert not os.path.exists(lock_path(store))  # released
    rep = ingest(small_cohort, store, progress=False)
    assert (rep.status == "written").all() and open_store(store).n_scans == 3
    assert not os.path.exists(lock_path(store))


def test_lock_of_a_killed_process_is_taken_over(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    import socket

    with open(lock_path(store), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0, "what": "ingest"}, f)
    rep = ingest(small_cohort, store, progress=False)
    assert (rep.status == "written").all()
    assert not os.path.exists(lock_path(store))


def test_lock_held_by_another_live_process_names_it(tmp_path):
    store = str(tmp_path / "c.zarr")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from thaldask.store.lock import store_lock\n"
         f"with store_lock({store!r}):\n    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError, match=f"process {holder.pid} on"):
            with store_lock(store):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed -9 style: its lock is stale and taken over
    with store_lock(store):
        assert json.load(open(lock_path(store)))["pid"] == os.getpid()
