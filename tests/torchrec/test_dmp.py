"""TorchRec's DistributedModelParallel at 2 ranks on 127.0.0.1, table-wise.

Each rank is a real process running dmp_worker.py, which checks its shards and
dense weights against an unsharded single-process reference after every step.
"""
import sys
from pathlib import Path

import pytest

from tests._procs import run_ranks
from tests.distributed._ccl import need_ccl

pytestmark = [pytest.mark.torchrec, pytest.mark.multiproc]
WORKER = Path(__file__).with_name("dmp_worker.py")
TIMEOUT_S = 150


def _run(backend, world=2):
    return run_ranks([sys.executable, WORKER, backend], world, TIMEOUT_S, OMP_NUM_THREADS=1)


def check(results, backend):
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed ({backend}):\n{r.stdout[-4000:]}"
        assert f"rank {rank}/2 {backend}: 3 steps match" in r.stdout, r.stdout[-4000:]


def test_dmp_table_wise_gloo():
    check(_run("gloo"), "gloo")


@pytest.mark.ccl
def test_dmp_table_wise_ccl():
    need_ccl()
    check(_run("ccl"), "ccl")
