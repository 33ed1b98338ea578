"""Heap reuse inside worker tasks: large arrays stop faulting in page by page.

The count of minor page faults is a property of the allocator's behaviour, not a timing:
with Dask's ``MALLOC_TRIM_THRESHOLD_`` set, each fresh 8 MB array faults in ~2,000 pages;
reused from the heap it faults in none.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from thaldask._shared.compute import run_batches

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

_FAULTS = """
import ctypes, resource
_libc = ctypes.CDLL("libc.so.6")
_libc.malloc.restype = ctypes.c_void_p
_libc.free.argtypes = [ctypes.c_void_p]

def faults(n=40):  # malloc'd 8 MB blocks written whole, as torch's CPU allocator does
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        p = _libc.malloc(8 << 20)
        ctypes.memset(p, 1, 8 << 20)
        _libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
"""

_LOOP = _FAULTS + """
from thaldask._shared.memory import reuse_heap, heap_reuse_available

before = faults()
with reuse_heap():
    faults(2)  # the heap grows once
    inside = faults()
after = faults()
print(heap_reuse_available(), before, inside, after)
"""


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _LOOP], env=env, capture_output=True, text=True, check=True)
    avail, before, inside, after = out.stdout.split()
    return avail == "True", int(before), int(inside), int(after)


def test_reuse_heap_under_dasks_trim_threshold():
    avail, before, inside, after = _run({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert avail
    assert before > 40 * 1000  # every array a fresh mmap: ~2,048 pages each
    assert inside < before / 20
    assert after > before / 2  # the environment's thresholds are back after the block


def test_reuse_heap_does_nothing_where_glibc_adapts_itself():
    avail, before, inside, after = _run({})
    assert not avail  # glibc's dynamic threshold reuses on its own; nothing is changed
    assert inside < 40 * 1000 and after < 40 * 1000


def test_reuse_heap_can_be_turned_off():
    avail, before, inside, _ = _run({"MALLOC_TRIM_THRESHOLD_": "65536",
                                     "DASK_THALDASK__CLUSTER__REUSE_HEAP": "false"})
    assert not avail
    assert inside > before / 2


def _faults_per_array(batch):
    scope: dict = {}
    exec(_FAULTS, scope)
    return scope["faults"](batch[0]) / batch[0]


@pytest.mark.slow
def test_tasks_on_a_dask_worker_reuse_the_heap():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        assert client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).popitem()[1] is not None
        plain = client.submit(_faults_per_array, [30], pure=False).result()
        (batched,) = run_batches(_faults_per_array, [[30]], client=client, label="t", progress=False)
    assert plain > 1000  # a bare task: each 8 MB array faults in page by page
    assert batched < plain / 10
