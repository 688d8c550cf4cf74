"""Training across hosts: collectives and DLRM over two simulated hosts
(network namespaces joined by a veth link, _hosts.py), started the ways a
user starts them: `ipex-train-run --nnodes 2 --hostfile` on the first host
(MPI over the ssh stand-in) and torchrun-style variables on each host."""
import json
import os
import sys

import pytest

from tests._procs import ROOT, check_all_ok, free_port
from tests.distributed._ccl import need_ccl, results
from tests.multihost._hosts import HERE

pytestmark = [pytest.mark.multiproc, pytest.mark.ccl, pytest.mark.multihost]

WORKER = os.path.join(HERE, "_worker_xhost.py")
TIMEOUT_S = 60  # the process group's timeout inside the ranks


def job_env(**extra):
    """What a user's shell on node0 holds: the checkout on PYTHONPATH. UCX
    takes shared memory between namespaces of one kernel (it sees one
    machine), so the MPI transport is held to TCP to cross the link like
    between real hosts; the interface is left to our backend to choose."""
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ROOT), "PYTHONUNBUFFERED": "1",
           "UCX_TLS": "tcp,self"}
    env.update(extra)
    return env


def check(p, out_dir, world, hosts=2):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-4000:]}"
    rs = results(out_dir, world)
    for r in rs:
        assert not r["failures"], "\n".join(r["failures"][:10])
        # per size: 12 on every rank, reduce checked on rank 0, gather on the last
        me = r["rank"]
        assert r["checks"] == 3 * (12 + (me == 0) + (me == world - 1)), r
        # all-to-all: direct reads between ranks sharing a host (test_hierarchical.py)
        assert r["transfer_path"].startswith("hierarchical (2 hosts" if world > hosts else
                                             "oneccl (every rank runs on a host of its own"), r
        assert r["env"]["FI_TCP_IFACE"] == "mh0" and r["env"]["UCX_NET_DEVICES"] == "mh0", r["env"]
    per_host = world // hosts
    assert [r["host"] for r in rs] == [f"node{i // per_host}" for i in range(world)]
    return rs


@pytest.mark.parametrize("per_host", [1, 2])
def test_collectives_ipex_train_run(cluster, tmp_path, per_host):
    """2 hosts x 1 and 2 x 2 ranks through ipex-train-run's hostfile launch
    (oneCCL's MPI transport); every byte between the hosts crosses the link."""
    need_ccl()
    before = cluster.counters("node1")
    p = cluster.run("node0", ["ipex-train-run", "--nnodes", "2", "--nproc-per-node", str(per_host),
                              "--hostfile", cluster.hostfile(), WORKER, str(tmp_path),
                              "--timeout", str(TIMEOUT_S)], env=job_env(), timeout=240)
    check(p, tmp_path, 2 * per_host)
    rx, tx = (a - b for a, b in zip(cluster.counters("node1"), before))
    # each size's all_gather alone brings node1 the other host's share: > 4 MiB
    assert rx > 8 << 20 and tx > 8 << 20, (rx, tx)
    assert "interface mh0 routes to MASTER_ADDR" in p.stderr


def test_collectives_env_rendezvous(cluster, tmp_path):
    """torchrun-style variables on each host (oneCCL's OFI transport), with
    MASTER_ADDR naming node0: the interface for OFI comes from the route."""
    need_ccl()
    port = free_port()
    jobs = [(f"node{rank // 2}", [sys.executable, WORKER, str(tmp_path), "--timeout", str(TIMEOUT_S)],
             job_env(RANK=str(rank), WORLD_SIZE="4", LOCAL_RANK=str(rank % 2), LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="node0", MASTER_PORT=str(port))) for rank in range(4)]
    check_all_ok(cluster.run_all(jobs, timeout=300))
    for r in check(type("P", (), {"returncode": 0})(), tmp_path, 4):
        assert r["env"]["CCL_ATL_TRANSPORT"] == "ofi"


DLRM = ["--batch-size", "256", "--max-rows", "2000", "--embedding-dim", "8", "--bottom-mlp",
        "32-8", "--top-mlp", "32-1", "--eval-batches", "4", "--eval-every", "0", "--log-every",
        "1", "--no-progress", "--threads", "1", "--steps", "5", "--dtype", "fp32",
        "--embeddings", "fused", "--emb-optimizer", "rowwise_adagrad", "--backend", "ccl"]


def test_dlrm_two_hosts_equals_one_host(cluster, tmp_path):
    """examples/dlrm at world size 2: one rank per host gives the losses of
    two ranks on one host, bit for bit (the same reductions in the same
    order; only the transport differs)."""
    need_ccl()
    train = os.path.join(ROOT, "examples", "dlrm", "train.py")
    runs = {}
    for name, launch in (("one host", ["--nproc-per-node", "2"]),
                         ("two hosts", ["--nnodes", "2", "--nproc-per-node", "1", "--hostfile",
                                        cluster.hostfile()])):
        out = tmp_path / f"{name.replace(' ', '_')}.json"
        p = cluster.run("node0", ["ipex-train-run", *launch, train, *DLRM, "--metrics-out",
                                  str(out)], env=job_env(), timeout=300)
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        runs[name] = json.loads(out.read_text())
    one, two = runs["one host"], runs["two hosts"]
    assert one["world_size"] == two["world_size"] == 2
    assert sorted(one["losses"]) == sorted(two["losses"]) == [str(s) for s in range(1, 6)]
    assert one["losses"] == two["losses"]
    assert one["evals"][-1]["auc"] == two["evals"][-1]["auc"]



def test_master_addr_is_one_the_others_reach():
    """Issue #13 item 6: rank 0 published gethostbyname(hostname), 127.0.1.1
    on Debian-style hosts. Now it publishes its address on the network the
    other hosts share (then the hostname's, then the first), never loopback."""
    from ipex_train.launch._net import pick_master_addr
    net = lambda *parts: ".".join(map(str, parts))  # noqa: E731
    mine = [(net(172, 17, 0, 1), 16), (net(10, 9, 8, 1), 24)]
    others = [[(net(10, 9, 8, 2), 24)], [(net(10, 9, 8, 3), 24), (net(172, 18, 0, 5), 16)]]
    assert pick_master_addr(mine, others, "127.0.1.1") == net(10, 9, 8, 1)
    assert pick_master_addr(mine, [[]], net(172, 17, 0, 1)) == net(172, 17, 0, 1)
    assert pick_master_addr([], others) is None


def test_loopback_master_addr_across_hosts_is_refused(monkeypatch):
    from ipex_train.distributed._env import RankInfo, choose_interface
    info = RankInfo("torchrun", 1, 4, 1, 2, "127.0.0.1", 29500)
    with pytest.raises(RuntimeError, match="loopback address on host .* but the ranks span hosts"):
        choose_interface(info)
    info = RankInfo("torchrun", 1, 4, 1, 2, "no-such-host.invalid", 29500)
    with pytest.raises(RuntimeError, match="does not resolve"):
        choose_interface(info)


def test_no_namespaces_fail_in_ci_and_skip_elsewhere(monkeypatch):
    from tests.multihost import _hosts
    monkeypatch.setattr(_hosts, "unavailable", lambda: "needs root (network namespaces)")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI needs them.*needs root|needs root.*CI needs"):
        _hosts.require()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        _hosts.require()
