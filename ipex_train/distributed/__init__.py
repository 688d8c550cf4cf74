"""The "ccl" process group for torch.distributed, and rank discovery.

Importing this module registers the backend (``import ipex_train`` alone does
not: it loads only the op library, so oneCCL and MPI stay optional)::

    import torch.distributed as dist
    import ipex_train.distributed as ipd

    ipd.init_from_env()                 # torchrun, mpiexec, Open MPI or Slurm
    # or: dist.init_process_group("ccl", init_method=..., rank=r, world_size=n)
    dist.all_reduce(torch.ones(4))

The backend works on CPU tensors; see native/ccl/README.md for what each
collective does and how failures surface (a dead peer makes the others raise
within the process group's timeout). A process that imported this module
also waits at exit for gloo's worker threads to settle (_gloo_exit.py: a
late one aborted the process with torch 2.13).
"""
import atexit
import ctypes
import datetime
import os
import sys
import threading

import torch.distributed as dist

from . import _gloo_exit, _sharded_tensor
from ._env import RankInfo, check_hosts, choose_interface, discover, ensure_ccl_env
from ._lib import load as _load

__all__ = ["init_from_env", "discover", "RankInfo", "ProcessGroupCCL", "BACKEND"]

BACKEND = "ccl"


_ccl_created = False  # a ccl group was made in this process (oneCCL holds state)
_setup_stuck = []     # set-up threads left inside oneCCL after their timeout


def _create_ccl(store, rank, size, timeout):
    """torch.distributed's creator hook: (store, rank, size, timedelta) -> Backend.

    The set-up (oneCCL's key-value store and communicator) runs within the
    group's timeout: oneCCL waits forever when a rank never comes or its
    transport cannot connect (FI_TCP_IFACE naming the wrong interface was
    seen to hang in create_communicator), so it runs on a thread of its own
    (the binding releases the GIL) and the caller gets a DistBackendError at
    the timeout; the stuck thread is left behind and the process later ends
    without oneCCL's teardown (see _exit_without_teardown).
    """
    global _ccl_created
    ensure_ccl_env()
    _sharded_tensor.mend_empty_shard_device(BACKEND)
    check_hosts(store, rank, size)
    lib, secs = _load(), timeout.total_seconds()
    box = {}

    def make():
        try:
            box["pg"] = lib.ProcessGroupCCL(store, rank, size, secs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    _ccl_created = True
    th = threading.Thread(target=make, name=f"ccl-setup-rank{rank}", daemon=True)
    th.start()
    th.join(secs)
    if th.is_alive():
        _setup_stuck.append(th)
        env = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in (
            "CCL_ATL_TRANSPORT", "FI_TCP_IFACE", "CCL_KVS_IFACE", "UCX_NET_DEVICES"))
        raise dist.DistBackendError(
            f"ccl process group set-up (rank {rank} of {size}) did not finish within its "
            f"timeout of {secs:g} s: did every rank start, and do the interfaces name the "
            f"network between the hosts? ({env})")
    if "error" in box:
        raise box["error"]
    return box["pg"]


@atexit.register
def _exit_without_teardown():
    """Ends a process that used oneCCL without running oneCCL's teardown,
    keeping the exit status the script chose.

    oneCCL's static destructors crash under a worker thread an aborted group
    left inside a oneCCL call, and a group still alive at exit (no
    destroy_process_group) tears its communicator down against peers that
    may be gone or busy: seen blocking in a socket read until the peer's next
    collective, or aborting ("terminate called without an active
    exception"). So, once interpreter teardown is done, the process ends
    with _exit(status) before any C++ static destructor: glibc's on_exit
    hands its handler the status exit() was called with, and _exit takes it
    as its one argument. Groups still alive are kept alive until then (an
    extra reference each), so none is destroyed during interpreter teardown.
    The handler (native/ccl/exit_path.cpp) first finalizes MPI on success
    and ends the rank's PMI session with MPICH's launcher, which MPICH
    leaves to an atexit hook that _exit skips (without it hydra SIGKILLs
    the rank's siblings on its host).
    """
    mod = sys.modules.get("ipex_train._ccl")
    if mod is None or not _ccl_created:
        return
    # before Python finalizes: the groups' threads stop dropping tensors
    # (a last reference may need the GIL, fatal for a thread once Python
    # finalizes: seen as SIGABRT at a normal exit, issue #13 item 13)
    mod.prepare_exit()
    try:
        from torch.distributed import distributed_c10d as c10d
        for pg in list(getattr(c10d._world, "pg_map", {})):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(pg))
    except Exception:  # torch internals moved: still skip the C++ teardown
        pass
    if mod.any_aborted() or _setup_stuck:
        what = "was aborted" if mod.any_aborted() else "set-up timed out"
        print(f"ipex_train.distributed: a ccl process group {what}; exiting without oneCCL "
              "teardown", file=sys.stderr, flush=True)
    if not mod.end_without_teardown(bool(_setup_stuck)):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # the old way: status lost, teardown skipped


# Registered after _exit_without_teardown, so it runs first: gloo's workers
# settle before the interpreter finalizes (a late one aborts the process).
atexit.register(_gloo_exit.settle)


def _register():
    if "ccl" not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND, _create_ccl, devices=["cpu"])


def __getattr__(name):
    if name == "ProcessGroupCCL":
        return _load().ProcessGroupCCL
    raise AttributeError(name)


def init_from_env(backend=BACKEND, timeout=None, **kwargs):
    """Initialises torch.distributed from the launcher's environment.

    Rank, world size and local rank come from torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK), MPICH / Intel MPI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID), Open
    MPI (OMPI_COMM_WORLD_*) or Slurm (SLURM_PROCID, SLURM_NTASKS, ...). When
    MASTER_ADDR is unset under MPI, rank 0's address is broadcast with mpi4py
    (127.0.0.1 when all ranks share one node). oneCCL's environment is set for
    the backend unless the user set it. Returns the RankInfo found.
    """
    info = discover()
    os.environ.setdefault("RANK", str(info.rank))
    os.environ.setdefault("WORLD_SIZE", str(info.world_size))
    os.environ.setdefault("LOCAL_RANK", str(info.local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(info.local_size))
    os.environ["MASTER_ADDR"] = info.master_addr
    os.environ["MASTER_PORT"] = str(info.master_port)
    if not info.single_node:
        choose_interface(info)  # for gloo groups too (GLOO_SOCKET_IFNAME)
    if backend == BACKEND:
        ensure_ccl_env(info)
    if timeout is not None and not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    if timeout is not None:
        kwargs["timeout"] = timeout
    gloo = "gloo" in str(backend)  # "gloo", or per device: "cpu:gloo,cuda:nccl"
    before = _gloo_exit.threads() if gloo else None
    dist.init_process_group(backend, init_method="env://", rank=info.rank,
                            world_size=info.world_size, **kwargs)
    if gloo:  # gloo's workers, waited for at exit (_gloo_exit)
        _gloo_exit.track(before)
    return info


_register()
