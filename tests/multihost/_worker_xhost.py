"""Collectives across simulated hosts, checked against closed-form answers.

Started by ipex-train-run or mpiexec (-f hostfile) or with torchrun-style
variables on each host (see test_multihost.py). Sizes: a 7-element tensor,
1 MiB and 4 MiB; all-to-all with even splits, with blocks sized by the sender
(rank q sends 1 + q % 3 units to everyone: 0.25-0.75 MiB at 1 MiB, 1-3 MiB at
4 MiB), with uneven blocks of 1-3 units varying by sender and receiver, and
with some empty blocks. float32 values are small integers, so every sum is
exact and every comparison bitwise.

Usage: python _worker_xhost.py OUT_DIR [--timeout S] [--small-dtypes]
Writes OUT_DIR/rank<r>.json: rank, world, host, local rank, transfer path,
checks, failures, the oneCCL transport and interfaces it ran with.
"""
import json
import os
import socket
import sys
import traceback

import torch
import torch.distributed as dist
from _worker_start import start

SIZES = {"7 elems": 7, "1 MiB": (1 << 20) // 4, "4 MiB": (4 << 20) // 4}


def pattern(numel, offset):
    return torch.arange(numel, dtype=torch.float32).remainder_(251).add_(offset)


class Checks:
    def __init__(self):
        self.n, self.failures = 0, []

    def same(self, name, got, want):
        self.n += 1
        try:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        except AssertionError as e:
            self.failures.append(f"{name}: {str(e)[:300]}")

    def run(self, name, fn):
        try:
            fn()
        except Exception:  # a raising collective is a failure to report, then stop
            self.failures.append(f"{name}: raised {traceback.format_exc(limit=3)}")
            raise


def collectives(c, label, numel, n, me):
    x = pattern(numel, me)
    base = pattern(numel, 0)
    t = x.clone()
    dist.all_reduce(t)
    c.same(f"all_reduce sum {label}", t, base * n + n * (n - 1) // 2)
    t = x.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    c.same(f"all_reduce max {label}", t, base + (n - 1))
    t = x.clone()
    dist.reduce(t, 0)
    if me == 0:
        c.same(f"reduce {label}", t, base * n + n * (n - 1) // 2)
    t = x.clone()
    dist.broadcast(t, n - 1)
    c.same(f"broadcast {label}", t, pattern(numel, n - 1))
    out = torch.empty(n * numel)
    dist.all_gather_into_tensor(out, x)
    c.same(f"all_gather_into_tensor {label}", out, torch.cat([pattern(numel, q) for q in range(n)]))
    outs = [torch.empty(numel) for _ in range(n)]
    dist.all_gather(outs, x)
    c.same(f"all_gather {label}", torch.cat(outs), torch.cat([pattern(numel, q) for q in range(n)]))
    big = pattern(n * numel, me)
    out = torch.empty(numel)
    dist.reduce_scatter_tensor(out, big)
    c.same(f"reduce_scatter_tensor {label}", out,
           pattern(n * numel, 0)[me * numel:(me + 1) * numel] * n + n * (n - 1) // 2)
    # all-to-all: the block from rank q to rank r holds pattern(len, 1000 q + 10 r)
    for kind in ("even", "sized by sender", "uneven", "with empty blocks"):
        if kind == "even":
            sizes = [[max(numel // n, 1)] * n for _ in range(n)]
        elif kind == "sized by sender":  # DLRM's pattern: rank q's tables give q's block size
            unit = max(numel // 4, 1)
            sizes = [[unit * (1 + q % 3)] * n for q in range(n)]
        elif kind == "uneven":
            unit = max(numel // 4, 1)
            sizes = [[unit * (1 + (q + 2 * r) % 3) for r in range(n)] for q in range(n)]
        else:
            sizes = [[0 if (q + r) % 2 else max(numel // n, 1) for r in range(n)] for q in range(n)]
        send = torch.cat([pattern(sizes[me][r], 1000 * me + 10 * r) for r in range(n)])
        recv = torch.empty(sum(sizes[q][me] for q in range(n)))
        dist.all_to_all_single(recv, send, [sizes[q][me] for q in range(n)], sizes[me])
        c.same(f"all_to_all_single {kind} {label}", recv,
               torch.cat([pattern(sizes[q][me], 1000 * q + 10 * me) for q in range(n)]))
    # gather / scatter to and from the last rank (on the other host from rank 0)
    root = n - 1
    gl = [torch.empty(numel) for _ in range(n)] if me == root else None
    dist.gather(x, gl, dst=root)
    if me == root:
        c.same(f"gather {label}", torch.cat(gl), torch.cat([pattern(numel, q) for q in range(n)]))
    t = torch.empty(numel)
    dist.scatter(t, [pattern(numel, 100 + q) for q in range(n)] if me == root else None, src=root)
    c.same(f"scatter {label}", t, pattern(numel, 100 + me))
    # a ring of isend/irecv
    y = torch.empty(numel)
    reqs = [dist.isend(x, (me + 1) % n), dist.irecv(y, (me - 1) % n)]
    for q in reqs:
        q.wait()
    c.same(f"isend/irecv ring {label}", y, pattern(numel, (me - 1) % n))
    dist.barrier()


def main():
    out_dir, me, n, pg = start()
    c = Checks()
    try:
        for label, numel in SIZES.items():
            collectives(c, label, numel, n, me)
    except Exception:
        if not c.failures:
            c.failures.append(traceback.format_exc(limit=3))
    env = {k: os.environ.get(k) for k in ("CCL_ATL_TRANSPORT", "FI_TCP_IFACE", "CCL_KVS_IFACE",
                                          "UCX_NET_DEVICES", "UCX_TLS", "MASTER_ADDR")}
    with open(os.path.join(out_dir, f"rank{me}.json"), "w") as f:
        json.dump({"rank": me, "world": n, "host": socket.gethostname(),
                   "local_rank": int(os.environ.get("LOCAL_RANK", -1)),
                   "transfer_path": pg.transfer_path, "checks": c.n, "failures": c.failures,
                   "env": env}, f, indent=1)
    if c.failures:
        sys.exit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
