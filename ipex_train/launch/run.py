"""ipex-train-run: start a training script on N ranks per node through MPI.

    ipex-train-run --nproc-per-node 2 train.py --lr 0.1
    ipex-train-run --nproc-per-node 4 --nnodes 2 --hostfile hosts train.py
    ipex-train-run --nproc-per-node 2 --dry-run train.py   # print, do not run

It runs the environment's own ``mpiexec`` (pip MPICH) or, failing that, the
first MPI on PATH (``--mpi`` picks one), recognising MPICH / Intel MPI (hydra)
and Open MPI and using each one's flags. Every rank gets its share of this
node's cores: ``--ccl-workers K`` keeps K of each rank's cores for oneCCL's
worker threads (CCL_WORKER_AFFINITY) and gives the rest to OpenMP
(OMP_NUM_THREADS, GOMP/KMP affinity); each rank's _rank.py (beside this
file) plans its own host's cores, pins itself and runs the script as its
child, reporting to this launcher (_supervise.py): a rank that fails, a
lost host, or SIGTERM/SIGHUP/SIGINT here end the whole job, and the
launcher returns the failed rank's status. Ranks find each other with
``ipex_train.distributed.init_from_env()``. Settings the user exported
(CCL_ATL_TRANSPORT, FI_PROVIDER, FI_TCP_IFACE, ...) are kept; a flag that
overrides one says so.
"""
import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

from . import _net
from ._cores import UsageError, plan_cores
from ._ports import free_port
from ._supervise import Supervisor

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
    p.add_argument("--contact-timeout", type=float, default=60.0,
                   help="seconds without word from a rank's host before the job is ended "
                        "(default 60)")
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
    if not (math.isfinite(a.contact_timeout) and a.contact_timeout > 0):
        raise UsageError(f"--contact-timeout must be a positive finite number of seconds, got "
                         f"{a.contact_timeout}")
    if a.nnodes > 1 and not a.hostfile:
        raise UsageError(f"--nnodes {a.nnodes} needs --hostfile listing the nodes")
    a.hosts = read_hostfile(a.hostfile) if a.hostfile else []
    if a.hostfile and len(a.hosts) < a.nnodes:
        raise UsageError(f"hostfile {a.hostfile!r} lists {len(a.hosts)} host(s) but --nnodes is "
                         f"{a.nnodes}")
    if os.path.isdir(a.script):
        raise UsageError(f"script {a.script!r} is a directory, not a Python script")
    if not os.path.isfile(a.script):
        raise UsageError(f"script {a.script!r} does not exist")
    return a


_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def read_hostfile(path):
    """[(host, slots or None)] from an MPI hostfile: one host per line as
    `host`, `host:slots` (MPICH) or `host slots=N` (Open MPI); `#` comments
    and blank lines ignored. Raises UsageError naming the bad line."""
    if os.path.isdir(path):
        raise UsageError(f"hostfile {path!r} is a directory")
    if not os.path.exists(path):
        raise UsageError(f"hostfile {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"hostfile {path!r} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UsageError(f"hostfile {path!r} is not text (one host name per line)") from None
    hosts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        host, _, slots = words[0].partition(":")
        if not _HOST.match(host) or len(host) > 253:
            raise UsageError(f"hostfile {path!r} line {n}: {host!r} is not a host name")
        for w in words[1:]:
            if w.startswith(("slots=", "max_slots=")) and not slots:
                slots = w.split("=", 1)[1] if w.startswith("slots=") else slots
            elif not w.startswith(("slots=", "max_slots=")):
                raise UsageError(f"hostfile {path!r} line {n}: unexpected {w!r} "
                                 "(expected `host`, `host:slots` or `host slots=N`)")
        if slots and not (slots.isdigit() and int(slots) > 0):
            raise UsageError(f"hostfile {path!r} line {n}: slots {slots!r} is not a positive integer")
        hosts.append((host, int(slots) if slots else None))
    if not hosts:
        raise UsageError(f"hostfile {path!r} lists no hosts")
    return hosts


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


def here_is_first(hosts):
    """Whether the hostfile's first host (rank 0's) is this machine."""
    name = hosts[0][0]
    if name.split(".")[0] == _net.socket.gethostname().split(".")[0]:
        return True
    mine = {a for a, _ in _net.own_addresses()}
    return any(_net.is_loopback(x) or x in mine for x in _net.resolve(name))


def toward_others(hosts):
    """This machine's address on the route to the first other host, or None."""
    mine = {a for a, _ in _net.own_addresses()}
    for name, _ in hosts[1:]:
        for x in _net.resolve(name):
            if not _net.is_loopback(x) and x not in mine:
                src = _net.source_addr(x)
                if src and not _net.is_loopback(src):
                    return src
    return None


def build(a, exe, flavour, cores, notes=None):
    """Returns (argv, env, plan) for the launch: env holds only what we set;
    `notes` collects what the user should be told (overridden settings)."""
    notes = [] if notes is None else notes
    total = a.nproc_per_node * a.nnodes
    plan = plan_cores(cores, a.nproc_per_node, a.ccl_workers, a.oversubscribe)
    # default: oneCCL's MPI transport under MPICH / Intel MPI (fastest measured),
    # when its libmpi.so.12 is at hand; OFI (libfabric, tcp) otherwise
    libmpi = any(os.path.exists(os.path.join(r, "lib", "libmpi.so.12")) for r in
                 (os.environ.get("I_MPI_ROOT") or "/nonexistent", sys.prefix))
    # the user's own CCL_ATL_TRANSPORT wins over our default; --transport over both (said)
    user = os.environ.get("CCL_ATL_TRANSPORT")
    if user and user not in ("ofi", "mpi"):
        raise UsageError(f"CCL_ATL_TRANSPORT={user!r} in the environment: expected ofi or mpi")
    transport = a.transport or user or ("mpi" if flavour == "hydra" and libmpi else "ofi")
    if a.transport and user and user != a.transport:
        notes.append(f"--transport {a.transport} overrides CCL_ATL_TRANSPORT={user} from the "
                     "environment")
    if transport == "mpi" and flavour != "hydra":
        raise UsageError("--transport mpi needs MPICH or Intel MPI (oneCCL loads libmpi.so.12); "
                         "this is Open MPI: use --transport ofi")
    env = {
        # each rank plans its host's cores itself (_rank.py): hosts may differ
        "IPT_CORE_PLAN": f"{a.nproc_per_node},{a.ccl_workers},{int(a.oversubscribe)}",
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
    if transport == "ofi":
        env["FI_PROVIDER"] = os.environ.get("FI_PROVIDER", "tcp")
    if a.nnodes == 1:
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                    "FI_TCP_IFACE": os.environ.get("FI_TCP_IFACE", "lo"),
                    "CCL_KVS_IFACE": os.environ.get("CCL_KVS_IFACE", "lo")})
    elif not os.environ.get("MASTER_ADDR") and here_is_first(a.hosts):
        # rank 0 runs here: its address toward the other hosts, known before
        # MPI starts, lets every rank choose its interface (UCX_NET_DEVICES too)
        addr = toward_others(a.hosts)
        if addr:
            env.update({"MASTER_ADDR": addr, "MASTER_PORT": str(free_port("0.0.0.0"))})
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
    notes = []
    try:
        a = parse_args(argv)
        exe, flavour = find_mpi(a.mpi)
        cores = sorted(os.sched_getaffinity(0))
        cmd, env, plan = build(a, exe, flavour, cores, notes)
    except UsageError as e:
        print(f"ipex-train-run: error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"ipex-train-run: {n}", file=sys.stderr, flush=True)
    if a.dry_run:
        print(f"# MPI: {exe} ({flavour})")
        for line in plan.describe():
            print(f"# {line} (on this host; each host plans its own cores)")
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
        print(shlex.join(cmd))
        return 0
    # ranks report to us: over loopback on one host, else at our address toward the others
    if a.nnodes == 1:
        bind = advertise = "127.0.0.1"
    else:
        bind, advertise = "0.0.0.0", toward_others(a.hosts) or (
            [x for x, _ in _net.own_addresses()] + ["127.0.0.1"])[0]
    sup = Supervisor(bind, advertise, a.nproc_per_node * a.nnodes, a.contact_timeout)
    env.update(sup.env())
    i = cmd.index(sys.executable)
    genv = (["-genv", k, v] for k, v in sup.env().items()) if flavour == "hydra" else (
        ["-x", f"{k}={v}"] for k, v in sup.env().items())
    cmd = cmd[:i] + [w for pair in genv for w in pair] + cmd[i:]
    full = dict(os.environ)
    full.update(env)
    return sup.run(cmd, full)


if __name__ == "__main__":
    sys.exit(main())
