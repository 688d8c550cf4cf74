"""What the ccl tests share: the backend's presence (a failure, never a silent
fallback to gloo), per-rank JSON results, and whether sibling processes may
read each other's memory. Starting processes is tests._procs' job."""
import functools
import glob
import json
import os
import subprocess
import sys

import pytest

from tests._procs import BIN

HERE = os.path.dirname(os.path.abspath(__file__))


def need_ccl():
    """Fails the test (never skips) when the ccl backend or pip mpich's mpiexec is missing."""
    try:
        from ipex_train.distributed._lib import load
        load()
    except ImportError as e:
        pytest.fail(f"ccl backend unavailable: {e} (deselect with -m 'not ccl')")
    if not os.path.exists(os.path.join(BIN, "mpiexec")):
        pytest.fail("pip mpich's mpiexec missing from the environment (make setup installs it)")


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
