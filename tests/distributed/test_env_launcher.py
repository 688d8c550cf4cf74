"""Rank discovery from each launcher's variables, and ipex-train-run's plans,
commands and error messages (no processes started except --dry-run)."""
import os

import pytest

from ipex_train.distributed._env import MPI_TRANSPORT_ALGORITHMS, discover, ensure_ccl_env
from ipex_train.launch._cores import UsageError, decode, plan_cores
from ipex_train.launch._ports import free_ports
from tests._procs import BIN, clean_env, run

ADDR = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env,want", [
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
     ("torchrun", 3, 4, 1, 2)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
     ("mpich", 1, 2, 1, 2)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"},
     ("openmpi", 5, 8, 1, 4)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "6", "SLURM_LOCALID": "0",
      "SLURM_NTASKS_PER_NODE": "3(x2)"}, ("slurm", 2, 6, 0, 3)),
    ({}, ("none", 0, 1, 0, 1)),
])
def test_discover(env, want):
    info = discover({**env, **ADDR})
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_size) == want
    assert info.single_node == (want[2] == want[4])
    assert (info.master_addr, info.master_port) == ("127.0.0.1", 29500)


def test_discover_errors():
    with pytest.raises(ValueError, match="outside world size"):
        discover({"RANK": "2", "WORLD_SIZE": "2", **ADDR})
    with pytest.raises(ValueError, match="PMI_SIZE"):
        discover({"PMI_RANK": "0", "PMI_SIZE": "two", **ADDR})
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2"})


@pytest.mark.parametrize("preset,want", [
    ({"CCL_ATL_TRANSPORT": "mpi"}, MPI_TRANSPORT_ALGORITHMS),
    ({"CCL_ATL_TRANSPORT": "mpi", "CCL_ALLREDUCE": "ring"},  # the user's choice stays
     {**MPI_TRANSPORT_ALGORITHMS, "CCL_ALLREDUCE": "ring"}),
    ({"CCL_ATL_TRANSPORT": "ofi"}, {}),  # "direct" means MPI_Iallreduce: MPI transport only
])
def test_ccl_env_algorithm_defaults(monkeypatch, preset, want):
    for k in list(os.environ):
        if k.startswith(("CCL_", "FI_", "MPIR_CVAR_")):
            monkeypatch.delenv(k)
    for k, v in preset.items():
        monkeypatch.setenv(k, v)
    ensure_ccl_env(discover(ADDR))
    assert {k: os.environ[k] for k in MPI_TRANSPORT_ALGORITHMS if k in os.environ} == want
    assert os.environ["CCL_WORKER_OFFLOAD"] == "0"


def test_plan_cores():
    p = plan_cores(range(8), 2, 1, False)
    assert p.compute == [[0, 1, 2], [4, 5, 6]] and p.workers == [[3], [7]]
    assert decode(p.encode(), 1) == ([4, 5, 6], [7])
    assert p.threads == 3 and not p.oversubscribed
    p = plan_cores([0, 1], 3, 0, True)
    assert p.compute == [[0], [1], [0]] and p.oversubscribed
    with pytest.raises(UsageError, match="--oversubscribe"):
        plan_cores([0, 1], 2, 1, False)


def _run(*args):
    return run([os.path.join(BIN, "ipex-train-run"), *args], timeout=60, env=clean_env())


def test_dry_run_prints_command_and_env(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    p = _run("--nproc-per-node", "2", "--transport", "mpi", "--dry-run", str(script), "--lr", "1")
    assert p.returncode == 0, p.stderr
    assert "export CCL_ATL_TRANSPORT=mpi" in p.stdout
    # each rank plans its own host's cores from (ranks per node, ccl workers, oversubscribe)
    assert "export FI_TCP_IFACE=lo" in p.stdout and "export IPT_CORE_PLAN=2,0,0" in p.stdout
    assert "export THP_MEM_ALLOC_ENABLE=1" in p.stdout
    last = p.stdout.strip().splitlines()[-1]
    assert "mpiexec -n 2 -ppn 2" in last and last.endswith(f"{script} --lr 1")


@pytest.mark.parametrize("args,needle", [
    (["--nproc-per-node", "64"], "--oversubscribe"),
    (["--nproc-per-node", "1", "--nnodes", "2"], "--hostfile"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--hostfile", "/nonexistent/hosts"], "does not exist"),
    (["--nproc-per-node", "1", "--mpi", "/bin/echo"], "unknown MPI"),
    (["--nproc-per-node", "0"], ">= 1"),
    (["--nproc-per-node", "1", "--contact-timeout", "0"], "positive finite number"),
    # a traceback (ValueError: Invalid value NaN) before
    (["--nproc-per-node", "1", "--contact-timeout", "nan"], "positive finite number of seconds, got nan"),
    (["--nproc-per-node", "1", "--contact-timeout", "inf"], "positive finite number of seconds, got inf"),
])
def test_bad_arguments(tmp_path, args, needle):
    script = tmp_path / "train.py"
    script.write_text("")
    p = _run(*args, "--dry-run", str(script))
    assert p.returncode == 2 and needle in p.stderr, p.stderr


def test_free_ports_distinct_bindable_and_outside_ephemeral_range():
    import socket
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 <= p < low for p in ports), (ports, low)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_ports_when_nothing_lies_below_the_ephemeral_range(monkeypatch):
    import socket

    import ipex_train.launch._ports as ports
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 1024)
    got = ports.free_ports(4)
    assert len(set(got)) == 4, got
    for p in got:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


@pytest.mark.parametrize("content,needle", [
    ("", "lists no hosts"),
    ("# only a comment\n\n", "lists no hosts"),
    ("node0\nnode0:two\n", "line 2: slots 'two'"),
    ("\x00\x01garbage\xff\n", "not text"),
    ("no/such host!\n", "line 1: 'no/such' is not a host name"),
    ("a;rm -rf\n", "line 1: 'a;rm' is not a host name"),
    ("node0 slots=x\n", "slots 'x'"),
    ("node0 extra\n", "line 1: unexpected 'extra'"),
])
def test_bad_hostfile_contents(tmp_path, content, needle):
    from ipex_train.launch.run import read_hostfile
    hosts = tmp_path / "hosts"
    hosts.write_bytes(content.encode("latin-1"))
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_hostfile(str(hosts))


@pytest.mark.parametrize("content,nnodes,needle", [
    ("\x00garbage\n", 1, "is not a host name"),
    ("node0\n", 2, "lists 1 host(s) but --nnodes is 2"),
])
def test_bad_hostfile_is_a_usage_error(tmp_path, content, nnodes, needle):
    """Issue #13 item 14: an empty, short or garbage hostfile was a traceback
    from the core planner in every rank, or silently accepted at --nnodes 1."""
    script = tmp_path / "train.py"
    script.write_text("")
    hosts = tmp_path / "hosts"
    hosts.write_bytes(content.encode("latin-1"))
    p = _run("--nproc-per-node", "1", "--nnodes", str(nnodes), "--hostfile", str(hosts),
             "--dry-run", str(script))
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_good_hostfile_formats(tmp_path):
    from ipex_train.launch.run import read_hostfile
    hosts = tmp_path / "hosts"
    hosts.write_text("# cluster\nnode0:2\n\nnode-1.example.org slots=4  # big one\nnode_2\n")
    assert read_hostfile(str(hosts)) == [("node0", 2), ("node-1.example.org", 4), ("node_2", None)]


def test_script_that_is_a_directory(tmp_path):
    p = _run("--nproc-per-node", "1", "--dry-run", str(tmp_path))
    assert p.returncode == 2 and "is a directory" in p.stderr, p.stderr


@pytest.mark.parametrize("user,flag,want,note", [
    ("ofi", None, "ofi", False),        # the user's export wins over our default
    ("ofi", "mpi", "mpi", True),        # an explicit flag wins, and says so
])
def test_user_transport_is_kept_or_overridden_aloud(tmp_path, user, flag, want, note):
    """Issue #13 item 8: ipex-train-run forced CCL_ATL_TRANSPORT with -genv over
    the user's own setting, silently."""
    script = tmp_path / "train.py"
    script.write_text("")
    env = clean_env(**({"CCL_ATL_TRANSPORT": user} if user else {}))
    args = ["--nproc-per-node", "1", "--dry-run"] + (["--transport", flag] if flag else [])
    p = run([os.path.join(BIN, "ipex-train-run"), *args, str(script)], timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert f"export CCL_ATL_TRANSPORT={want}" in p.stdout
    assert ("overrides CCL_ATL_TRANSPORT=ofi" in p.stderr) == note, p.stderr


def test_bad_user_transport(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    p = run([os.path.join(BIN, "ipex-train-run"), "--nproc-per-node", "1", "--dry-run",
             str(script)], timeout=60, env=clean_env(CCL_ATL_TRANSPORT="tcp"))
    assert p.returncode == 2 and "CCL_ATL_TRANSPORT='tcp'" in p.stderr, p.stderr
