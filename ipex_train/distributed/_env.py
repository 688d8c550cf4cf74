"""Rank discovery across launchers, and oneCCL's run-time environment."""
import dataclasses
import os
import socket
import sys

from ipex_train.launch._ports import free_port

from ipex_train.launch import _net

# (rank, size, local rank, local size) variables, in the order we trust them.
_LAUNCHERS = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
]
_MPI_LAUNCHERS = ("openmpi", "mpich")


@dataclasses.dataclass
class RankInfo:
    """Where this process sits in the job, and how the ranks meet."""
    launcher: str      # torchrun | openmpi | mpich | slurm | none
    rank: int
    world_size: int
    local_rank: int
    local_size: int
    master_addr: str
    master_port: int

    @property
    def single_node(self):
        return self.local_size == self.world_size


def _int(name, default=None, env=None):
    v = (os.environ if env is None else env).get(name)
    if v is None or v == "":
        return default
    try:
        return int(v.split("(")[0].split(",")[0])  # SLURM_NTASKS_PER_NODE: "2(x3)"
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def _mpi_agree(single_node):
    """Rank 0's (address, port), broadcast to every rank through mpi4py.

    Across hosts the address is one the other hosts can reach: every rank
    sends its interfaces' addresses, and rank 0 publishes its own address on
    the network the others share (not what its hostname resolves to, which
    on Debian-style hosts files is 127.0.1.1).
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(
            "MASTER_ADDR/MASTER_PORT are not set and mpi4py is unavailable to agree on them: "
            f"set both, or install mpi4py ({e})") from e
    comm = MPI.COMM_WORLD
    host = socket.gethostname()
    nets = None if single_node else comm.allgather((host, _net.own_addresses()))
    mine = None
    if comm.Get_rank() == 0:
        addr = os.environ.get("MASTER_ADDR")
        if not addr and single_node:
            addr = "127.0.0.1"
        elif not addr:
            others = [a for h, a in nets if h != host]
            try:
                by_name = socket.gethostbyname(host)
            except OSError:
                by_name = None
            addr = _net.pick_master_addr(nets[0][1], others, by_name)
            if addr is None:
                mine = RuntimeError(
                    f"rank 0's host {host} has no non-loopback IPv4 address for the other hosts "
                    "to reach: set MASTER_ADDR (and MASTER_PORT)")
        if mine is None:
            port = _int("MASTER_PORT") or free_port("127.0.0.1" if single_node else "0.0.0.0")
            mine = (addr, port)
    mine = comm.bcast(mine, root=0)
    if isinstance(mine, Exception):
        raise mine
    return mine


def discover(env=None):
    """Finds rank, world size and local rank from the launcher's variables."""
    env = os.environ if env is None else env
    found = None
    for name, r, s, lr, ls in _LAUNCHERS:
        if r in env and s in env:
            found = (name, r, s, lr, ls)
            break
    if found is None:
        name, rank, size, lrank, lsize = "none", 0, 1, 0, 1
    else:
        name, r, s, lr, ls = found
        rank, size = _int(r, env=env), _int(s, env=env)
        lrank = _int(lr, rank, env)
        lsize = _int(ls, size if lr not in env else None, env)
        if lsize is None:
            lsize = size
    if not 0 <= rank < size:
        raise ValueError(f"{name}: rank {rank} is outside world size {size}")
    single = lsize == size
    addr, port = env.get("MASTER_ADDR"), _int("MASTER_PORT", env=env)
    if size == 1 and not addr:
        addr, port = "127.0.0.1", port or free_port()
    elif not addr or not port:
        if name in _MPI_LAUNCHERS:
            addr, port = _mpi_agree(single)
        elif single:
            raise RuntimeError(f"{name}: MASTER_PORT is not set (and no MPI to agree on one)")
        else:
            raise RuntimeError(f"{name}: set MASTER_ADDR and MASTER_PORT for a multi-node job")
    return RankInfo(name, rank, size, lrank, lsize, addr, int(port))


# Variables naming the network interface, set from the route to MASTER_ADDR
# when ranks span hosts (oneCCL over OFI, oneCCL's key-value store, UCX under
# MPICH, and gloo groups beside ccl ones).
IFACE_VARS = ("FI_TCP_IFACE", "CCL_KVS_IFACE", "UCX_NET_DEVICES", "GLOO_SOCKET_IFNAME")


_logged = {}


def choose_interface(info, log=True):
    """For a job across hosts: sets IFACE_VARS the user left unset to the
    interface the kernel routes MASTER_ADDR through, and says so (once per
    host). Raises when MASTER_ADDR is loopback or unroutable: ranks on other
    hosts could not reach it, and oneCCL would hang in its set-up instead."""
    addr = info.master_addr
    found = _net.resolve(addr)
    # a name for rank 0's own host may resolve to 127.0.1.1 there first
    # (Debian-style hosts files) and to its real address after
    reachable = [a for a in found if not _net.is_loopback(a)]
    if not found:
        raise RuntimeError(f"MASTER_ADDR={addr} does not resolve on host {socket.gethostname()}")
    if not reachable:
        raise RuntimeError(
            f"MASTER_ADDR={addr} is a loopback address on host {socket.gethostname()} but the "
            f"ranks span hosts ({info.local_size} of {info.world_size} on this one): set it to "
            "an address of rank 0's host that the others reach")
    iface = _net.iface_for(reachable[0])
    if iface is None:
        raise RuntimeError(f"no route from host {socket.gethostname()} to MASTER_ADDR={addr} "
                           f"({reachable[0]}): check the address and this host's interfaces")
    kept = {k: os.environ[k] for k in IFACE_VARS if os.environ.get(k)}
    for k in IFACE_VARS:
        os.environ.setdefault(k, iface)
    if log and info.local_rank == 0 and _logged.get(addr) != iface:
        _logged[addr] = iface
        note = "; kept the user's " + ", ".join(f"{k}={v}" for k, v in kept.items()) if kept else ""
        print(f"ipex_train.distributed: host {socket.gethostname()}: interface {iface} routes to "
              f"MASTER_ADDR {addr}: using it for "
              + ", ".join(k for k in IFACE_VARS if k not in kept) + note,
              file=sys.stderr, flush=True)
    return iface


def _host_identity():
    """(hostname, boot id, PID namespace) of this process."""
    def read(fn):
        try:
            return fn()
        except OSError:
            return "?"
    boot = read(lambda: open("/proc/sys/kernel/random/boot_id").read().strip())
    pidns = read(lambda: os.readlink("/proc/self/ns/pid"))
    return socket.gethostname(), boot, pidns


def check_hosts(store, rank, size, timeout=None):
    """Raises, on every rank, when two ranks share a hostname but not a
    machine or a PID namespace.

    oneCCL tells hosts apart by hostname and processes by hostname and pid.
    Containers that share a hostname but not a PID namespace give it equal
    (hostname, pid) pairs, and its set-up fails ("Unregister Barrier
    request!") and then hangs; machines that share a hostname look like one.
    Checked through the c10d store before oneCCL is touched.
    """
    host, boot, pidns = _host_identity()
    store.set(f"ipex_train/host/{rank}", "\t".join((host, boot, pidns, str(os.getpid()))))
    seen = {}
    for r in range(size):
        h, b, ns, pid = store.get(f"ipex_train/host/{r}").decode().split("\t")
        if h not in seen:
            seen[h] = (r, b, ns, pid)
            continue
        r0, b0, ns0, pid0 = seen[h]
        if b != b0:
            raise RuntimeError(
                f"ranks {r0} and {r} both run on a host named {h!r} but on different machines "
                "(their boot ids differ): oneCCL tells hosts apart by name; give every machine "
                "its own hostname")
        if ns != ns0:
            same = " with the same pid" if pid == pid0 else ""
            raise RuntimeError(
                f"ranks {r0} and {r} run on host {h!r} in different PID namespaces{same} "
                "(containers sharing a hostname?): oneCCL tells processes apart by hostname and "
                "pid, and its set-up then fails and hangs; give each container its own hostname "
                "or let them share the host's PID namespace (docker run --pid=host)")


def mpich_abi_libmpi():
    """Path of an MPICH-ABI libmpi.so.12 oneCCL's MPI transport can load, or None."""
    for root in (os.environ.get("I_MPI_ROOT"), os.environ.get("MPI_ROOT"), sys.prefix):
        if root and os.path.exists(os.path.join(root, "lib", "libmpi.so.12")):
            return os.path.join(root, "lib", "libmpi.so.12")
    return None


def ensure_ccl_env(info=None):
    """Sets oneCCL's environment defaults, keeping anything the user set.

    The KVS address travels through torch's store, so oneCCL never needs an
    MPI launcher of its own (CCL_PROCESS_LAUNCHER=none). On one node all
    traffic stays on the loopback interface.
    """
    if info is None:
        try:
            info = discover()
        except (RuntimeError, ValueError):
            info = None
    single = info is None or info.single_node
    defaults = {
        "CCL_PROCESS_LAUNCHER": "none",
        # oneCCL's MPI transport was the fastest measured here; it needs an
        # MPICH-ABI libmpi.so.12 and ranks started by that MPI's launcher.
        "CCL_ATL_TRANSPORT": "mpi" if info is not None and info.launcher == "mpich"
                             and mpich_abi_libmpi() else "ofi",
        "FI_PROVIDER": "tcp",
        # Progress on the calling thread: with few cores a spinning oneCCL
        # worker thread competes with compute (measured ~4x faster on 2 cores).
        "CCL_WORKER_OFFLOAD": "0",
        "CCL_LOG_LEVEL": "error",  # its warnings restate the variables set here
    }
    if single:
        defaults.update({"FI_TCP_IFACE": "lo", "CCL_KVS_IFACE": "lo"})
    else:
        choose_interface(info)
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if os.environ["CCL_ATL_TRANSPORT"] == "mpi":
        for k, v in MPI_TRANSPORT_ALGORITHMS.items():
            os.environ.setdefault(k, v)


# oneCCL algorithm choices for its MPI transport (set per rank by
# ensure_ccl_env, so ipex-train-run, plain mpiexec and torchrun get the same).
#
# all_reduce: oneCCL's default over MPI is "direct", i.e. MPI_Iallreduce. MPICH
# allocates a temporary as large as the message on every call; above glibc's
# largest mmap threshold (32 MiB) that is a fresh mmap each time, so every
# 64 MiB all_reduce took 8193 page faults (zeroing 32 MiB) and ran at half the
# bandwidth of 16 MiB (measured: 55-60 ms vs gloo's ~60 ms). oneCCL's own
# "nreduce" (each rank reduces 1/n of the buffer, then all-gathers it) works in
# oneCCL's cached buffers: no page faults, 24-27 ms at 64 MiB and 6-8 ms at
# 16 MiB here; from 4 MiB it is faster too (2.0-2.2 ms vs 3.0 ms for "direct";
# a quiet-machine A/B with the threshold at 0.5, 2 and 4 MiB). At 1 MiB and
# below both ran alike, so "direct" keeps up to 2 MiB.
#
# reduce and reduce_scatter: "direct" (MPI_Ireduce, MPI_Ireduce_scatter) has
# the same per-call temporary: reduce took page faults from 1 MiB up (132 per
# call at 1 MiB, 8195 at 64 MiB, 2-8x slower than oneCCL's "double_tree");
# reduce_scatter from 64 MiB input (8193 per call, 2x slower than "ring").
# Up to 256 KiB all of them ran alike, so "direct" keeps that range.
# Sizes are in bytes (oneCCL's CCL_<COLL>="algo:lo-hi;..." syntax).
#
# all_to_all_single with even splits runs oneCCL's alltoall, which over this
# transport is MPICH's MPI_Ialltoall; MPICH's "tsp_scattered" schedule moved
# 4 and 16 MiB in 1.0-1.5 and 4.9-6.2 ms here against 1.7-2.0 and 7.1-8.0 ms
# for its default (quiet 2-rank runs), and as fast at 1 MiB. (An MPICH
# variable: read at MPI_Init, which oneCCL calls after this is set; set only
# for the MPI transport, i.e. the venv's MPICH.)
#
# all_to_all_single with uneven splits runs oneCCL's alltoallv. Its built-in
# table over this transport is "direct" (MPI_Ialltoallv) up to 1 MiB and
# "scatter" (its own point-to-point messages) above, and each rank looks up
# the table with a size of its own (its send counts, which differ between
# ranks when blocks are sized by the sender, as DLRM's are). Ranks on either
# side of 1 MiB then run different algorithms that never match: every rank
# hung until the timeout (3 ranks, blocks of 1, 2 and 3 MiB; oneCCL's debug
# log shows rank 0 "direct", ranks 1-2 "scatter"). One algorithm for every
# size makes the choice the same on all ranks; "direct" is what oneCCL
# already runs below 1 MiB.
MPI_TRANSPORT_ALGORITHMS = {
    "CCL_ALLTOALLV": "direct",
    "MPIR_CVAR_IALLTOALL_INTRA_ALGORITHM": "tsp_scattered",
    "CCL_ALLREDUCE": "direct:0-2097152;nreduce:2097153-max",
    "CCL_REDUCE": "direct:0-262144;double_tree:262145-max",
    "CCL_REDUCE_SCATTER": "direct:0-262144;ring:262145-max",
}
