"""All-to-all on the hierarchical path (direct reads on each host, oneCCL
between hosts), checked against closed-form answers and, bit for bit,
against the same calls on a second ccl group that sends everything through
oneCCL (IPEX_TRAIN_CCL_LOCAL=0 when it is created: the flat path).

Per size (a 7-element tensor, 1 MiB and 4 MiB per rank), all_to_all_single
with even splits, blocks sized by the sender (rank q sends 1 + q % 3 units
to every rank), uneven blocks varying by sender and receiver, some empty
blocks, and an odd-sized uint8 case; then the list all_to_all. The block
from rank q to rank r holds pattern(len, 1000 q + 10 r): float32 small
integers, so comparisons are bitwise.

The world group's transfer_stats must grow by exactly the bytes this rank
received from ranks on its own host (direct_bytes) and from the others
(oneccl_bytes), with one hierarchical op per call when the path is
hierarchical; on one host (path "local") every byte is direct.

With --host-groups, every host's ranks also form a ccl group of their own
(made in every rank, as torch requires) and run the same calls on it,
checked against the closed forms: a group on one host of a multi-host job
must stay on the local path, every byte by direct reads.

Usage: python _worker_hier.py OUT_DIR [--timeout S] [--loop | --host-groups]
Writes OUT_DIR/rank<r>.json. With --loop instead, every rank writes
OUT_DIR/ready.<rank> ("pid time") after its first all-to-all, then runs
uneven 1 MiB all-to-alls for up to 100 s; a rank whose call raises writes
OUT_DIR/error.<rank> (JSON: time, message) and exits 4.
"""
import json
import os
import socket
import sys
import time
import traceback

import torch
import torch.distributed as dist
from _worker_start import start

SIZES = {"7 elems": 7, "1 MiB": (1 << 20) // 4, "4 MiB": (4 << 20) // 4}


def pattern(numel, offset, dtype=torch.float32):
    t = torch.arange(numel, dtype=torch.float32).remainder_(251).add_(offset)
    return t.to(dtype) if dtype == torch.float32 else t.remainder_(256).to(dtype)


def split_sizes(kind, numel, n):
    """sizes[q][r]: elements from rank q to rank r."""
    unit = max(numel // 4, 1)
    if kind == "even":
        return [[max(numel // n, 1)] * n for _ in range(n)]
    if kind == "sized by sender":  # DLRM's pattern
        return [[unit * (1 + q % 3)] * n for q in range(n)]
    if kind == "uneven":
        return [[unit * (1 + (q + 2 * r) % 3) for r in range(n)] for q in range(n)]
    if kind == "with empty blocks":
        return [[0 if (q + r) % 2 else max(numel // n, 1) for r in range(n)] for q in range(n)]
    return [[1 + 2 * ((q + r) % 3) + numel % 5 for r in range(n)] for q in range(n)]  # odd bytes


class Run:
    def __init__(self, me, n, hosts):
        self.me, self.n, self.hosts = me, n, hosts
        self.checks, self.failures = 0, []
        self.direct = self.oneccl = self.ops = 0  # what the world group's stats must grow by

    def same(self, name, got, want):
        self.checks += 1
        if got.dtype != want.dtype or not torch.equal(got, want):
            bad = ((got != want).nonzero()[:3].flatten().tolist() if got.shape == want.shape
                   else "shape")
            self.failures.append(f"{name}: differs (first at {bad}, {got.shape} vs {want.shape})")

    def expect(self, recv_elems, itemsize):
        """Bytes received from each rank `q` (`recv_elems[q]` elements)."""
        for q, k in enumerate(recv_elems):
            if q == self.me:
                continue
            if self.hosts[q] == self.hosts[self.me]:
                self.direct += k * itemsize
            else:
                self.oneccl += k * itemsize
        self.ops += 1


def all_to_all(run, label, numel, group, flat):
    """Every split kind on `group` (run.me, run.n: this rank and the size in
    it); each result also against the `flat` group's, unless that is None."""
    me, n = run.me, run.n
    for kind in ("even", "sized by sender", "uneven", "with empty blocks", "odd uint8"):
        dtype = torch.uint8 if kind == "odd uint8" else torch.float32
        sizes = split_sizes(kind, numel, n)
        send = torch.cat([pattern(sizes[me][r], 1000 * me + 10 * r, dtype) for r in range(n)])
        want = torch.cat([pattern(sizes[q][me], 1000 * q + 10 * me, dtype) for q in range(n)])
        ins, outs = [sizes[q][me] for q in range(n)], sizes[me]
        recv = torch.full_like(want, 77)
        if kind == "even":  # torch's even-split form: no split sizes
            dist.all_to_all_single(recv, send, group=group)
        else:
            dist.all_to_all_single(recv, send, ins, outs, group=group)
        run.expect(ins, send.element_size())
        run.same(f"all_to_all_single {kind} {label}", recv, want)
        if flat is not None:
            ref = torch.full_like(want, 55)
            dist.all_to_all_single(ref, send, ins, outs, group=flat)
            run.same(f"all_to_all_single {kind} {label} equals the flat path", recv, ref)
    # the list form, uneven
    sizes = split_sizes("uneven", numel, n)
    send = [pattern(sizes[me][r], 1000 * me + 10 * r) for r in range(n)]
    recv = [torch.empty(sizes[q][me]) for q in range(n)]
    dist.all_to_all(recv, send, group=group)
    run.expect([sizes[q][me] for q in range(n)], 4)
    run.same(f"all_to_all uneven {label}", torch.cat(recv),
             torch.cat([pattern(sizes[q][me], 1000 * q + 10 * me) for q in range(n)]))


def loop(out_dir, me, n):
    """Uneven 1 MiB all-to-alls until one raises (a fault test kills a rank)."""
    sizes = split_sizes("uneven", (1 << 20) // 4, n)
    send = torch.cat([pattern(sizes[me][r], 1000 * me + 10 * r) for r in range(n)])
    recv = torch.empty(sum(sizes[q][me] for q in range(n)))
    ins = [sizes[q][me] for q in range(n)]
    dist.all_to_all_single(recv, send, ins, sizes[me])
    with open(os.path.join(out_dir, f"ready.{me}"), "w") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
    end = time.monotonic() + 100
    try:
        while time.monotonic() < end:
            dist.all_to_all_single(recv, send, ins, sizes[me])
            time.sleep(0.02)
    except RuntimeError as e:
        with open(os.path.join(out_dir, f"error.{me}"), "w") as f:
            json.dump({"time": time.time(), "message": str(e)[:400]}, f)
        sys.exit(4)
    sys.exit(0)


def backend(group):
    return group._get_backend(torch.device("cpu"))


def checked(run, group, flat):
    """Runs every size on `group`; what its transfer_stats grew by, what
    they had to, and its path."""
    before = dict(backend(group).transfer_stats)
    try:
        for label, numel in SIZES.items():
            all_to_all(run, label, numel, group, flat)
    except Exception:
        run.failures.append(traceback.format_exc(limit=4))
    after = backend(group).transfer_stats
    return {"transfer_path": backend(group).transfer_path,
            "stats_grew": {k: after[k] - before[k] for k in after},
            "expected": {"direct_bytes": run.direct, "oneccl_bytes": run.oneccl, "ops": run.ops},
            "checks": run.checks}


def host_group(hosts, me):
    """A ccl group of this rank's host's ranks (all hosts' groups made in
    every rank, in one order) and this rank's place in it."""
    mine = None
    for h in sorted(set(hosts)):
        ranks = [r for r, x in enumerate(hosts) if x == h]
        g = dist.new_group(ranks, backend="ccl")
        if me in ranks:
            mine = g, ranks.index(me), len(ranks)
    return mine


def main():
    out_dir, me, n, _ = start()
    if "--loop" in sys.argv:
        loop(out_dir, me, n)
    os.environ["IPEX_TRAIN_CCL_LOCAL"] = "0"  # read when a ccl group is created
    flat = dist.new_group(backend="ccl")
    del os.environ["IPEX_TRAIN_CCL_LOCAL"]
    hosts = [None] * n
    dist.all_gather_object(hosts, socket.gethostname())
    run = Run(me, n, hosts)
    out = {"rank": me, "world": n, "host": socket.gethostname(), "hosts": hosts,
           **checked(run, dist.group.WORLD, flat), "flat_path": backend(flat).transfer_path}
    failures = run.failures
    if "--host-groups" in sys.argv:
        group, gme, gn = host_group(hosts, me)
        sub = Run(gme, gn, [hosts[me]] * gn)
        out["host_group"] = {"size": gn, **checked(sub, group, None)}
        failures += sub.failures
    with open(os.path.join(out_dir, f"rank{me}.json"), "w") as f:
        json.dump({**out, "failures": failures}, f, indent=1)
    if failures:
        sys.exit(1)
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
