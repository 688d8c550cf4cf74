"""send/recv honour tags on "ccl" (as gloo does) over both oneCCL transports:
out-of-order tags, equal tags in order, large and empty messages, both
directions, a stashed message across a collective; a size mismatch and a
receive from any source raise. 2 ranks on 127.0.0.1 under timeouts."""
import os
import sys

import pytest

from tests._procs import BIN, run
from tests.distributed._ccl import HERE, need_ccl, results

pytestmark = [pytest.mark.multiproc, pytest.mark.ccl]

WORKER = os.path.join(HERE, "_worker_p2p.py")


@pytest.mark.parametrize("transport", ["mpi", "ofi"])
def test_send_recv_tags(tmp_path, transport):
    need_ccl()
    if transport == "mpi":  # plain mpiexec: ensure_ccl_env picks the MPI transport
        cmd = [os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable, WORKER, str(tmp_path)]
    else:
        cmd = [sys.executable, "-m", "ipex_train.launch", "--nproc-per-node", "2", "--transport",
               "ofi", WORKER, str(tmp_path)]
    p = run(cmd, timeout=180)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    for r in results(tmp_path, 2):
        assert r["transport"] == transport
        assert r["checks"] >= 20, r["checks"]
        assert not r["failures"], "\n".join(r["failures"])
