"""Embedding training step: ours vs nn.EmbeddingBag(sparse=True) + torch.optim.SGD
vs FBGEMM's CPU table-batched embedding (fused EXACT_SGD / EXACT_ROWWISE_ADAGRAD).

One table of 1M x 64 fp32, batch 2048, 32 lookups per bag, indices uniform or
Zipf-distributed (hot rows scattered over the table). Times one
forward + backward + update (8 distinct batches in turn), plus sparse_add_
alone against weight.add_(grad) on the same sparse gradient (a plain
torch-allocated table, as a user's would be), and a lower bound from the bytes
the step must touch at the measured stream bandwidth, and a floor measured by
bare C++ loops that do only the step's random row traffic (row_traffic.cpp).
All variants run round-robin, one step each per round, so that a noisy phase of
a shared machine slows them alike; each is reported as the minimum over the
rounds (the median beside it) and ratios use the minima. Row-wise Adagrad is
compared with FBGEMM's only (torch has no such optimizer).

    python benchmarks/embedding.py [--rows 1000000] [--iters 30] [--threads N]
    python benchmarks/embedding.py --parts [--reps 5] [--ops] [--threads N]

--parts times ours only (the module's step for SGD and row-wise Adagrad, fp32
and bf16-split; the forward alone; sparse_add_ on a huge-page table like the
floor's; with --ops also the two ops
called directly, without autograd) as shares of the floor's speed, the floor
measured in the same run between repeats (floor, then all variants
round-robin, --reps times): medians of medians, and the range over the repeats
says how noisy the machine was. Cheap enough to repeat on a loaded machine;
--cpu-time times both by process CPU time instead (all threads: at 2 threads a
thread spinning at a barrier while the other was preempted still counts).
"""
import argparse
import gc
import itertools
import os
import pathlib
import shutil
import statistics
import subprocess
import time

import numpy as np
import torch

import _timing  # benchmarks/_timing.py
import ipex_train
from ipex_train import _ops
from ipex_train.sparse import FusedEmbeddingBag, sparse_add_


def batches(kind, rows, bags, per_bag, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "uniform":
            idx = rng.integers(0, rows, bags * per_bag)
        else:  # Zipf(1.05) ranks, scattered over the table by a fixed odd multiplier
            ranks = rng.zipf(1.05, bags * per_bag) % rows
            idx = (ranks * 2654435761) % rows
        off = np.arange(bags, dtype=np.int64) * per_bag
        out.append((torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(off)))
    return out


def interleaved(variants, iters, clock=time.perf_counter):
    """variants: {name: (fn, data)}, run round-robin (_timing.interleaved).
    Every call, whichever variant makes it, takes the next batch of its data:
    a batch is met again only after len(data) calls, by when the 16 MiB of table
    rows it touched have left the caches. (Giving every variant of a round the
    same batch let each one after the first find its rows in L3: a forward ran
    0.3-0.5 ms faster so, which no training step sees.)
    Returns {name: (min ms, median ms)}."""
    calls = itertools.count()
    fns = {n: (lambda r, fn=fn, data=data: fn(*data[next(calls) % len(data)]))
           for n, (fn, data) in variants.items()}
    res = _timing.interleaved(fns, iters, clock=clock)
    return {n: (lo * 1e3, med * 1e3) for n, (lo, med) in res.items()}


def stream_bandwidth():
    """GB/s of an in-place a += b over 64 MiB arrays (12 bytes moved per element)."""
    a, b = torch.ones(16 << 20), torch.ones(16 << 20)
    t = _timing.best(lambda: a.add_(b), 10) * 1e3
    return 12 * a.numel() / (t * 1e-3) / 1e9


HERE = pathlib.Path(__file__).resolve().parent


def row_traffic_floor(rows, dim, bags, per_bag, rounds, cpu_clock=False):
    """(forward ms, update ms, sparse add ms, row-wise Adagrad update ms) of
    benchmarks/row_traffic.cpp (minima over the rounds, then the same four as
    medians): bare
    loops doing only the table traffic (uniform rows), built here on first use,
    run in its own process with torch's thread count. None if no C++ compiler."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        return None
    src = HERE / "row_traffic.cpp"
    exe = HERE.parent / "build" / "benchmarks" / "row_traffic"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        isa = [] if ipex_train.isa() == "scalar" else ["-mavx2", "-mfma"]
        subprocess.run([cxx, "-O3", *isa, "-fopenmp", str(src), "-o", str(exe)], check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
               ROW_TRAFFIC_CLOCK="cpu" if cpu_clock else "wall")
    out = subprocess.run([str(exe), str(rows), str(dim), str(bags), str(per_bag), str(rounds)],
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return tuple(float(x) for x in out[:8])


def torch_step(rows, dim, lr):
    emb = torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=lr)

    def step(idx, off):
        out = emb(idx, off)
        out.backward(torch.ones_like(out))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, emb


def fbgemm_step(rows, dim, lr, optimizer):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType as OptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)
    opt = {"sgd": OptimType.EXACT_SGD, "rowwise_adagrad": OptimType.EXACT_ROWWISE_ADAGRAD}[optimizer]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=opt,
        learning_rate=lr, eps=1e-8)

    def step(idx, off):
        offs = torch.cat([off, torch.tensor([idx.numel()])])
        out = tbe(idx, offs)
        out.backward(torch.ones_like(out))
    return step, tbe


def ours_step(rows, dim, lr, optimizer, dtype):
    emb = FusedEmbeddingBag(rows, dim, mode="sum", optimizer=optimizer, lr=lr, dtype=dtype)

    def step(idx, off):
        out = emb(idx, off)
        out.backward(torch.ones_like(out))
    return step, emb


def forward_only(module):
    def fwd(idx, off):
        with torch.no_grad():
            module(idx, off)
    return fwd


def ops_step(emb, rule):
    """forward op + backward-update op called directly: the module's step
    without autograd and Python glue."""
    ops = torch.ops.ipex_train
    tabs = emb._tables
    state1 = [t._buffers["state_sum"] for t in tabs] if rule != "sgd" else []
    trails = [t._buffers["trail"] for t in tabs] if emb.dtype == torch.bfloat16 else []
    eps = float(emb.optimizer.param_groups[0]["eps"])

    def step(idx, off):
        out = ops.embedding_bags_forward(emb._weights(), [idx], [off], [], [-1], False, False)
        ops.embedding_bags_backward_update_(emb._weights(), trails, state1, [], torch.ones_like(out),
                                            [idx], [off], [], [-1], False, False, rule, 0.01, eps,
                                            0.0, 0.0, 0.0, False)
    return step


def parts(args):
    """Ours only, as shares of the floor's speed, the floor measured in the same
    run: each of --reps repeats runs row_traffic.cpp (its own process) and then
    every variant round-robin (--iters rounds); a share is floor median / ours
    median within one repeat, and the median share over the repeats is printed
    with its range (how noisy the machine was). Row-wise Adagrad's floor is the
    forward plus the floor's row-wise update (the rows and one state line per
    row); its share against the SGD floor (rows only) is printed beside it.
    """
    R, D, B, L, lr = args.rows, args.dim, args.batch, args.per_bag, 0.01
    f32, b16 = torch.float32, torch.bfloat16
    table = []  # (kind, variant, median share, lo, hi, median ms)
    for kind in ("uniform", "zipf"):
        data = batches(kind, R, B, L, 8)
        variants, keep = {}, []
        for opt in ("sgd", "rowwise_adagrad"):
            for dt in (f32, b16):
                step, emb = ours_step(R, D, lr, opt, dt)
                tag = f"{opt} {str(dt)[6:]}"
                variants[f"step {tag}"] = (step, data)
                if args.ops:
                    variants[f"ops {tag}"] = (ops_step(emb, opt), data)
                if opt == "sgd":
                    variants[f"fwd {tag}"] = (forward_only(emb), data)
                keep.append(emb)
        # on huge pages, as the floor's table (a torch-allocated one on 4 KiB pages
        # took 1.2-1.3x as long here: a page walk per row)
        w = _ops.table_tensor((R, D), torch.float32).normal_()
        grads = []
        for i0, _ in data:
            g = torch.sparse_coo_tensor(i0[None], torch.full((i0.numel(), D), 1e-3), (R, D))
            grads.append((g,))
        variants["sparse_add_"] = (lambda g: sparse_add_(w, g, -lr), grads)
        keep += [w, grads]
        shares = {n: [] for n in variants}
        lo_shares = {n: [] for n in variants}  # the same from minima
        ms = {n: [] for n in variants}
        sgd_shares = {n: [] for n in variants if "rowwise" in n}  # against the SGD floor
        floors = []
        for _ in range(args.reps):
            fl = row_traffic_floor(R, D, B, L, args.iters, args.cpu_time)
            if fl is None:
                print("no C++ compiler: no floor")
                return
            floors.append(fl[4:8])  # medians
            res = interleaved(variants, args.iters,
                              time.process_time if args.cpu_time else time.perf_counter)
            for name, (lo, med) in res.items():
                for f, t, out in ((fl[4:8], med, shares), (fl[:4], lo, lo_shares)):
                    ref = (f[0] if name.startswith("fwd") else f[2] if name == "sparse_add_"
                           else f[0] + f[3] if "rowwise" in name else f[0] + f[1])
                    out[name].append(ref / t * 100)
                    if "rowwise" in name and out is shares:
                        sgd_shares[name].append((f[0] + f[1]) / t * 100)
                ms[name].append(med)
        med = statistics.median
        fwd, upd, add, rw = (med(f[k] for f in floors) for k in range(4))
        print(f"\n== {kind} indices; floor (uniform rows), median of {args.reps} repeats' medians: "
              f"forward {fwd:.2f} + update {upd:.2f} = {fwd + upd:.2f} ms (repeats "
              f"{min(f[0] + f[1] for f in floors):.2f}-{max(f[0] + f[1] for f in floors):.2f}), "
              f"row-wise Adagrad: forward + update {rw:.2f} = {fwd + rw:.2f} ms, "
              f"sparse add {add:.2f} ms")
        print("  variant                        ms   share of the floor's speed: from medians, "
              "median [range over repeats]; from minima, median")
        for name in variants:
            sh = shares[name]
            extra = (f"   (of the SGD floor: {med(sgd_shares[name]):.0f}%)"
                     if name in sgd_shares else "")
            print(f"  {name:28s} {med(ms[name]):6.2f}   {med(sh):4.0f}% [{min(sh):3.0f}-{max(sh):3.0f}]   "
                  f"{med(lo_shares[name]):4.0f}%{extra}")
            table.append((kind, name, med(sh), min(sh), max(sh), med(ms[name])))
        del variants, keep
        gc.collect()
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--per-bag", type=int, default=32)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--parts", action="store_true", help="ours only, by part (see the docstring)")
    ap.add_argument("--reps", type=int, default=5, help="--parts: floor + variants repeats")
    ap.add_argument("--cpu-time", action="store_true",
                    help="--parts: time ours and the floor by process CPU time (all threads), "
                         "not wall time: a loaded machine's preemptions count far less")
    ap.add_argument("--ops", action="store_true",
                    help="--parts: also the two ops called directly (no autograd)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.parts:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ipex_train ISA "
              f"{ipex_train.isa()}; table {args.rows} x {args.dim}, batch {args.batch} x "
              f"{args.per_bag} lookups")
        parts(args)
        return
    R, D, B, L, lr = args.rows, args.dim, args.batch, args.per_bag, 0.01
    bw = stream_bandwidth()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ipex_train ISA "
          f"{ipex_train.isa()}; table {R} x {D} fp32, batch {B} x {L} lookups; stream {bw:.1f} GB/s")
    print("times: min (median) ms over the rounds; all variants run round-robin in each "
          "round; ratios use the minima")
    try:
        import fbgemm_gpu  # noqa: F401
        have_fbgemm = True
    except Exception as e:  # noqa: BLE001
        print(f"fbgemm_gpu unavailable ({e}); (b) skipped")
        have_fbgemm = False
    f32, b16 = torch.float32, torch.bfloat16
    for kind in ("uniform", "zipf"):
        data = batches(kind, R, B, L, 8)
        uniq = statistics.mean(int(torch.unique(i).numel()) for i, _ in data)
        print(f"\n== {kind} indices: {uniq:.0f} distinct rows of {B * L} lookups per batch")
        variants, keep = {}, []
        step, emb = torch_step(R, D, lr)
        variants["torch"] = (step, data)
        variants["torch_fwd"] = (forward_only(emb), data)
        # sparse_add_ alone vs weight.add_ on the same uncoalesced gradients (one
        # per batch), on a separate torch-allocated table (as a user's
        # nn.EmbeddingBag weight is)
        grads = []
        for i0, o0 in data:
            out = emb(i0, o0)
            out.backward(torch.ones_like(out))
            grads.append((emb.weight.grad.detach().clone(),))
            emb.weight.grad = None
        w = torch.nn.EmbeddingBag(R, D, mode="sum").weight.detach()
        variants["add_torch"] = (lambda g: w.add_(g, alpha=-lr), grads)
        variants["add_ours"] = (lambda g: sparse_add_(w, g, -lr), grads)
        keep += [emb, w, grads]
        for opt in ("sgd", "rowwise_adagrad"):
            if have_fbgemm:
                step, tbe = fbgemm_step(R, D, lr, opt)
                variants[f"fbgemm_{opt}"] = (step, data)
                keep.append(tbe)
            for dt in (f32, b16):
                step, emb = ours_step(R, D, lr, opt, dt)
                variants[f"ours_{opt}_{dt}"] = (step, data)
                if opt == "sgd":
                    variants[f"ours_fwd_{dt}"] = (forward_only(emb), data)
                keep.append(emb)
        # the floor runs just before and just after the variants (same phase of the
        # machine as far as possible); the faster of the two is used
        floors = [row_traffic_floor(R, D, B, L, args.iters)] if kind == "uniform" else []
        res = interleaved(variants, args.iters)
        t = {k: v[0] for k, v in res.items()}
        if floors and floors[0] is not None:
            floors.append(row_traffic_floor(R, D, B, L, args.iters))

        def show(k):
            return f"{res[k][0]:.2f} ms ({res[k][1]:.2f})"
        # bytes an fp32 SGD step must move: pooled reads of every lookup's row,
        # the output and its gradient, read+write of every distinct row, indices.
        row = D * 4
        fp32_bytes = B * L * row + 2 * B * row + 2 * uniq * row + B * L * 8
        bound = fp32_bytes / (bw * 1e9) * 1e3
        print(f"forward only      : torch {show('torch_fwd')}, ours fp32 {show(f'ours_fwd_{f32}')} "
              f"({t['torch_fwd'] / t[f'ours_fwd_{f32}']:.2f}x), ours bf16 {show(f'ours_fwd_{b16}')}")
        print(f"(a) nn.EmbeddingBag(sparse) + SGD : {show('torch')}")
        for opt in ("sgd", "rowwise_adagrad"):
            fb = t.get(f"fbgemm_{opt}")
            if fb is not None:
                print(f"(b) FBGEMM TBE {opt:16s}   : {show(f'fbgemm_{opt}')}")
            for dt in (f32, b16):
                k = f"ours_{opt}_{dt}"
                line = f"(c) ours {opt:16s} {str(dt)[6:]:8s}: {show(k)}"
                if opt == "sgd":
                    line += f"   vs (a) {t['torch'] / t[k]:.1f}x"
                if fb is not None:
                    line += f"   vs (b) {fb / t[k]:.1f}x"
                print(line)
        print(f"sparse_add_ alone : {show('add_ours')} vs weight.add_(grad) {show('add_torch')} "
              f"({t['add_torch'] / t['add_ours']:.1f}x)")
        print(f"bound (fp32 SGD step, {fp32_bytes / 1e6:.1f} MB at stream bandwidth): {bound:.2f} ms; "
              f"ours fp32 sgd at {bound / t[f'ours_sgd_{f32}'] * 100:.0f}% of it")
        if floors and floors[0] is not None:
            fwd, upd, add, rw = (min(f[k] for f in floors) for k in range(4))
            print(f"floor (benchmarks/row_traffic.cpp: bare loops, the step's row traffic only, "
                  f"no sort / checks / autograd): forward {fwd:.2f} + update {upd:.2f} = "
                  f"{fwd + upd:.2f} ms; (a) / floor = {t['torch'] / (fwd + upd):.1f}x, the most "
                  f"any fused step could gain over (a) here; ours fp32 sgd at "
                  f"{(fwd + upd) / t[f'ours_sgd_{f32}'] * 100:.0f}% of the floor's speed")
            print(f"floor of row-wise Adagrad (the same plus one state line per row): "
                  f"{fwd + rw:.2f} ms; ours fp32 at "
                  f"{(fwd + rw) / t[f'ours_rowwise_adagrad_{f32}'] * 100:.0f}% of its speed")
            print(f"floor of sparse_add_ (the same, one row += alpha * values row per lookup, in "
                  f"order): {add:.2f} ms; add_ / floor = {t['add_torch'] / add:.1f}x; ours at "
                  f"{add / t['add_ours'] * 100:.0f}% of the floor's speed")
        del variants, keep, res
        gc.collect()


if __name__ == "__main__":
    main()
