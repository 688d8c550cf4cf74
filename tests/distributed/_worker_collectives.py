"""Runs every collective on the "ccl" group and on a gloo group with the same
inputs and compares the results; one process per rank, started by mpiexec or
ipex-train-run (see test_collectives.py).

Inputs are a deterministic function of (case, rank), so each rank can also
build the plain-PyTorch reference of every result. ccl must match gloo where
gloo supports the case, and always match the reference. Integer-valued inputs
make float sums exact in any order, so those comparisons are bitwise; one
random-valued case per dtype is compared with a tolerance.

Usage: python _worker_collectives.py OUT_DIR [--large]
Writes OUT_DIR/rank<r>.json: {"checks": n, "failures": [...], "gloo_skips": [...]}.
"""
import json
import os
import sys
import traceback
import warnings
import zlib

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd

R = dist.ReduceOp
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32,
          torch.int64, torch.uint8, torch.bool]
SHAPES = [(0,), (1,), (7,), (3, 37)]  # empty, one, odd, 2-D odd-sized


class Checker:
    def __init__(self, rank, world, gloo):
        self.rank, self.world, self.gloo = rank, world, gloo
        self.checks, self.failures, self.gloo_skips = 0, [], []
        self.path = ""  # the ccl group's transfer_path

    def inp(self, case, rank, shape, dtype, exact=True):
        g = torch.Generator().manual_seed(zlib.crc32(repr((case, rank)).encode()))
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=g).bool()
        if dtype == torch.uint8:
            return torch.randint(0, 4, shape, generator=g).to(dtype)
        if dtype.is_floating_point and not exact:
            return torch.randn(shape, generator=g).to(dtype)
        return torch.randint(-3, 4, shape, generator=g).to(dtype)

    def same(self, name, got, want, exact=True):
        self.checks += 1
        try:
            if isinstance(want, (list, tuple)):
                assert len(got) == len(want), f"{len(got)} tensors, expected {len(want)}"
                for a, b in zip(got, want):
                    self._cmp(a, b, exact)
            else:
                self._cmp(got, want, exact)
        except AssertionError as e:
            self.failures.append(f"{name}: {e}")

    @staticmethod
    def _cmp(a, b, exact):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if exact:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        else:
            tol = 2e-2 if a.dtype in (torch.bfloat16, torch.float16) else 1e-5
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)

    def both(self, name, fn, ref, exact=True):
        """fn(group) -> result; compares ccl's with gloo's (if gloo can) and ref."""
        try:
            got = fn(None)
        except Exception:
            self.failures.append(f"{name}: ccl raised {traceback.format_exc(limit=2)}")
            return
        try:
            g = fn(self.gloo)
        except (RuntimeError, ValueError) as e:
            self.gloo_skips.append(f"{name}: {str(e).splitlines()[0][:80]}")
        else:
            self.same(name + " vs gloo", got, g, exact)
        if ref is not None:
            self.same(name + " vs reference", got, ref, exact)

    def raises(self, name, fn, needle):
        self.checks += 1
        try:
            fn()
        except (RuntimeError, ValueError) as e:
            if needle not in str(e):
                self.failures.append(f"{name}: error does not mention {needle!r}: {e}")
            return
        self.failures.append(f"{name}: did not raise")


def reduce_ref(ts, op):
    out = ts[0].clone()
    if out.dtype == torch.bool:
        f = {R.SUM: torch.logical_or, R.MAX: torch.logical_or, R.PRODUCT: torch.logical_and,
             R.MIN: torch.logical_and}[op]
        for t in ts[1:]:
            out = f(out, t)
        return out
    for t in ts[1:]:
        if op in (R.SUM, R.AVG):
            out = out + t
        elif op == R.PRODUCT:
            out = out * t
        elif op == R.MIN:
            out = torch.minimum(out, t)
        else:
            out = torch.maximum(out, t)
    if op == R.AVG:
        out = avg_of_sum(out, len(ts))
    return out


def avg_of_sum(t, n):
    """SUM / world size as the backend computes AVG: in float32 (float64 for float64)."""
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    return (t.to(acc) / n).to(t.dtype)


def all_reduce(x, op, g, n):
    """all_reduce of a copy of x; gloo (g set) has no AVG: SUM / world there."""
    t = x.clone()
    if op == R.AVG and g is not None:
        dist.all_reduce(t, op=R.SUM, group=g)
        return avg_of_sum(t, n)
    dist.all_reduce(t, op=op, group=g)
    return t


def ops_for(dtype):
    ops = [R.SUM, R.MIN, R.MAX, R.PRODUCT]
    return ops + [R.AVG] if dtype.is_floating_point else ops


def run_dtype(c, dt):
    n, me = c.world, c.rank
    for shape in SHAPES:
        key = f"{dt}{shape}"
        ins = lambda case, s=shape, exact=True: [c.inp(case, q, s, dt, exact) for q in range(n)]

        for op in ops_for(dt):
            x = ins(f"ar{op}")

            c.both(f"all_reduce {op} {key}", lambda g, x=x, op=op: all_reduce(x[me], op, g, n),
                   reduce_ref(x, op))

        x = ins("arnc")  # non-contiguous: a transposed view updated in place
        def ar_nc(g, x=x):
            base = x[me].reshape(-1, 1).repeat(1, 2).t()  # shape (2, k), non-contiguous
            dist.all_reduce(base, group=g)
            return base.clone()
        c.both(f"all_reduce non-contiguous {key}", ar_nc,
               reduce_ref([t.reshape(-1, 1).repeat(1, 2).t() for t in x], R.SUM))

        if dt != torch.bool:
            x, y = ins("co1"), ins("co2", (5,))
            def arc(g):
                ts = [x[me].clone(), y[me].clone()]
                dist.all_reduce_coalesced(ts, group=g)
                return ts
            c.both(f"all_reduce_coalesced {key}", arc, [reduce_ref(x, R.SUM), reduce_ref(y, R.SUM)])

        x = ins("bc")
        root = n - 1
        def bc(g):
            t = x[me].clone()
            dist.broadcast(t, src=root, group=g)
            return t
        c.both(f"broadcast {key}", bc, x[root])

        def bc_nc(g):  # a non-contiguous tensor, root 0
            t = x[me].reshape(-1, 1).repeat(1, 2).t()
            dist.broadcast(t, src=0, group=g)
            return t.clone()
        c.both(f"broadcast non-contiguous {key}", bc_nc, x[0].reshape(-1, 1).repeat(1, 2).t())

        for op in (R.SUM, R.MAX):
            x = ins(f"red{op}")
            def red(g, x=x, op=op):
                t = x[me].clone()
                dist.reduce(t, dst=1, op=op, group=g)
                return t if me == 1 else x[me]
            c.both(f"reduce {op} {key}", red, reduce_ref(x, op) if me == 1 else x[me])

        x = ins("ag")
        def ag(g):
            outs = [torch.full(shape, 1, dtype=dt) for _ in range(n)]
            dist.all_gather(outs, x[me], group=g)
            return outs
        c.both(f"all_gather {key}", ag, x)

        def agt(g):
            out = torch.empty((n * shape[0],) + shape[1:], dtype=dt)
            dist.all_gather_into_tensor(out, x[me], group=g)
            return out
        c.both(f"all_gather_into_tensor {key}", agt, torch.cat(x))

        def ags(g):  # torch 2.13's name for it
            out = torch.empty((n * shape[0],) + shape[1:], dtype=dt)
            dist.all_gather_single(out, x[me], group=g)
            return out
        c.both(f"all_gather_single {key}", ags, torch.cat(x))

        def agt_inplace(g):  # the input is this rank's slot of the output
            out = torch.zeros((n * shape[0],) + shape[1:], dtype=dt)
            mine = out.narrow(0, me * shape[0], shape[0])
            mine.copy_(x[me])
            dist.all_gather_into_tensor(out, mine, group=g)
            return out
        c.both(f"all_gather_into_tensor in place {key}", agt_inplace, torch.cat(x))

        def ag_nc(g):  # non-contiguous outputs (every other column of a wider tensor)
            wide = [torch.zeros(shape + (2,), dtype=dt) for _ in range(n)]
            dist.all_gather([w[..., 0] for w in wide], x[me], group=g)
            return [w[..., 0].clone() for w in wide]
        if len(shape) and shape[0]:
            c.both(f"all_gather non-contiguous outputs {key}", ag_nc, x)

        rs = [[c.inp(("rs", q, j), q, shape, dt) for j in range(n)] for q in range(n)]
        def rsl(g):
            out = torch.zeros(shape, dtype=dt)
            dist.reduce_scatter(out, [t.clone() for t in rs[me]], group=g)
            return out
        c.both(f"reduce_scatter {key}", rsl, reduce_ref([rs[q][me] for q in range(n)], R.SUM))

        for op in (R.SUM, R.MAX):
            def rst(g, op=op):
                out = torch.zeros(shape, dtype=dt)
                # SUM through the old name, MAX through torch 2.13's new one
                fn = dist.reduce_scatter_tensor if op == R.SUM else dist.reduce_scatter_single
                fn(out, torch.cat(rs[me]), op=op, group=g)
                return out
            c.both(f"reduce_scatter_tensor {op} {key}", rst,
                   reduce_ref([rs[q][me] for q in range(n)], op))

        # all_to_all with uneven sizes: rank q sends (q + j) % 3 + d0 rows to rank j.
        d0 = shape[0]
        rows = lambda q, j: ((q + j) % 3 + d0) if d0 else 0
        a2a = [[c.inp(("a2a", q, j), q, (rows(q, j),) + shape[1:], dt) for j in range(n)]
               for q in range(n)]
        def a2al(g):
            outs = [torch.zeros((rows(q, me),) + shape[1:], dtype=dt) for q in range(n)]
            dist.all_to_all(outs, [t.clone() for t in a2a[me]], group=g)
            return outs
        c.both(f"all_to_all {key}", a2al, [a2a[q][me] for q in range(n)])

        def a2as(g):
            out = torch.zeros((sum(rows(q, me) for q in range(n)),) + shape[1:], dtype=dt)
            dist.all_to_all_single(out, torch.cat(a2a[me]),
                                   output_split_sizes=[rows(q, me) for q in range(n)],
                                   input_split_sizes=[rows(me, j) for j in range(n)], group=g)
            return out
        c.both(f"all_to_all_single splits {key}", a2as, torch.cat([a2a[q][me] for q in range(n)]))

        xe = [c.inp(("a2ae", q), q, (n * max(d0, 1),) + shape[1:], dt) for q in range(n)]
        def a2ae(g):
            out = torch.zeros_like(xe[me])
            dist.all_to_all_single(out, xe[me].clone(), group=g)
            return out
        c.both(f"all_to_all_single equal {key}", a2ae,
               torch.cat([xe[q].chunk(n)[me] for q in range(n)]))
        # in place (output is input): ccl copies the input first; gloo gets it
        # wrong (torch 2.13), so only the reference
        t = xe[me].clone()
        dist.all_to_all_single(t, t)
        c.same(f"all_to_all_single in place {key}", t, torch.cat([xe[q].chunk(n)[me] for q in range(n)]))

        for root in (0, n - 1):
            x = ins(("ga", root))
            def ga(g, x=x, root=root):
                outs = [torch.zeros(shape, dtype=dt) for _ in range(n)] if me == root else None
                dist.gather(x[me], outs, dst=root, group=g)
                return outs if me == root else []
            c.both(f"gather root{root} {key}", ga, x if me == root else [])

            sc = [c.inp(("sc", root, j), root, shape, dt) for j in range(n)]
            def sca(g, sc=sc, root=root):
                out = torch.zeros(shape, dtype=dt)
                dist.scatter(out, [t.clone() for t in sc] if me == root else None, src=root, group=g)
                return out
            c.both(f"scatter root{root} {key}", sca, sc[me])

        # send/recv along a ring (isend/irecv so no rank blocks the others)
        ring = ins("ring")
        def p2p(g):
            out = torch.zeros(shape, dtype=dt)
            reqs = [dist.isend(ring[me].clone(), (me + 1) % n, group=g),
                    dist.irecv(out, (me - 1) % n, group=g)]
            for r in reqs:
                r.wait()
            return out
        c.both(f"send/recv ring {key}", p2p, ring[(me - 1) % n])

    if dt.is_floating_point:  # random values: compare with tolerance
        x = [c.inp("rnd", q, (1001,), dt, exact=False) for q in range(n)]
        def ar(g):
            t = x[me].clone()
            dist.all_reduce(t, group=g)
            return t
        c.both(f"all_reduce random {dt}", ar, reduce_ref([t.double() for t in x], R.SUM).to(dt),
               exact=False)


def run_errors(c):
    ti = torch.ones(3, dtype=torch.int32)
    c.raises("AVG on int32", lambda: dist.all_reduce(ti, op=R.AVG), "AVG")
    c.raises("BXOR on float", lambda: dist.all_reduce(torch.ones(2), op=R.BXOR), "all_reduce")
    c.raises("all_gather_into_tensor wrong size",
             lambda: dist.all_gather_into_tensor(torch.zeros(5), torch.zeros(3)),
             "all_gather_into_tensor")
    c.raises("all_to_all_single bad splits",
             lambda: dist.all_to_all_single(torch.zeros(4), torch.zeros(4),
                                            output_split_sizes=[1] * c.world,
                                            input_split_sizes=[1] * c.world),
             "split sizes")
    c.raises("sparse", lambda: dist.all_reduce(torch.ones(2).to_sparse()), "dense")
    c.raises("send to self", lambda: dist.send(torch.ones(2), c.rank), "")
    if c.path == "local":
        # sizes that disagree between ranks (each sends 1 element to every rank
        # but expects 2 from each): the direct-read path sees it on every rank;
        # oneCCL's alltoallv cannot (it would move wrong bytes or hang)
        c.raises("all_to_all_single splits disagree across ranks",
                 lambda: dist.all_to_all_single(torch.zeros(2 * c.world), torch.zeros(c.world),
                                                output_split_sizes=[2] * c.world,
                                                input_split_sizes=[1] * c.world),
                 "split sizes differ between the ranks")
    # the group still works after those errors
    t = torch.ones(3)
    dist.all_reduce(t)
    c.same("all_reduce after errors", t, torch.full((3,), float(c.world)))


def run_large(c):
    """64 MiB float32 all_reduce and all_to_all_single."""
    n, me = c.world, c.rank
    numel = 16 * 1024 * 1024
    x = torch.arange(numel, dtype=torch.float32).remainder_(1000) + me
    want = torch.arange(numel, dtype=torch.float32).remainder_(1000) * n + sum(range(n))
    t = x.clone()
    dist.all_reduce(t)
    c.same("all_reduce 64MiB", t, want)
    # Above 2 MiB (all_reduce) and 256 KiB (reduce, reduce_scatter) the MPI
    # transport runs other oneCCL algorithms (see _env.py): every dtype and op
    # there, odd-sized so the per-rank pieces differ in length.
    for dt in DTYPES:
        numel = (5 << 20) // torch.tensor([], dtype=dt).element_size() + 3
        ins = [c.inp(("large", str(dt)), r, (numel,), dt) for r in range(n)]
        for op in ops_for(dt):
            c.both(f"all_reduce large {dt} {op}",
                   lambda g, op=op: all_reduce(ins[me], op, g, n), reduce_ref(ins, op))
        for op in set(ops_for(dt)) - {R.AVG}:
            root = n - 1
            def red(g, op=op):  # a ccl non-root keeps its input (gloo's is not checked)
                t = ins[me].clone()
                dist.reduce(t, root, op=op, group=g)
                return t if g is None or me == root else ins[me]
            c.both(f"reduce large {dt} {op}", red,
                   reduce_ref(ins, op) if me == root else ins[me])
        blocks = [t[:numel // n * n].view(n, -1) for t in ins]
        for op in (R.SUM, R.MAX):
            def rs(g, op=op):
                out = torch.empty_like(blocks[me][0])
                dist.reduce_scatter_tensor(out, blocks[me].reshape(-1), op=op, group=g)
                return out
            c.both(f"reduce_scatter_tensor large {dt} {op}", rs,
                   reduce_ref([b[me] for b in blocks], op))
    rows = numel // n * n
    src = x[:rows]
    out = torch.empty_like(src)
    dist.all_to_all_single(out, src)
    ref = torch.empty_like(src)
    dist.all_to_all_single(ref, src, group=c.gloo)
    c.same("all_to_all_single 64MiB vs gloo", out, ref)
    # 16 MiB ring of isend/irecv and batch_isend_irecv: both directions in flight
    src = x[:4 << 20]
    for name, group in (("ccl", None), ("gloo", c.gloo)):
        y, z = torch.zeros_like(src), torch.zeros_like(src)
        reqs = [dist.isend(src, (me + 1) % n, group=group), dist.irecv(y, (me - 1) % n, group=group)]
        for q in reqs:
            q.wait()
        ops = [dist.P2POp(dist.isend, src, (me + 1) % n, group=group),
               dist.P2POp(dist.irecv, z, (me - 1) % n, group=group)]
        for q in dist.batch_isend_irecv(ops):
            q.wait()
        want = torch.arange(4 << 20, dtype=torch.float32).remainder_(1000) + (me - 1) % n
        c.same(f"isend/irecv ring 16MiB {name}", y, want)
        c.same(f"batch_isend_irecv ring 16MiB {name}", z, want)


def main():
    warnings.filterwarnings("ignore", category=FutureWarning)
    out_dir = sys.argv[1]
    ipd.init_from_env(timeout=120)
    rank, world = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "ccl"
    gloo = dist.new_group(backend="gloo")
    c = Checker(rank, world, gloo)
    c.path = dist.group.WORLD._get_backend(torch.device("cpu")).transfer_path
    dtypes = DTYPES
    if os.environ.get("IPT_TEST_DTYPES"):
        dtypes = [getattr(torch, d) for d in os.environ["IPT_TEST_DTYPES"].split(",")]
    for dt in dtypes:
        run_dtype(c, dt)
    run_errors(c)
    if "--large" in sys.argv:
        run_large(c)
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "checks": c.checks, "failures": c.failures,
                   "gloo_skips": c.gloo_skips, "transfer_path": c.path}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
