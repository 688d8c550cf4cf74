"""All-to-all across hosts by the hierarchical path (issue #13 item 7): the
blocks between ranks of one host by direct reads among them, the blocks
between hosts by one oneCCL alltoallv, in one collective. Over two and three
simulated hosts (_hosts.py), started with env:// variables on each host and with
ipex-train-run's hostfile launch; results against closed-form answers and
bit for bit against the flat oneCCL path in the same job, and the backend's
byte counters showing which path every received byte took. On one host the
direct path must still carry everything."""
import json
import os
import signal
import sys
import time

import pytest

from tests._procs import BIN, check_all_ok, free_port, kill_tree, run
from tests.distributed._ccl import cma_between_siblings, need_ccl, results
from tests.multihost._hosts import HERE
from tests.multihost.test_multihost import job_env

pytestmark = [pytest.mark.multiproc, pytest.mark.ccl, pytest.mark.multihost]

WORKER = os.path.join(HERE, "_worker_hier.py")
TIMEOUT_S = 60  # the process group's timeout inside the ranks
CHECKS = 3 * (5 * 2 + 1)  # per size: 5 all_to_all_single kinds x (answer, flat path) + all_to_all


def check_group(r, path, same_host, checks=CHECKS):
    """One group's part of a rank's result `r`; path: its transfer_path
    prefix; same_host: whether another rank of the group shares this one's."""
    hierarchical = path.startswith("hierarchical")
    assert r["checks"] == checks, r
    assert r["transfer_path"].startswith(path), r["transfer_path"]
    want, grew = r["expected"], r["stats_grew"]
    assert grew["direct_bytes"] == want["direct_bytes"], (grew, want)
    assert grew["oneccl_bytes"] == want["oneccl_bytes"], (grew, want)
    assert grew["hierarchical_ops"] == (want["ops"] if hierarchical else 0), (grew, want)
    assert (want["direct_bytes"] > 0) == same_host, want
    assert (want["oneccl_bytes"] > 0) == hierarchical, want


def check(out_dir, hosts, path):
    """hosts: each rank's host; path: the world group's transfer_path prefix.
    Where the ranks ran with --host-groups, each host's own group too."""
    for r in results(out_dir, len(hosts)):
        assert not r["failures"], "\n".join(r["failures"][:10])
        assert r["hosts"] == hosts, r["hosts"]
        assert r["flat_path"].startswith("oneccl (turned off"), r["flat_path"]
        check_group(r, path, hosts.count(r["host"]) > 1)
        if "host_group" in r:
            g = r["host_group"]
            assert g["size"] == hosts.count(r["host"]), g
            check_group(g, "local", g["size"] > 1, checks=CHECKS - 3 * 5)


def env_jobs(tmp_path, placement, *extra):
    """Ranks started with torchrun-style variables on their hosts
    (placement[rank]: the host's index)."""
    port, world, jobs = free_port(), len(placement), []
    for rank, h in enumerate(placement):
        jobs.append((f"node{h}", [sys.executable, WORKER, str(tmp_path), *extra],
                     job_env(RANK=str(rank), WORLD_SIZE=str(world),
                             LOCAL_RANK=str(placement[:rank].count(h)),
                             LOCAL_WORLD_SIZE=str(placement.count(h)),
                             MASTER_ADDR=f"node{placement[0]}",
                             MASTER_PORT=str(port))))
    return jobs


@pytest.mark.parametrize("cluster, placement", [
    pytest.param(2, [0, 0, 1, 1], id="2x2-consecutive"),
    pytest.param(2, [0, 1, 0, 1], id="2x2-interleaved"),  # blocks between hosts not contiguous
    pytest.param(2, [0, 0, 1], id="2+1"),                  # a host with one rank
    # 3 hosts, 2+2+1 ranks, interleaved: two hosts' direct reads at once, a
    # lone middle host, every rank packs its blocks between hosts; each
    # host's own group stays local
    pytest.param(3, [0, 1, 2, 0, 1], id="2+2+1-interleaved"),
], indirect=["cluster"])
def test_hierarchical_env_rendezvous(cluster, tmp_path, placement):
    """torchrun-style variables on each host (oneCCL's OFI transport)."""
    need_ccl()
    world, nhosts = len(placement), max(placement) + 1
    extra = ["--host-groups"] if nhosts > 2 else []
    jobs = env_jobs(tmp_path, placement, "--timeout", str(TIMEOUT_S), *extra)
    names = [f"node{h}" for h in range(nhosts)]
    before = [cluster.counters(h) for h in names]
    check_all_ok(cluster.run_all(jobs, timeout=300))
    check(tmp_path, [f"node{h}" for h in placement], f"hierarchical ({nhosts} hosts")
    # the blocks between the hosts really crossed the links: each host
    # received at least what its ranks got over oneCCL in the world group
    for h, b in zip(names, before):
        rx = cluster.counters(h)[0] - b[0]
        got = sum(r["expected"]["oneccl_bytes"] for r in results(tmp_path, world)
                  if r["host"] == h)
        assert rx > got > 0, (h, rx, got)


def test_hierarchical_ipex_train_run(cluster, tmp_path):
    """2 hosts x 2 ranks through ipex-train-run's hostfile launch (oneCCL's
    MPI transport, held to TCP as in test_multihost)."""
    need_ccl()
    p = cluster.run("node0", ["ipex-train-run", "--nnodes", "2", "--nproc-per-node", "2",
                              "--hostfile", cluster.hostfile(), WORKER, str(tmp_path),
                              "--timeout", str(TIMEOUT_S)], env=job_env(), timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-4000:]}"
    check(tmp_path, ["node0", "node0", "node1", "node1"], "hierarchical (2 hosts, 2 ranks")


def test_one_host_stays_local(tmp_path):
    """Every rank on one host: the flat direct path (no oneCCL, nothing
    hierarchical), as before the hierarchical path existed."""
    need_ccl()
    if not cma_between_siblings():
        pytest.skip("sibling processes may not read each other's memory here (ptrace_scope)")
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable, WORKER, str(tmp_path),
             "--timeout", str(TIMEOUT_S)], timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    host = results(tmp_path, 2)[0]["host"]
    check(tmp_path, [host, host], "local")


def test_killed_rank_fails_every_rank_within_the_timeout(cluster, tmp_path):
    """2 x 2 ranks in a loop of hierarchical all-to-alls; rank 3 (node1) is
    SIGKILLed. Rank 2 (its host's other rank) sees it gone in the direct
    reads and raises at once (or at the timeout, had it been waiting in
    oneCCL); ranks 0 and 1 wait in oneCCL for its blocks and raise at the
    group's timeout: one op, under the usual timeout and abort."""
    need_ccl()
    timeout_s = 10
    procs = [cluster.popen(h, argv, env) for h, argv, env in
             env_jobs(tmp_path, [0, 0, 1, 1], "--timeout", str(timeout_s), "--loop")]
    try:
        end = time.monotonic() + 180
        ready = [tmp_path / f"ready.{r}" for r in range(4)]
        while not all(f.exists() and f.read_text().endswith("\n") for f in ready):
            assert time.monotonic() < end and all(p.poll() is None for p in procs), \
                [p.poll() for p in procs]
            time.sleep(0.2)
        time.sleep(0.5)
        killed = time.time()
        os.kill(int(ready[3].read_text().split()[0]), signal.SIGKILL)
        for r, p in enumerate(procs[:3]):
            p.wait(timeout=timeout_s + 40)
            err = json.loads((tmp_path / f"error.{r}").read_text())
            assert p.returncode == 4, (r, p.returncode)
            took = err["time"] - killed
            assert took < timeout_s + 15, (r, took, err)
            assert any(w in err["message"] for w in ("rank 3", "timed out", "aborted")), err
    finally:
        for p in procs:
            kill_tree(p.pid)
