"""Starting, timing out and cleaning up the processes a test (or benchmark) launches.

Every multi-process test goes through here. Processes start with a clean
launcher environment in a session of their own; their output goes to files, so
no pipe can fill up and stall a rank; at the end (success, timeout or error)
everything they started is killed: the tree below each process and whatever
is left in its session, since MPI ranks sit in process groups of their own and
a rank stuck in oneCCL would otherwise spin on after the test.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

from ipex_train.launch._ports import free_port, free_ports  # noqa: F401  (re-exported)
from ipex_train.launch._supervise import process_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# launcher / rendezvous variables a developer's shell might carry
_STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
          "SLURM_NTASKS", "THP_MEM_ALLOC_ENABLE")
# oneCCL over OFI/tcp on loopback, for ranks not started by an MPI launcher
LOOPBACK_CCL = dict(CCL_ATL_TRANSPORT="ofi", FI_PROVIDER="tcp", FI_TCP_IFACE="lo",
                    CCL_KVS_IFACE="lo", CCL_PROCESS_LAUNCHER="none", CCL_WORKER_OFFLOAD="0")


class ProcessTimeout(AssertionError):
    """Some processes were still running at the deadline (they have been killed)."""


def clean_env(**extra):
    """os.environ without launcher, rendezvous and oneCCL/libfabric variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in _STRIP and not k.startswith(("CCL_", "FI_", "IPT_RANK"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def rank_env(rank, world, port, **extra):
    """clean_env with torchrun's variables for `rank` of `world` on 127.0.0.1:`port`."""
    return clean_env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world,
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra)


def tree(pid):
    """`pid`'s descendants, and the other members of the session it leads."""
    return process_tree(pid) - {pid}


def kill_tree(pid, itself=True):
    """SIGKILLs `pid` (unless not `itself`: already reaped, its number may be
    reused) and everything `tree` finds below it, until none is left."""
    for _ in range(20):
        victims = tree(pid)
        for v in ([pid] if itself else []) + sorted(victims):
            try:
                os.kill(v, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not victims:
            return
        time.sleep(0.05)


def _read(f):
    f.seek(0)
    return f.read().decode(errors="replace")


class Procs:
    """Commands started at once (a context manager: leaving it kills every tree).

    Output goes to files (stdout and stderr merged with `merge`); `output(i)`
    reads what process i wrote so far, `kill(i)` ends its tree, `wait`
    collects the results under a deadline.
    """

    def __init__(self, cmds, envs=None, cwd=ROOT, merge=True):
        envs = envs or [clean_env()] * len(cmds)
        self.cmds, self.merge, self.procs, self.files = cmds, merge, [], []
        try:
            for cmd, env in zip(cmds, envs, strict=True):
                out = tempfile.TemporaryFile()
                err = out if merge else tempfile.TemporaryFile()
                self.files.append((out, err))
                self.procs.append(subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env,
                                                   stdout=out, stderr=err,
                                                   start_new_session=True))
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def output(self, i):
        fd = self.files[i][0].fileno()  # pread: the file offset is shared with the writer
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def kill(self, i):
        p = self.procs[i]
        kill_tree(p.pid, itself=p.poll() is None)
        p.wait()

    def wait(self, timeout):
        """A CompletedProcess per command (stderr "" with `merge`); at the deadline
        every tree is killed and ProcessTimeout names those still running, with
        the tail of every output."""
        deadline = time.monotonic() + timeout
        late = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                late.append(i)
        if late:
            for i in range(len(self.procs)):
                self.kill(i)
            tails = "\n".join(f"--- process {i} ({'killed' if i in late else p.returncode})"
                              f":\n{_read(self.files[i][0])[-3000:]}"
                              for i, p in enumerate(self.procs))
            raise ProcessTimeout(f"process(es) {late} of {len(self.procs)} still running after "
                                 f"{timeout} s; killed them all\n{tails}")
        return [subprocess.CompletedProcess(cmd, p.returncode, _read(out),
                                            "" if self.merge else _read(err))
                for cmd, p, (out, err) in zip(self.cmds, self.procs, self.files)]

    def close(self):
        """Kills every tree (also after success: nothing a test started outlives it)."""
        for i in range(len(self.procs)):
            self.kill(i)
        for out, err in self.files:
            out.close()
            err.close()
        self.procs, self.files = [], []


def run_all(cmds, timeout, envs=None, cwd=ROOT, merge=True):
    """Starts every command at once and waits for all of them under one deadline
    (Procs.wait); returns a CompletedProcess per command."""
    with Procs(cmds, envs, cwd, merge) as ps:
        return ps.wait(timeout)


def run(cmd, timeout, env=None, cwd=ROOT, merge=False):
    """One command (a launcher, say) under run_all's rules; stdout and stderr apart."""
    return run_all([cmd], timeout, [env or clean_env()], cwd, merge)[0]


def start_ranks(cmd, world, port=None, **extra):
    """Procs of `world` copies of `cmd` with torchrun's variables (env:// on
    127.0.0.1:`port`) plus `extra`; `cmd` is a list or a function rank -> list."""
    port = port or free_port()
    cmds = [cmd(r) if callable(cmd) else cmd for r in range(world)]
    return Procs(cmds, [rank_env(r, world, port, **extra) for r in range(world)])


def run_ranks(cmd, world, timeout, port=None, **extra):
    """start_ranks, then wait: a CompletedProcess per rank (output merged)."""
    with start_ranks(cmd, world, port, **extra) as ps:
        return ps.wait(timeout)


def check_all_ok(results, tail=4000):
    """Asserts every process exited 0, showing the failed ones' output."""
    bad = [f"--- process {i} exited {r.returncode}:\n{(r.stdout + r.stderr)[-tail:]}"
           for i, r in enumerate(results) if r.returncode != 0]
    assert not bad, "\n".join(bad)
