"""Helpers for the multi-process tests: run a command on 127.0.0.1 with a
timeout and a clean environment, and read the per-rank JSON results."""
import functools
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.dirname(sys.executable)
# launcher / rendezvous variables a developer's shell might carry
_STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
          "SLURM_NTASKS", "THP_MEM_ALLOC_ENABLE")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in _STRIP and not k.startswith(("CCL_", "FI_", "IPT_RANK"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def need_ccl():
    try:
        import ipex_train.distributed  # noqa: F401
        from ipex_train.distributed._lib import load
        load()
    except ImportError as e:
        pytest.fail(f"ccl backend unavailable: {e}")
    if not os.path.exists(os.path.join(BIN, "mpiexec")):
        pytest.fail("pip mpich's mpiexec missing from the environment (make setup installs it)")


def _descendants(pid):
    """PIDs of every process below `pid` (from /proc), deepest last."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def run(cmd, timeout, **env):
    """Runs cmd (a launcher) to completion; on timeout ends it and every
    process it started (MPI ranks sit in process groups of their own, and a
    rank stuck in oneCCL would otherwise spin on after the test), then raises."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(**env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [p.pid] + _descendants(p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def results(out_dir, world):
    files = sorted(glob.glob(os.path.join(out_dir, "rank*.json")))
    assert len(files) == world, f"expected {world} result files, got {files}"
    return [json.load(open(f)) for f in files]


_CMA_PROBE = r"""
import ctypes, os, sys
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc = ctypes.CDLL(None, use_errno=True)
pid, addr = int(sys.argv[1]), int(sys.argv[2])
buf = ctypes.create_string_buffer(8)
local, remote = iovec(ctypes.addressof(buf), 8), iovec(addr, 8)
n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
sys.exit(0 if n == 8 and buf.raw == b"ipt-cma!" else 1)
"""


@functools.lru_cache(maxsize=None)
def cma_between_siblings():
    """Whether one process may read a sibling's memory (process_vm_readv), as
    ranks started side by side must for the ccl backend's single-node
    all-to-all; an independent check of the backend's own probe. Yama
    ptrace_scope >= 1, another user or a seccomp filter make it False."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ctypes, sys\nb = ctypes.create_string_buffer(b'ipt-cma!', 8)\n"
         "print(ctypes.addressof(b), flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        addr = holder.stdout.readline().strip()
        rc = subprocess.run([sys.executable, "-c", _CMA_PROBE, str(holder.pid), addr],
                            timeout=60).returncode
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    return rc == 0
