"""DLRM training throughput: stock PyTorch, TorchRec and ipex_train, one run.

One model config: 26 Criteo-shaped tables (capped at --max-rows), embedding
dim 64, bottom MLP 13-512-256-64, top MLP 415-512-512-256-1, batch 2048,
SGD everywhere (plain row updates for the tables). For each thread count of
--threads-list it prints ms/step and training samples/s of:

  stock fp32        nn.EmbeddingBag(sparse=True), nn.Linear/ReLU MLPs, bmm + triu
                    gather interaction (TorchRec's formula), one torch.optim.SGD
  stock + autocast  the same step under torch.autocast("cpu", torch.bfloat16)
  TorchRec fp32     torchrec.models.dlrm.DLRM over FBGEMM's fused CPU embeddings
  TorchRec + autocast
  ours fp32, ours bf16   the examples/dlrm trainer (fused tables, native
                    interaction, fused SGD, ipex_train.optimize; bf16 = split storage)

then the ratios to the issue's targets, the GEMM compute bound (every matmul
of the step's MLPs, fwd and bwd, timed alone at its own shape in this run,
fp32 and bf16) with ours as a share of it, and ours' per-component breakdown
(torch.profiler self time: embeddings, interaction, MLPs, optimizer, other).
The variants run one step each per round in a rotating order (a noisy
machine slows all alike); samples/s use the minimum step time over the
rounds, the median is printed beside it. The same pre-generated batches feed
every variant. World size 2 (bf16-split): "ccl" vs "gloo", 2 processes on
127.0.0.1. Columns whose package is missing print "not installed".

Usage: python benchmarks/dlrm.py [--steps N] [--max-rows N] [--threads-list 1,2]
The second model, DLRM-DCNv2 on multi-hot bags (MLPerf DLRMv2), has the same
variants in benchmarks/dlrm_dcnv2.py.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.append(ROOT)  # tests._procs: the shared process launcher

from dlrm.config import NUM_DENSE, NUM_SPARSE, Config  # noqa: E402
from dlrm.data import SyntheticCriteo  # noqa: E402
from dlrm.model import mlp  # noqa: E402
from tests._procs import LOOPBACK_CCL, ProcessTimeout, run_ranks  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _dlrm_common import (VARIANTS, autocast_steps, cpu_name, dense_parameters,  # noqa: E402
                          fmt, print_rates, ratio, stock_tables, torchrec_tables)
from _timing import interleaved  # noqa: E402

LR = 0.05


def make_cfg(args, dtype):
    return Config(max_rows=args.max_rows, embedding_dim=64, bottom_mlp="512-256-64",
                  top_mlp="512-512-256-1", batch_size=args.batch_size, dtype=dtype,
                  embeddings="fused", emb_optimizer="sgd",
                  lr=LR, emb_lr=LR, backend="gloo").check()


def batches(cfg, n=4):
    src = SyntheticCriteo(cfg.table_sizes(), cfg.batch_size, seed=0)
    return [src.batch(i) for i in range(n)]


def samples_per_s(step, data, warmup, steps):
    for i in range(warmup):
        step(data[i % len(data)])
    t = time.perf_counter()
    for i in range(steps):
        step(data[i % len(data)])
    return steps * data[0].labels.shape[0] / (time.perf_counter() - t)


class StockDense(torch.nn.Module):
    """Plain-PyTorch dense part: nn.Linear/ReLU MLPs and TorchRec's interaction
    formula (cat, bmm, upper-triangle gather, cat), autograd's own backward."""

    def __init__(self, cfg):
        super().__init__()
        bottom, top = cfg.mlp_sizes()
        self.bottom = mlp([NUM_DENSE] + list(bottom), last_relu=True)
        self.top = mlp([bottom[-1] + NUM_SPARSE * (NUM_SPARSE + 1) // 2] + list(top), last_relu=False)
        self.i, self.j = torch.triu_indices(NUM_SPARSE + 1, NUM_SPARSE + 1, offset=1)

    def forward(self, dense, emb):
        x = self.bottom(dense)
        t = torch.cat([x.unsqueeze(1), emb], 1)
        z = torch.bmm(t, t.transpose(1, 2))[:, self.i, self.j]
        return self.top(torch.cat([x, z], 1)).squeeze(1)


def stock_steps(cfg):
    """(fp32 step, bf16-autocast step) of one stock model (shared tables)."""
    bags = stock_tables(cfg)
    torch.manual_seed(0)
    dense = StockDense(cfg)
    opt = torch.optim.SGD(list(bags.parameters()) + list(dense.parameters()), lr=LR)

    def forward(b):
        off = torch.arange(b.labels.shape[0])
        emb = torch.stack([bag(b.sparse[:, t].contiguous(), off) for t, bag in enumerate(bags)], 1)
        return dense(b.dense, emb)
    return autocast_steps(forward, opt)


def torchrec_steps(cfg, data):
    """(fp32 step, bf16-autocast step) of torchrec.models.dlrm.DLRM over
    torchrec's FusedEmbeddingBagCollection (FBGEMM's CPU kernels, EXACT_SGD);
    or a string saying why it cannot run, for both."""
    try:
        import fbgemm_gpu  # noqa: F401
        from torchrec import KeyedJaggedTensor
        from torchrec.models.dlrm import DLRM
        from torchrec.modules.fused_embedding_modules import (  # noqa: F401
            FusedEmbeddingBagCollection)  # used by torchrec_tables
    except ImportError as e:
        return (f"not installed ({e.name})",) * 2
    keys, ebc = torchrec_tables(cfg.table_sizes(), cfg.embedding_dim, torch.optim.SGD, LR)
    bottom, top = cfg.mlp_sizes()
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=NUM_DENSE,
                 dense_arch_layer_sizes=bottom, over_arch_layer_sizes=top)
    opt = torch.optim.SGD(dense_parameters(model, ebc), lr=LR)
    kjts = [KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=b.sparse.t().contiguous().view(-1),
        lengths=torch.ones(NUM_SPARSE * b.labels.shape[0], dtype=torch.int32)) for b in data]
    inputs = {id(b): k for b, k in zip(data, kjts)}
    return autocast_steps(lambda b: model(b.dense, inputs[id(b)]).squeeze(1), opt)


def gemm_bound(cfg, dtype, rounds, clock):
    """The step's MLP matmuls alone: (seconds per step, FLOPs per step). Every
    matmul autograd runs (forward x W^T, grad-weight g^T x, grad-input g W
    except for the first bottom layer), each timed at its own shape and layout
    (minimum over `rounds`) with torch.mm and with oneDNN's linear (what
    ipex_train.nn.functional.linear_relu may call), the faster counted, summed."""
    b = cfg.batch_size
    bottom, top = cfg.mlp_sizes()
    sizes = [(NUM_DENSE, bottom[0], False)] + [(i, o, True) for i, o in zip(bottom, bottom[1:])]
    top_in = bottom[-1] + NUM_SPARSE * (NUM_SPARSE + 1) // 2
    sizes += [(i, o, True) for i, o in zip([top_in] + list(top), top)]
    mms = []
    for n_in, n_out, need_dx in sizes:
        x, w, g = (torch.randn(*s).to(dtype) for s in ((b, n_in), (n_out, n_in), (b, n_out)))
        mms += [(x, w.t()), (g.t(), x)] + ([(g, w)] if need_dx else [])
    runs = {(k, "mm"): (lambda r, a=a, m=m: torch.mm(a, m)) for k, (a, m) in enumerate(mms)}
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None) \
        if torch.backends.mkldnn.is_available() else None
    if onednn is not None:
        runs.update({(k, "onednn"): (lambda r, a=a, m=m: onednn(a, m.t(), None, "none", [], ""))
                     for k, (a, m) in enumerate(mms)})
    t = interleaved(runs, rounds, clock=clock)
    best = [min(v[0] for (k2, _), v in t.items() if k2 == k) for k in range(len(mms))]
    return sum(best), sum(2 * a.shape[0] * a.shape[1] * m.shape[1] for a, m in mms)


# Ours' step split by torch.profiler: an op's self time goes to the first
# bucket matched by its name or its nearest ancestor's; the rest of the wall
# time (other ops, Python, autograd engine) is "other".
BUCKETS = [("embeddings", ("embedding_bags", "_FusedLookup", "sparse_row", "sparse_add")),
           ("interaction", ("interaction",)),
           ("optimizer", ("Optimizer.", "_step_")),
           ("MLPs", ("aten::linear", "AddmmBackward", "MmBackward", "ReluBackward", "aten::relu",
                     "aten::addmm", "aten::mm", "threshold_backward", "clamp_min", "_LinearReLU",
                     "_linear_pointwise", "relu_bias_grad"))]


def breakdown(step, data, steps=3):
    """{bucket: ms per step} of `steps` profiled steps, "other" included."""
    from torch.profiler import ProfilerActivity, profile

    step(data[0])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(data[(i + 1) % len(data)])
    wall = (time.perf_counter() - t0) * 1e3 / steps
    ms = {name: 0.0 for name, _ in BUCKETS}
    for ev in prof.events():
        e = ev
        while e is not None:
            hit = next((n for n, pats in BUCKETS if any(p in e.name for p in pats)), None)
            if hit:
                ms[hit] += ev.self_cpu_time_total / 1e3 / steps
                break
            e = e.cpu_parent
    ms["other"] = max(0.0, wall - sum(ms.values()))
    return ms


def ours_step(cfg):
    """The examples/dlrm trainer's step (world size 1)."""
    from dlrm.trainer import Trainer

    return Trainer(cfg).train_step


def ours(cfg, data, warmup, steps, rank=0, world=1):
    """(c)/(d): the examples/dlrm trainer (fused tables, fused SGD, ipex_train.optimize)."""
    from dlrm.trainer import Trainer

    trainer = Trainer(cfg, rank, world)
    return samples_per_s(trainer.train_step, data, warmup, steps)


def worker(args):
    """One rank of the world-size-2 run (started by `distributed`)."""
    from dlrm.parallel import init_distributed

    cfg = make_cfg(args, "bf16")
    cfg.backend = args.worker
    rank, world = init_distributed(cfg.backend)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    torch.set_flush_denormal(True)
    rate = ours(cfg, batches(cfg), args.warmup, args.steps, rank, world)
    if rank == 0:
        print("RESULT " + json.dumps(rate), flush=True)
    torch.distributed.destroy_process_group()


def distributed(args, backend):
    """samples/s of 2 ranks on 127.0.0.1 over `backend`, or a reason it did not run."""
    cmd = [sys.executable, __file__, "--worker", backend, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--max-rows", str(args.max_rows),
           "--batch-size", str(args.batch_size)]
    try:
        outs = [r.stdout for r in run_ranks(cmd, 2, args.timeout, **LOOPBACK_CCL)]
    except ProcessTimeout:
        return f"timed out after {args.timeout} s"
    for line in outs[0].splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return "failed:\n" + "\n".join(o[-2000:] for o in outs)


def sweep(args, steps, data, n_threads):
    """One thread count: every variant, the GEMM bound, ours' breakdown."""
    torch.set_num_threads(n_threads)
    b = args.batch_size
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    bound = {dt: gemm_bound(make_cfg(args, "fp32"), dt, 5, clock)
             for dt in (torch.float32, torch.bfloat16)}
    runnable = {k: f for k, f in steps.items() if callable(f)}
    t = interleaved({k: (lambda r, f=f: f(data[r % len(data)])) for k, f in runnable.items()},
                    args.steps, args.warmup, clock)
    rate = {k: (b / t[k][0] if k in t else steps[k]) for k in VARIANTS}
    what = "CPU ms/step (process time)" if args.clock == "cpu" else "ms/step"
    print(f"\n== {n_threads} thread(s) ==  {what} min / median over {args.steps} rounds")
    print_rates(t, rate, ("3x", "1.8x", "2x", "1.4x"), ms_width=7, rate_width=10)
    for dt, name in ((torch.float32, "ours fp32"), (torch.bfloat16, "ours bf16")):
        secs, flops = bound[dt]
        share = f"{secs / t[name][0]:.0%}" if name in t else "n/a"
        print(f"  GEMM bound {str(dt)[6:]:8s}: {flops / 1e9:.2f} GFLOP/step of MLP matmuls at "
              f"{flops / secs / 1e9:.0f} GFLOPS = {secs * 1e3:.1f} ms/step "
              f"({b / secs:.0f} samples/s); {name} at {share} of it (target >= 70%)")
    for name in ("ours fp32", "ours bf16"):
        if name in runnable:
            ms = breakdown(runnable[name], data)
            total = sum(ms.values())
            print(f"  {name} breakdown, wall ms/step (share): " +
                  ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in ms.items()), flush=True)
    return rate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each variant)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads-list", default="", help="comma-separated torch thread counts "
                   "(default: torch's); each of the 2 ranks of world size 2 uses cores / 2")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU time (robust to other processes' load "
                   "on a shared machine; at 1 thread the cleanest figure; above, it also "
                   "counts OpenMP threads spinning at barriers). The breakdown stays wall time.")
    p.add_argument("--skip-world2", action="store_true", help="skip the world-size-2 runs")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import ipex_train

    threads = [int(n) for n in args.threads_list.split(",")] if args.threads_list else \
        [torch.get_num_threads()]
    # Every variant flushes subnormals (a one-line setting that otherwise slows
    # elementwise ops several times); the baselines are not handicapped by it.
    torch.set_flush_denormal(True)
    cfg32, cfg16 = make_cfg(args, "fp32"), make_cfg(args, "bf16")
    data = batches(cfg32)
    cpu = cpu_name()
    print(f"DLRM training, batch {args.batch_size}, dim 64, MLPs 13-512-256-64 / "
          f"415-512-512-256-1, 26 tables capped at {args.max_rows} rows "
          f"({sum(cfg32.table_sizes())} rows); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, ISA {ipex_train.isa()}, "
          f"ours' tables: {cfg32.embeddings}, clock {args.clock}", flush=True)
    steps = dict(zip(VARIANTS[:2], stock_steps(cfg32)))
    steps.update(zip(VARIANTS[2:4], torchrec_steps(cfg32, data)))
    steps["ours fp32"], steps["ours bf16"] = ours_step(cfg32), ours_step(cfg16)
    for n in threads:
        sweep(args, steps, data, n)
    if not args.skip_world2:
        ccl, gloo = distributed(args, "ccl"), distributed(args, "gloo")
        print(f"world size 2, bf16-split: ccl {fmt(ccl)}, gloo {fmt(gloo)}, "
              f"ccl/gloo {ratio(ccl, gloo)}")


if __name__ == "__main__":
    main()
