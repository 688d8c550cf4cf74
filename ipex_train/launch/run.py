"""ipex-train-run: start a training script on N ranks per node through MPI.

    ipex-train-run --nproc-per-node 2 train.py --lr 0.1
    ipex-train-run --nproc-per-node 4 --nnodes 2 --hostfile hosts train.py
    ipex-train-run --nproc-per-node 2 --dry-run train.py   # print, do not run

It runs the environment's own ``mpiexec`` (pip MPICH) or, failing that, the
first MPI on PATH (``--mpi`` picks one), recognising MPICH / Intel MPI (hydra)
and Open MPI and using each one's flags. Every rank gets its share of this
node's cores: ``--ccl-workers K`` keeps K of each rank's cores for oneCCL's
worker threads (CCL_WORKER_AFFINITY) and gives the rest to OpenMP
(OMP_NUM_THREADS, GOMP/KMP affinity); ranks are pinned by _rank.py (beside
this file), which execs the script. Ranks find each other with
``ipex_train.distributed.init_from_env()``.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys

from ._cores import UsageError, plan_cores
from ._ports import free_port

_RANK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rank.py")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ipex-train-run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", type=int, required=True, help="ranks on each node")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--hostfile", help="MPI hostfile, required when --nnodes > 1")
    p.add_argument("--ccl-workers", type=int, default=0,
                   help="oneCCL worker threads per rank, each on a core of its own "
                        "(default 0: progress runs on the calling thread)")
    p.add_argument("--transport", choices=["ofi", "mpi"], default=None,
                   help="oneCCL transport (default: mpi under MPICH / Intel MPI, else ofi)")
    p.add_argument("--oversubscribe", action="store_true",
                   help="allow more ranks (plus ccl workers) than cores on the node")
    p.add_argument("--mpi", help="path of the mpiexec/mpirun to use")
    p.add_argument("--dry-run", action="store_true", help="print the command and environment only")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    a = p.parse_args(argv)
    if a.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {a.nproc_per_node}")
    if a.nnodes < 1:
        raise UsageError(f"--nnodes must be >= 1, got {a.nnodes}")
    if a.ccl_workers < 0:
        raise UsageError(f"--ccl-workers must be >= 0, got {a.ccl_workers}")
    if a.nnodes > 1 and not a.hostfile:
        raise UsageError(f"--nnodes {a.nnodes} needs --hostfile listing the nodes")
    if a.hostfile and not os.path.isfile(a.hostfile):
        raise UsageError(f"hostfile {a.hostfile!r} does not exist")
    if not os.path.isfile(a.script):
        raise UsageError(f"script {a.script!r} does not exist")
    return a


def find_mpi(path=None):
    """(executable, flavour) with flavour 'hydra' (MPICH, Intel MPI) or 'openmpi'."""
    if path:
        exe = shutil.which(path)
        if exe is None:
            raise UsageError(f"--mpi {path!r} is not an executable")
    else:
        here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        exe = here if os.access(here, os.X_OK) else (shutil.which("mpiexec") or shutil.which("mpirun"))
        if exe is None:
            raise UsageError("no MPI found: install one (`make setup` installs pip mpich) or pass --mpi")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"could not run {exe} --version: {e}") from e
    if "HYDRA" in text or "Intel(R) MPI" in text:
        return exe, "hydra"
    if "Open MPI" in text or "OpenRTE" in text or "prte" in text.lower():
        return exe, "openmpi"
    first = text.strip().splitlines()[0] if text.strip() else "no output"
    raise UsageError(f"unknown MPI at {exe} ({first!r}): supported are MPICH / Intel MPI "
                     "(hydra) and Open MPI")


def build(a, exe, flavour, cores):
    """Returns (argv, env) for the launch: env holds only what we set."""
    total = a.nproc_per_node * a.nnodes
    plan = plan_cores(cores, a.nproc_per_node, a.ccl_workers, a.oversubscribe)
    # default: oneCCL's MPI transport under MPICH / Intel MPI (fastest measured),
    # when its libmpi.so.12 is at hand; OFI (libfabric, tcp) otherwise
    libmpi = any(os.path.exists(os.path.join(r, "lib", "libmpi.so.12")) for r in
                 (os.environ.get("I_MPI_ROOT") or "/nonexistent", sys.prefix))
    transport = a.transport or ("mpi" if flavour == "hydra" and libmpi else "ofi")
    if transport == "mpi" and flavour != "hydra":
        raise UsageError("--transport mpi needs MPICH or Intel MPI (oneCCL loads libmpi.so.12); "
                         "this is Open MPI: use --transport ofi")
    env = {
        "IPT_RANK_CORES": plan.encode(),
        "OMP_NUM_THREADS": str(plan.threads),
        "CCL_ATL_TRANSPORT": transport,
        "CCL_PROCESS_LAUNCHER": "none",
        "CCL_WORKER_COUNT": str(max(a.ccl_workers, 1)),
        "CCL_WORKER_OFFLOAD": "1" if a.ccl_workers else "0",
        # torch backs CPU allocations >= 2 MiB with transparent huge pages:
        # fewer TLB misses on large tensors, and the ccl backend's single-node
        # all-to-all reads a peer's huge-page buffer 2.4x faster than 4 KiB
        # pages (process_vm_readv pins each page; measured here at 8-32 MiB)
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "1"),
    }
    if a.ccl_workers:
        env["CCL_WORKER_AFFINITY"] = ",".join(str(c) for c in plan.worker_cores_all())
    if transport == "ofi":
        env["FI_PROVIDER"] = os.environ.get("FI_PROVIDER", "tcp")
    if a.nnodes == 1:
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                    "FI_TCP_IFACE": "lo", "CCL_KVS_IFACE": "lo"})
    cmd = [exe]
    if flavour == "hydra":
        cmd += ["-n", str(total), "-ppn", str(a.nproc_per_node)]
        if a.hostfile:
            cmd += ["-f", a.hostfile]
        for k, v in env.items():
            cmd += ["-genv", k, v]
    else:
        cmd += ["-np", str(total), "--map-by", f"ppr:{a.nproc_per_node}:node", "--bind-to", "none"]
        if a.hostfile:
            cmd += ["--hostfile", a.hostfile]
        if a.oversubscribe or plan.oversubscribed:
            cmd += ["--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
        for k, v in env.items():
            cmd += ["-x", f"{k}={v}"]
    # _rank.py by path, not -m: as a module it would import ipex_train, and so
    # torch, in every rank before the script imports it again
    cmd += [sys.executable, _RANK, a.script] + a.args
    return cmd, env, plan


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        a = parse_args(argv)
        exe, flavour = find_mpi(a.mpi)
        cores = sorted(os.sched_getaffinity(0))
        cmd, env, plan = build(a, exe, flavour, cores)
    except UsageError as e:
        print(f"ipex-train-run: error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        print(f"# MPI: {exe} ({flavour})")
        for line in plan.describe():
            print(f"# {line}")
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
        print(shlex.join(cmd))
        return 0
    full = dict(os.environ)
    full.update(env)
    try:
        return subprocess.call(cmd, env=full)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
