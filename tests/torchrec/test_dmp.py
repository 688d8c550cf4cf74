"""TorchRec's DistributedModelParallel at 2 ranks on 127.0.0.1, table-wise.

Each rank is a real process running dmp_worker.py, which checks its shards and
dense weights against an unsharded single-process reference after every step.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ipex_train.launch._ports import free_port

pytest.importorskip("torchrec")

WORKER = Path(__file__).with_name("dmp_worker.py")
TIMEOUT_S = 150


def run_ranks(backend, world=2):
    """Starts `world` worker processes; returns [(returncode, output)]."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), backend],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            results.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def check(results, backend):
    for rank, (rc, out) in enumerate(results):
        assert rc == 0, f"rank {rank} failed ({backend}):\n{out[-4000:]}"
        assert f"rank {rank}/2 {backend}: 3 steps match" in out, out[-4000:]


def test_dmp_table_wise_gloo():
    check(run_ranks("gloo"), "gloo")


def test_dmp_table_wise_ccl():
    check(run_ranks("ccl"), "ccl")
