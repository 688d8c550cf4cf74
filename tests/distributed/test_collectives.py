"""Every collective x dtype x op on "ccl" equals gloo (and a plain-PyTorch
reference) at world sizes 2 (plain mpiexec: oneCCL's MPI transport) and 3
(ipex-train-run, oversubscribed, OFI/tcp transport), for empty, odd-sized, 2-D
and 64 MiB tensors; DDP on ccl ends where DDP on gloo does. All ranks on
127.0.0.1, under timeouts."""
import os
import sys

import pytest

from tests._procs import BIN, clean_env, run, run_ranks
from tests.distributed._ccl import HERE, cma_between_siblings, need_ccl, results

pytestmark = [pytest.mark.multiproc, pytest.mark.ccl]

WORKER = os.path.join(HERE, "_worker_collectives.py")
# closed-form checks at 1 and 4 MiB, even and uneven (tests/multihost uses it across hosts)
XHOST_WORKER = os.path.join(os.path.dirname(HERE), "multihost", "_worker_xhost.py")


def _check(p, out_dir, world, path=None, min_checks=1000):
    """path: how all-to-all must have run; default: "local" (direct reads)
    wherever this host lets sibling processes read each other's memory."""
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    if path is None:
        path = "local" if cma_between_siblings() else "oneccl (rank"
    for r in results(out_dir, world):
        assert r["world"] == world
        assert r["transfer_path"].startswith(path), r["transfer_path"]
        assert r["checks"] > min_checks, r["checks"]
        assert not r["failures"], "\n".join(r["failures"][:20])


def test_collectives_plain_mpiexec_2_ranks(tmp_path):
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable, WORKER, str(tmp_path),
             "--large"], timeout=400)
    _check(p, tmp_path, 2)


def test_collectives_ipex_train_run_3_ranks(tmp_path):
    need_ccl()
    p = run([sys.executable, "-m", "ipex_train.launch", "--nproc-per-node", "3", "--oversubscribe",
             "--transport", "ofi", WORKER, str(tmp_path), "--large"], timeout=500)
    _check(p, tmp_path, 3)


def test_collectives_oneccl_transfer_path(tmp_path):
    """All-to-all, gather and scatter through oneCCL's alltoallv, as where the
    ranks cannot read each other's memory (IPEX_TRAIN_CCL_LOCAL=0 forces it)."""
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable, WORKER, str(tmp_path)],
            timeout=300, env=clean_env(IPEX_TRAIN_CCL_LOCAL="0",
                                       IPT_TEST_DTYPES="float32,bfloat16,int64,bool"))
    _check(p, tmp_path, 2, path="oneccl (turned off", min_checks=200)


def test_ddp_matches_gloo(tmp_path):
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable,
             os.path.join(HERE, "_worker_ddp.py"), str(tmp_path)], timeout=300)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    for r in results(tmp_path, 2):
        for name, v in r.items():
            assert v["moved"] > 1e-2, f"{name}: training did not change the weights"
            assert v["max_diff_across_ranks"] == 0.0, (name, v)
            tol = 2e-2 if "bf16" in name or "fp16" in name else 1e-5
            assert v["max_diff_vs_gloo"] <= tol * max(1.0, v["max_abs"]), (name, v)


def test_init_methods(tmp_path):
    """env://, tcp:// and file:// rendezvous one after another in the same 3
    processes (torchrun-style variables; torchrun itself would hand tcp:// its
    agent's store), each with a subgroup."""
    need_ccl()
    from tests._procs import check_all_ok, free_ports
    port, tcp_port = free_ports(2)
    check_all_ok(run_ranks([sys.executable, os.path.join(HERE, "_worker_init.py"), tcp_port,
                            tmp_path / "rdzv", tmp_path], 3, timeout=240, port=port))
    for rank, r in enumerate(results(tmp_path, 3)):
        sub = 2.0 if rank < 2 else 1.0  # rank 2 is outside the subgroup: untouched
        want = {"env": 6.0, "tcp": 6.0, "file": 6.0, "env_sub": sub, "tcp_sub": sub,
                "file_sub": sub}
        if rank < 2:
            a2a = [0.0 + rank, 10.0 + rank]  # element `rank` of each member's [10q, 10q + 1]
            want.update({"env_sub_a2a": a2a, "tcp_sub_a2a": a2a, "file_sub_a2a": a2a})
        assert r == want, (rank, r)


def test_alltoallv_sized_by_sender_3_ranks_mpi_transport(tmp_path):
    """Issue #13 item 1: over oneCCL's MPI transport with blocks of 1-3 MiB
    sized by the sender, oneCCL picked its alltoallv algorithm per rank from
    that rank's own sizes ("direct" up to 1 MiB, "scatter" above), and ranks
    on either side of the line never met: every rank hung until the timeout.
    One host, 3 ranks, the direct reads turned off so oneCCL moves the bytes."""
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "3", sys.executable, XHOST_WORKER, str(tmp_path),
             "--timeout", "60"], timeout=400, env=clean_env(IPEX_TRAIN_CCL_LOCAL="0"))
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    for r in results(tmp_path, 3):
        assert not r["failures"], "\n".join(r["failures"][:10])
        assert r["transfer_path"].startswith("oneccl (turned off"), r["transfer_path"]
        assert r["env"]["CCL_ATL_TRANSPORT"] == "mpi"
