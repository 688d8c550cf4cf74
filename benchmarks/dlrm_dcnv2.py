"""DLRM-DCNv2 (MLPerf DLRMv2) multi-hot training throughput: stock PyTorch,
TorchRec and ipex_train, one run.

Model: examples/dlrm --model dcnv2 --multi-hot (26 Criteo-shaped tables capped
at --max-rows, dim 128, MLPerf's bag sizes, sum pooling; bottom MLP
13-512-256-128, low-rank cross network 3 x rank 512 over 27 x 128 = 3456
inputs, top MLP 1024-1024-512-256-1) at --batch-size, with MLPerf's
optimizers: Adagrad for the dense part, row-wise Adagrad for the tables
(stock PyTorch has no row-wise rule: its tables use torch.optim.Adagrad's
sparse one, more state traffic). Variants:

  stock fp32          nn.EmbeddingBag(sparse=True) per table, nn.Linear/ReLU MLPs,
                      the cross network as TorchRec writes it, torch.optim.Adagrad
  stock + autocast    the same step under torch.autocast("cpu", torch.bfloat16)
  TorchRec fp32       torchrec.models.dlrm.DLRM_DCN over FBGEMM's fused CPU tables
                      (EXACT_ROWWISE_ADAGRAD), torch.optim.Adagrad dense
  TorchRec + autocast
  ours fp32, ours bf16   the examples/dlrm trainer (fused tables, fused Adagrad,
                      ipex_train.optimize; bf16 = split storage)

Every variant runs one step per round in a rotating order (a noisy machine
slows all alike); samples/s use the minimum over the rounds, the median is
printed beside it (--clock cpu: the process's CPU seconds instead of wall
time, for a shared machine). Then the GEMM compute bound: every matmul of
the step (bottom MLP, cross network, top MLP; forward, grad-input except
the first layer's, grad-weight) timed alone at its own shape and layout in
this run, the faster of torch.mm and oneDNN's linear, summed; fp32 and bf16,
with ours as a share of it. Then ours' per-component breakdown: each part's
forward + backward (and the optimizer step) timed alone on the same batch,
minimum over rounds; "other" is the step's minimum less their sum.

Usage: python benchmarks/dlrm_dcnv2.py [--steps N] [--max-rows N] [--batch-size N]
                                       [--threads N] [--clock wall|cpu]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
# examples/dlrm, not this directory's dlrm.py, is the `dlrm` package here
sys.path[:] = [os.path.join(ROOT, "examples")] + [
    p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.append(HERE)

from _dlrm_common import (VARIANTS, autocast_steps, cpu_name, dense_parameters,  # noqa: E402
                          print_rates, stock_tables, torchrec_tables)
from _timing import interleaved  # noqa: E402
from dlrm.config import NUM_DENSE, NUM_SPARSE, model_config  # noqa: E402
from dlrm.data import SyntheticCriteo, bag_columns  # noqa: E402
from dlrm.dcn import LowRankCross  # noqa: E402
from dlrm.model import mlp, run_mlp  # noqa: E402

LR = 0.004


def make_cfg(args, dtype):
    return model_config("dcnv2", multi_hot=True, max_rows=args.max_rows,
                        batch_size=args.batch_size, dtype=dtype, lr=LR, emb_lr=LR,
                        lr_warmup_steps=0, backend="gloo").check()


class StockDCN(torch.nn.Module):
    """Plain-PyTorch dense part: nn.Linear/ReLU MLPs, cat, TorchRec's cross formula."""

    def __init__(self, cfg):
        super().__init__()
        bottom, top = cfg.mlp_sizes()
        n = (NUM_SPARSE + 1) * bottom[-1]
        self.bottom = mlp([NUM_DENSE] + list(bottom), last_relu=True)
        self.cross = LowRankCross(n, cfg.cross_layers, cfg.cross_rank)
        self.top = mlp([n] + list(top), last_relu=False)

    def forward(self, dense, emb):
        x = self.bottom(dense)
        x0 = torch.cat([x.unsqueeze(1), emb], 1).flatten(1)
        xl = x0
        for v, w, c in zip(self.cross.V_kernels, self.cross.W_kernels, self.cross.bias):
            xl = x0 * (F.linear(F.linear(xl, v), w) + c) + xl
        return self.top(xl).squeeze(1)


def stock_steps(cfg):
    """(fp32 step, bf16-autocast step) of one stock model."""
    cols = bag_columns(cfg.bag_sizes())
    bags = stock_tables(cfg)
    torch.manual_seed(0)
    dense = StockDCN(cfg)
    opt = torch.optim.Adagrad(list(bags.parameters()) + list(dense.parameters()), lr=LR)

    def forward(b):
        emb = torch.stack([bag(b.sparse[:, s:e]) for bag, (s, e) in zip(bags, cols)], 1)
        return dense(b.dense, emb)
    return autocast_steps(forward, opt)


def torchrec_steps(cfg, data):
    """(fp32 step, bf16-autocast step) of torchrec.models.dlrm.DLRM_DCN over
    FBGEMM's fused CPU tables, or the reason it cannot run, for both."""
    try:
        import fbgemm_gpu  # noqa: F401
        from torchrec import KeyedJaggedTensor
        from torchrec.models.dlrm import DLRM_DCN
        from torchrec.modules.fused_embedding_modules import (  # noqa: F401
            FusedEmbeddingBagCollection)  # used by torchrec_tables
        from torchrec.optim import RowWiseAdagrad
    except ImportError as e:
        return (f"not installed ({e.name})",) * 2
    sizes = cfg.bag_sizes()
    keys, ebc = torchrec_tables(cfg.table_sizes(), cfg.embedding_dim, RowWiseAdagrad, LR)
    bottom, top = cfg.mlp_sizes()
    model = DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=NUM_DENSE,
                     dense_arch_layer_sizes=bottom, over_arch_layer_sizes=top,
                     dcn_num_layers=cfg.cross_layers, dcn_low_rank_dim=cfg.cross_rank)
    opt = torch.optim.Adagrad(dense_parameters(model, ebc), lr=LR)
    cols = bag_columns(sizes)
    kjts = {}
    for b in data:
        B = b.labels.shape[0]
        values = torch.cat([b.sparse[:, s:e].reshape(-1) for s, e in cols])
        lengths = torch.cat([torch.full((B,), k, dtype=torch.int32) for k in sizes])
        kjts[id(b)] = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values,
                                                          lengths=lengths)
    return autocast_steps(lambda b: model(b.dense, kjts[id(b)]).squeeze(1), opt)


def step_matmuls(cfg):
    """(A shape, B shape, A transposed, B transposed) of every matmul of one
    DCNv2 training step, as ours runs them (A @ B; a transposed operand is a
    transposed view of a contiguous tensor)."""
    b, r = cfg.batch_size, cfg.cross_rank
    bottom, top = cfg.mlp_sizes()
    n = (NUM_SPARSE + 1) * bottom[-1]
    mms = []
    layers = [(NUM_DENSE, bottom[0], False)] + [(i, o, True) for i, o in zip(bottom, bottom[1:])]
    layers += [(i, o, True) for i, o in zip([n] + list(top), top)]
    for n_in, n_out, need_dx in layers:  # x W^T; g^T x; g W
        mms += [((b, n_in), (n_in, n_out), False, True), ((n_out, b), (b, n_in), True, False)]
        mms += [((b, n_out), (n_out, n_in), False, False)] if need_dx else []
    for _ in range(cfg.cross_layers):  # x V^T, h W^T; gz^T h, gz W, gh^T x, gh V
        mms += [((b, n), (n, r), False, True), ((b, r), (r, n), False, True),
                ((n, b), (b, r), True, False), ((b, n), (n, r), False, False),
                ((r, b), (b, n), True, False), ((b, r), (r, n), False, False)]
    return mms


def gemm_bound(cfg, dtype, rounds, clock):
    """The step's matmuls alone: (seconds per step, FLOPs per step), each at
    the faster of torch.mm and oneDNN's linear (minimum over `rounds`)."""
    fns, flops = {}, 0
    for k, (sa, sb, ta, tb) in enumerate(step_matmuls(cfg)):
        a = torch.randn(*(sa[::-1] if ta else sa)).to(dtype)
        m = torch.randn(*(sb[::-1] if tb else sb)).to(dtype)
        a, m = (a.t() if ta else a), (m.t() if tb else m)
        fns[(k, "mm")] = lambda r, a=a, m=m: torch.mm(a, m)
        if torch.backends.mkldnn.is_available():
            fns[(k, "onednn")] = lambda r, a=a, m=m: torch.ops.mkldnn._linear_pointwise(
                a, m.t(), None, "none", [], "")
        flops += 2 * sa[0] * sa[1] * sb[1]
    t = interleaved(fns, rounds, 1, clock)
    best = {}
    for (k, _), v in t.items():
        best[k] = min(best.get(k, v[0]), v[0])
    return sum(best.values()), flops


def components(trainer, b, rounds, clock):
    """Ours' parts timed alone on batch `b`: {name: min seconds}."""
    d = trainer.dense
    dtype = d.compute_dtype or d.bottom[0].weight.dtype
    x = run_mlp(d.bottom, b.dense.to(dtype), dtype).detach()
    emb = trainer.tables(b.sparse).detach()
    x0 = torch.cat([x, emb.to(dtype)], 1).requires_grad_()
    xl = d.cross(x0, dtype).detach().requires_grad_()

    def fb(fn):
        def run(r):
            out = fn()
            out.backward(torch.ones_like(out))
        return run

    parts = {
        "embeddings": fb(lambda: trainer.tables(b.sparse)),
        "bottom MLP": fb(lambda: run_mlp(d.bottom, b.dense.to(dtype), dtype)),
        "cross": fb(lambda: d.cross(x0, dtype)),
        "top MLP": fb(lambda: run_mlp(d.top, xl, dtype)),
        "optimizer": lambda r: trainer.opt.step(),
    }
    t = interleaved(parts, rounds, 1, clock)
    return {k: v[0] for k, v in t.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed rounds (one step of each variant)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU seconds (all its threads; robust to other "
                   "processes' load on a shared machine; it counts OpenMP threads "
                   "spinning at barriers unless OMP_WAIT_POLICY=PASSIVE, printed in the "
                   "header: the two policies rank the variants differently, DEVELOPING.md)")
    args = p.parse_args()
    import ipex_train
    from dlrm.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # every variant alike
    cfg32, cfg16 = make_cfg(args, "fp32"), make_cfg(args, "bf16")
    src = SyntheticCriteo(cfg32.table_sizes(), args.batch_size, seed=0, bag_sizes=cfg32.bag_sizes())
    data = [src.batch(i) for i in range(3)]
    print(f"DLRM-DCNv2 multi-hot training, batch {args.batch_size}, dim 128, "
          f"{sum(cfg32.bag_sizes())} lookups/sample, "
          f"MLPs 13-512-256-128 / 3456-1024-1024-512-256-1, "
          f"cross 3 x rank 512, tables capped at {args.max_rows} rows ({sum(cfg32.table_sizes())} "
          f"rows); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"ISA {ipex_train.isa()}, clock {args.clock}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}", flush=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    steps = dict(zip(VARIANTS[:2], stock_steps(cfg32)))
    steps.update(zip(VARIANTS[2:4], torchrec_steps(cfg32, data)))
    ours = {"ours fp32": Trainer(cfg32), "ours bf16": Trainer(cfg16)}
    for k, tr in ours.items():
        steps[k] = tr.train_step
    runnable = {k: f for k, f in steps.items() if callable(f)}
    t = interleaved({k: (lambda r, f=f: f(data[r % len(data)])) for k, f in runnable.items()},
                    args.steps, args.warmup, clock)
    rate = {k: (args.batch_size / t[k][0] if k in t else steps[k]) for k in VARIANTS}
    what = "CPU ms/step (process time)" if args.clock == "cpu" else "ms/step"
    print(f"{what} min / median over {args.steps} rounds")
    print_rates(t, rate, ("3x", "2x", "2x", "1.8x"), ms_width=8, rate_width=8)
    for dt, name in ((torch.float32, "ours fp32"), (torch.bfloat16, "ours bf16")):
        secs, flops = gemm_bound(cfg32, dt, 3, clock)
        share = f"{secs / t[name][0]:.0%}" if name in t else "n/a"
        print(f"  GEMM bound {str(dt)[6:]:8s}: {flops / 1e9:.0f} GFLOP/step of matmuls at "
              f"{flops / secs / 1e9:.0f} GFLOP per {'CPU ' if args.clock == 'cpu' else ''}s = "
              f"{secs * 1e3:.0f} ms/step ({args.batch_size / secs:.0f} samples/s); "
              f"{name} at {share} of it", flush=True)
    for k, tr in ours.items():
        parts = components(tr, data[0], max(2, args.steps // 2), clock)
        parts["other"] = max(0.0, t[k][0] - sum(parts.values()))
        print(f"  {k} breakdown (ms, parts alone): " +
              ", ".join(f"{n} {s * 1e3:.1f}" for n, s in parts.items()), flush=True)


if __name__ == "__main__":
    main()
