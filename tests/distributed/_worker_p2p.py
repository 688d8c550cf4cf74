"""send/recv tag matching on 2 ranks: each case runs on the "ccl" group and on
a gloo group (which matches tags too) and both must deliver what the plain
reference says; then the error cases (size mismatch, any-source receive) on
ccl, after which the group must still work.

Rank 0 sends, rank 1 receives (one case also sends both ways). Message k of a
case holds the values k*1000 + arange(n), so a message delivered to the wrong
receive cannot pass.

Usage: python _worker_p2p.py OUT_DIR      (2 ranks: mpiexec or ipex-train-run)
Writes OUT_DIR/rank<r>.json like _worker_collectives.py.
"""
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd
from _worker_collectives import Checker


def msg(k, n, dtype=torch.float32):
    return (torch.arange(n) + k * 1000).to(dtype)


def exchange(c, g, sends, recvs, blocking_recv=False):
    """Rank 0 isends sends [(k, n, tag)]; rank 1 receives recvs [(k, n, tag)] in
    that order. Returns rank 1's tensors (rank 0: [])."""
    if c.rank == 0:
        for q in [dist.isend(msg(k, n), 1, group=g, tag=tag) for k, n, tag in sends]:
            q.wait()
        return []
    outs = [torch.full((n,), -1.0) for _, n, _ in recvs]
    if blocking_recv:
        for t, (_, _, tag) in zip(outs, recvs):
            dist.recv(t, 0, group=g, tag=tag)
    else:
        for q in [dist.irecv(t, 0, group=g, tag=tag) for t, (_, _, tag) in zip(outs, recvs)]:
            q.wait()
    return outs


CASES = {
    # the receiver asks for the tags in the opposite order of the sends
    "reversed tags": ([(0, 5, 1), (1, 7, 2)], [(1, 7, 2), (0, 5, 1)]),
    # equal tags keep their order; the tag-9 message waits in the stash meanwhile
    "same tag in order": ([(0, 3, 9), (1, 4, 5), (2, 4, 5)], [(1, 4, 5), (2, 4, 5), (0, 3, 9)]),
    # large payloads (rendezvous protocol) out of order, plus an empty message
    "large out of order": ([(0, 2 << 20, 3), (1, 1 << 20, 4), (2, 0, 5)],
                           [(2, 0, 5), (1, 1 << 20, 4), (0, 2 << 20, 3)]),
    # the default tag and a large one (gloo refuses negative tags)
    "zero and large tags": ([(0, 6, 0), (1, 6, 2**31 - 1)], [(1, 6, 2**31 - 1), (0, 6, 0)]),
}


def run_cases(c):
    for name, (sends, recvs) in CASES.items():
        for blocking in (False, True):
            key = f"{name}{' (blocking recv)' if blocking else ''}"
            want = [msg(k, n) for k, n, _ in recvs] if c.rank == 1 else []
            for gname, g in (("ccl", None), ("gloo", c.gloo)):
                c.same(f"{key} {gname}", exchange(c, g, sends, recvs, blocking), want)
    # both directions at once, each side receiving out of order
    peer = 1 - c.rank
    for gname, g in (("ccl", None), ("gloo", c.gloo)):
        a, b = torch.zeros(4), torch.zeros(9)
        reqs = [dist.isend(msg(10 * c.rank, 9), peer, group=g, tag=2),
                dist.isend(msg(10 * c.rank + 1, 4), peer, group=g, tag=1),
                dist.irecv(a, peer, group=g, tag=1), dist.irecv(b, peer, group=g, tag=2)]
        for q in reqs:
            q.wait()
        c.same(f"both directions {gname}", [a, b], [msg(10 * peer + 1, 4), msg(10 * peer, 9)])
    # a message stashed before a collective is still delivered after it
    if c.rank == 0:
        dist.send(msg(5, 3), 1, tag=8)
        dist.send(msg(6, 3), 1, tag=7)
    else:
        first = torch.zeros(3)
        dist.recv(first, 0, tag=7)
        c.same("stash before collective: tag 7", first, msg(6, 3))
    t = torch.ones(2)
    dist.all_reduce(t)
    c.same("all_reduce between sends", t, torch.full((2,), 2.0))
    if c.rank == 1:
        later = torch.zeros(3)
        dist.recv(later, 0, tag=8)
        c.same("stash before collective: tag 8 after it", later, msg(5, 3))


def run_errors(c):
    # matching tag, different size: the recv fails naming both sizes; the
    # payload is drained, so the next message still arrives intact
    if c.rank == 0:
        dist.send(msg(0, 5), 1, tag=3)
        dist.send(msg(1, 2), 1, tag=3)
    else:
        c.raises("size mismatch", lambda: dist.recv(torch.zeros(4), 0, tag=3), "20 bytes")
        t = torch.zeros(2)
        dist.recv(t, 0, tag=3)
        c.same("message after a size mismatch", t, msg(1, 2))
    c.raises("recv from any source", lambda: dist.recv(torch.zeros(2)), "any source")
    c.raises("irecv from any source", lambda: dist.irecv(torch.zeros(2)), "any source")
    t = torch.ones(3)
    dist.all_reduce(t)
    c.same("all_reduce after errors", t, torch.full((3,), 2.0))


def main():
    warnings.filterwarnings("ignore", category=FutureWarning)
    out_dir = sys.argv[1]
    ipd.init_from_env(timeout=float(os.environ.get("IPT_TEST_TIMEOUT", 60)))
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2 and dist.get_backend() == "ccl"
    c = Checker(rank, world, dist.new_group(backend="gloo"))
    run_cases(c)
    run_errors(c)
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "checks": c.checks, "failures": c.failures,
                   "transport": os.environ.get("CCL_ATL_TRANSPORT")}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
