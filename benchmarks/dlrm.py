"""DLRM training throughput: stock PyTorch vs TorchRec vs ipex_train, one run.

One model config: 26 Criteo-shaped tables (capped at --max-rows), embedding
dim 64, bottom MLP 13-512-256-64, top MLP 415-512-512-256-1, batch 2048,
SGD everywhere (plain row updates for the tables). Prints training samples/s:

  (a) stock PyTorch fp32: nn.EmbeddingBag(sparse=True) + torch.optim.SGD
  (b) TorchRec's DLRM with FBGEMM's fused CPU embeddings (EXACT_SGD)
  (c) ipex_train fp32, (d) ipex_train bf16-split  (the examples/dlrm trainer)
  world size 2 (bf16-split): "ccl" vs "gloo" backends, 2 processes on 127.0.0.1

and the ratios. The same pre-generated batches feed every variant (data
generation is not timed). Usage: python benchmarks/dlrm.py [--steps N] [--max-rows N]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.append(ROOT)  # tests._procs: the shared process launcher

from dlrm.config import NUM_DENSE, NUM_SPARSE, Config  # noqa: E402
from dlrm.data import SyntheticCriteo  # noqa: E402
from dlrm.embeddings import fused_available, initial_table  # noqa: E402
from dlrm.model import DenseArch  # noqa: E402
from tests._procs import LOOPBACK_CCL, ProcessTimeout, run_ranks  # noqa: E402

LR = 0.05


def make_cfg(args, dtype):
    return Config(max_rows=args.max_rows, embedding_dim=64, bottom_mlp="512-256-64",
                  top_mlp="512-512-256-1", batch_size=args.batch_size, dtype=dtype,
                  embeddings="fused" if fused_available() else "torch", emb_optimizer="sgd",
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


def stock(cfg, data, warmup, steps):
    """(a) nn.EmbeddingBag(sparse=True) per table, one torch.optim.SGD over everything."""
    rows, dim = cfg.table_sizes(), cfg.embedding_dim
    bags = torch.nn.ModuleList(
        torch.nn.EmbeddingBag(n, dim, mode="sum", sparse=True, _weight=initial_table(n, dim, 0, t))
        for t, n in enumerate(rows))
    torch.manual_seed(0)
    dense = DenseArch(NUM_DENSE, NUM_SPARSE, *cfg.mlp_sizes())
    opt = torch.optim.SGD(list(bags.parameters()) + list(dense.parameters()), lr=LR)

    def step(b):
        off = torch.arange(b.labels.shape[0])
        emb = torch.stack([bag(b.sparse[:, t].contiguous(), off) for t, bag in enumerate(bags)], 1)
        loss = F.binary_cross_entropy_with_logits(dense(b.dense, emb), b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return samples_per_s(step, data, warmup, steps)


def torchrec_dlrm(cfg, data, warmup, steps):
    """(b) torchrec.models.dlrm.DLRM over torchrec's FusedEmbeddingBagCollection."""
    try:
        import fbgemm_gpu  # noqa: F401
        from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        from torchrec.models.dlrm import DLRM
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    except ImportError as e:
        return f"not installed ({e.name})"
    rows, dim = cfg.table_sizes(), cfg.embedding_dim
    keys = [f"f{t}" for t in range(NUM_SPARSE)]
    tables = [EmbeddingBagConfig(name=f"t{t}", embedding_dim=dim, num_embeddings=n,
                                 feature_names=[keys[t]]) for t, n in enumerate(rows)]
    ebc = FusedEmbeddingBagCollection(tables=tables, optimizer_type=torch.optim.SGD,
                                      optimizer_kwargs={"lr": LR}, device=torch.device("cpu"))
    bottom, top = cfg.mlp_sizes()
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=NUM_DENSE,
                 dense_arch_layer_sizes=bottom, over_arch_layer_sizes=top)
    fused = {id(p) for p in ebc.parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if id(p) not in fused], lr=LR)
    kjts = [KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=b.sparse.t().contiguous().view(-1),
        lengths=torch.ones(NUM_SPARSE * b.labels.shape[0], dtype=torch.int32)) for b in data]
    inputs = {id(b): k for b, k in zip(data, kjts)}

    def step(b):
        logits = model(b.dense, inputs[id(b)]).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return samples_per_s(step, data, warmup, steps)


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


def fmt(x):
    return f"{x:10.0f} samples/s" if isinstance(x, float) else x


def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "n/a"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="torch threads at world size 1 "
                   "(default: torch's); each of the 2 ranks uses cores / 2")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import ipex_train

    if args.threads:
        torch.set_num_threads(args.threads)
    # Every variant flushes subnormals (a one-line setting that otherwise slows
    # elementwise ops several times); the baselines are not handicapped by it.
    torch.set_flush_denormal(True)
    cfg32, cfg16 = make_cfg(args, "fp32"), make_cfg(args, "bf16")
    data = batches(cfg32)
    print(f"DLRM training, batch {args.batch_size}, dim 64, MLPs 13-512-256-64 / "
          f"415-512-512-256-1, 26 tables capped at {args.max_rows} rows "
          f"({sum(cfg32.table_sizes())} rows); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{torch.get_num_threads()} threads, ISA {ipex_train.isa()}, "
          f"ours' tables: {cfg32.embeddings}")
    r = {}
    r["a"] = stock(cfg32, data, args.warmup, args.steps)
    print(f"(a) stock PyTorch fp32       {fmt(r['a'])}", flush=True)
    r["b"] = torchrec_dlrm(cfg32, data, args.warmup, args.steps)
    print(f"(b) TorchRec + FBGEMM fused  {fmt(r['b'])}", flush=True)
    r["c"] = ours(cfg32, data, args.warmup, args.steps)
    print(f"(c) ipex_train fp32          {fmt(r['c'])}", flush=True)
    r["d"] = ours(cfg16, data, args.warmup, args.steps)
    print(f"(d) ipex_train bf16-split    {fmt(r['d'])}", flush=True)
    print(f"ratios: (d)/(a) {ratio(r['d'], r['a'])} (target 3x), (d)/(b) {ratio(r['d'], r['b'])} "
          f"(target 1.5x), (c)/(a) {ratio(r['c'], r['a'])}, (c)/(b) {ratio(r['c'], r['b'])}")
    ccl, gloo = distributed(args, "ccl"), distributed(args, "gloo")
    print(f"world size 2, bf16-split: ccl {fmt(ccl)}, gloo {fmt(gloo)}, "
          f"ccl/gloo {ratio(ccl, gloo)}")


if __name__ == "__main__":
    main()
