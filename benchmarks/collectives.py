"""all_reduce, all_to_all_single, all_gather_single and broadcast on 2
ranks: "ccl" vs gloo, same run.

    python benchmarks/collectives.py [--transport ofi|mpi] [--max-mib 64]
    python benchmarks/collectives.py --hosts 2 [--per-host 2]   # across hosts (root)
    python benchmarks/collectives.py --hosts 2 --per-host 2 --ops all_to_all_single

Starts itself on 2 ranks with the environment's mpiexec (through
ipex-train-run, so ranks get their cores), then each size from 4 KiB to 64 MiB
runs on the ccl group and on a gloo group over the same ranks, the two
taking turns call by call. Prints the median time per call, bus bandwidth
(all_reduce: 2(n-1)/n * bytes / t; all_to_all: (n-1)/n * bytes / t) and the
ratio gloo time / ccl time (>1: ccl faster). The data-movement ops also run on
a second ccl group with IPEX_TRAIN_CCL_LOCAL=0 (oneCCL instead of the
backend's direct reads between the ranks of one host), column "oneCCL ms",
and the ratio "oneCCL/ccl" (>1: the direct or hierarchical path faster).
Bus bandwidth of all_gather: (n-1)/n * output bytes / t; broadcast: bytes / t.
oneCCL's variables set in the environment are honoured (e.g.
CCL_ALLREDUCE=direct for oneCCL's own default).

--hosts 2 runs the ranks on two simulated hosts instead (tests/multihost:
network namespaces joined by a veth link, started with ipex-train-run
--nnodes 2 --hostfile; needs root and iproute2), --per-host ranks on each,
so the bytes between the hosts cross the link (UCX held to TCP: it would
use shared memory between namespaces of one kernel); the bytes that crossed
are printed after the table. With --per-host 2 the ccl group's all-to-all is
hierarchical (direct reads on each host, oneCCL between them) and the
oneCCL group's is flat over oneCCL: "oneCCL/ccl" is the hierarchical gain.
--ops limits the run to some ops (comma-separated). --split-cores gives each
simulated host its own cores: sharing them, each host's rank threads sit on
the same first core (see DEVELOPING.md, "Across hosts") and polling
transports pay a scheduler slice per message.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


OPS = ("all_reduce", "all_to_all_single", "all_gather_single", "broadcast")


def launch(args):
    if args.hosts > 1:
        return launch_hosts(args)
    cmd = [sys.executable, "-m", "ipex_train.launch", "--nproc-per-node", "2",
           "--transport", args.transport, os.path.abspath(__file__), "--worker",
           "--max-mib", str(args.max_mib), "--ops", args.ops]
    if args.oversubscribe:
        cmd.insert(5, "--oversubscribe")
    return subprocess.call(cmd, timeout=1800)


def launch_hosts(args):
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from tests.multihost import _hosts
    why = _hosts.unavailable()
    if why:
        sys.exit(f"--hosts: simulated hosts unavailable here: {why}")
    cpus = None
    if args.split_cores:  # host i gets every args.hosts-th core, from core i
        cores = sorted(os.sched_getaffinity(0))
        cpus = {f"node{i}": ",".join(map(str, cores[i::args.hosts])) for i in range(args.hosts)}
        if any(not v for v in cpus.values()):
            sys.exit(f"--split-cores: {len(cores)} cores for {args.hosts} hosts")
    with tempfile.TemporaryDirectory() as tmp, _hosts.Cluster(args.hosts, tmp, cpus=cpus) as c:
        env = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1", "UCX_TLS": "tcp,self"}
        for k, v in os.environ.items():
            if k.startswith(("CCL_", "FI_", "OMP_")):
                env[k] = v
        before = c.counters("node1")
        cmd = ["ipex-train-run", "--nnodes", str(args.hosts), "--nproc-per-node",
               str(args.per_host), "--hostfile", c.hostfile(), "--transport", args.transport]
        if args.oversubscribe or args.per_host > 1:
            cmd.append("--oversubscribe")
        cmd += [os.path.abspath(__file__), "--worker", "--max-mib", str(args.max_mib),
                "--ops", args.ops]
        p = c.popen("node0", cmd, env=env, stdout=None, stderr=None)
        rc = p.wait(timeout=3600)
        rx, tx = (a - b for a, b in zip(c.counters("node1"), before))
        print(f"# node1's link: {rx / 2**20:.0f} MiB in, {tx / 2**20:.0f} MiB out")
        return rc


def timeit(fns, nbytes, barrier):
    """Median seconds per call of each fn in `fns` ({name: fn}).

    The fns take turns call by call, each call after a barrier, so background
    load on this shared 2-core machine hits every backend alike and no rank
    starts a timed call early.
    """
    iters = max(8, min(50, int(256 * 2 ** 20 / max(nbytes, 1))))
    for fn in fns.values():
        fn()
        fn()  # warm up (connections, buffers)
    ts = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            barrier()
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in ts.items()}


def worker(args):
    import torch
    import torch.distributed as dist

    import ipex_train.distributed as ipd

    ipd.init_from_env(timeout=600)
    n, rank = dist.get_world_size(), dist.get_rank()
    gloo = dist.new_group(backend="gloo")
    os.environ["IPEX_TRAIN_CCL_LOCAL"] = "0"  # read when a ccl group is created
    via_oneccl = dist.new_group(backend="ccl")
    del os.environ["IPEX_TRAIN_CCL_LOCAL"]
    path = dist.group.WORLD._get_backend(torch.device("cpu")).transfer_path
    flat_path = via_oneccl._get_backend(torch.device("cpu")).transfer_path
    sizes = []
    s = 4 * 1024
    while s <= args.max_mib * 2 ** 20:
        sizes.append(s)
        s *= 4
    rows = []
    for op in args.ops.split(","):
        for nbytes in sizes:
            x = torch.randn(nbytes // 4)
            out = torch.empty_like(x)
            part = x[:x.numel() // n]  # all_gather: each rank's share of the output
            fns = {}
            groups = [("ccl", None), ("gloo", gloo)]
            if op != "all_reduce":
                groups.append(("oneccl", via_oneccl))
            for name, group in groups:
                if op == "all_reduce":
                    fns[name] = lambda g=group: dist.all_reduce(x, group=g)
                elif op == "all_to_all_single":
                    fns[name] = lambda g=group: dist.all_to_all_single(out, x, group=g)
                elif op == "all_gather_single":
                    fns[name] = lambda g=group: dist.all_gather_single(out, part, group=g)
                else:
                    fns[name] = lambda g=group: dist.broadcast(x, src=0, group=g)
            res = timeit(fns, nbytes, lambda: dist.barrier(group=gloo))
            # both ranks report rank 0's figures after agreeing on the max
            t = torch.tensor([res["ccl"], res["gloo"], res.get("oneccl", float("nan"))],
                             dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=gloo)
            factor = {"all_reduce": 2 * (n - 1) / n, "broadcast": 1.0}.get(op, (n - 1) / n)
            rows.append((op, nbytes, t[0].item(), t[1].item(), t[2].item(), factor))
    import socket
    hosts = [None] * n
    dist.all_gather_object(hosts, socket.gethostname(), group=gloo)
    if rank == 0:
        transport = os.environ.get("CCL_ATL_TRANSPORT")
        print(f"# {n} ranks on {len(set(hosts))} host(s), oneCCL transport {transport}, FI_PROVIDER={os.environ.get('FI_PROVIDER')}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
              f"CCL_ALLREDUCE={os.environ.get('CCL_ALLREDUCE', '(oneCCL default)')}, "
              f"ccl data-movement path: {path}, oneCCL group's: {flat_path}")
        print(f"{'op':<23}{'size':>9}{'ccl ms':>10}{'gloo ms':>10}{'ccl GB/s':>10}"
              f"{'gloo GB/s':>10}{'gloo/ccl':>9}{'oneCCL ms':>11}{'oneCCL/ccl':>11}")
        for op, nbytes, tc, tg, to, f in rows:
            size = f"{nbytes // 1024}K" if nbytes < 2 ** 20 else f"{nbytes // 2 ** 20}M"
            print(f"{op:<23}{size:>9}{tc * 1e3:>10.3f}{tg * 1e3:>10.3f}{f * nbytes / tc / 1e9:>10.2f}"
                  f"{f * nbytes / tg / 1e9:>10.2f}{tg / tc:>9.2f}"
                  + (f"{to * 1e3:>11.3f}{to / tc:>11.2f}" if to == to else f"{'-':>11}{'-':>11}"))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=["ofi", "mpi"], default="mpi")
    p.add_argument("--max-mib", type=int, default=64)
    p.add_argument("--oversubscribe", action="store_true")
    p.add_argument("--hosts", type=int, default=1,
                   help="simulated hosts (network namespaces; root): 2 for the cross-host figures")
    p.add_argument("--per-host", type=int, default=1, help="ranks per simulated host")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated, of: " + ", ".join(OPS))
    p.add_argument("--split-cores", action="store_true",
                   help="give each simulated host its own share of this machine's cores, as "
                        "separate machines have (default: the hosts share every core)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    bad = set(args.ops.split(",")) - set(OPS)
    if bad:
        p.error(f"--ops: unknown {', '.join(sorted(bad))} (known: {', '.join(OPS)})")
    if args.worker:
        worker(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
