"""DDP on the "ccl" group vs the same training on a gloo group.

Each variant trains the same model from the same initial weights on the same
per-rank batches for 30 SGD steps, once over ccl and once over gloo, and
records the largest weight difference. Variants: fp32 (DDP's default
all_reduce hook), fp32 with the bf16-compression comm hook (runs through the
Work's future), and a bf16 model (bf16 gradients).

Usage: python _worker_ddp.py OUT_DIR  (under mpiexec or ipex-train-run)
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import ipex_train.distributed as ipd

STEPS = 30


def bf16_hook(group, bucket):
    """Compresses gradients to bf16 for the all-reduce; runs through Work.get_future()."""
    t = bucket.buffer().to(torch.bfloat16).div_(dist.get_world_size(group))
    fut = dist.all_reduce(t, group=group, async_op=True).get_future()

    def decompress(f):
        buf = bucket.buffer()
        buf.copy_(f.value()[0])
        return buf
    return fut.then(decompress)


def train(group, dtype, hook, rank):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 8)).to(dtype)
    ddp = DDP(model, process_group=group, bucket_cap_mb=0.001)  # several buckets
    if hook is not None:
        ddp.register_comm_hook(group, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        x = torch.randn(12, 16, generator=g).to(dtype)
        y = torch.randn(12, 8, generator=g).to(dtype)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x).float(), y.float())
        loss.backward()
        opt.step()
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def main():
    out_dir = sys.argv[1]
    ipd.init_from_env(timeout=120)
    rank = dist.get_rank()
    gloo = dist.new_group(backend="gloo")
    ccl = dist.group.WORLD
    res = {}
    for name, dtype, hook in [("fp32", torch.float32, None),
                              ("fp32_bf16_hook", torch.float32, bf16_hook),
                              ("fp32_fp16_hook", torch.float32, default_hooks.fp16_compress_hook),
                              ("bf16", torch.bfloat16, None)]:
        a = train(ccl, dtype, hook, rank)
        b = train(gloo, dtype, hook, rank)
        # all ranks must hold identical weights after DDP
        gathered = [torch.empty_like(a) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, a, group=gloo)
        res[name] = {"max_diff_vs_gloo": (a - b).abs().max().item(),
                     "max_abs": b.abs().max().item(),
                     "max_diff_across_ranks": max((t - a).abs().max().item() for t in gathered),
                     "moved": (a - train_init(dtype)).abs().max().item()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f, indent=1)
    dist.destroy_process_group()


def train_init(dtype):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).to(dtype)
    return torch.cat([p.detach().float().reshape(-1) for p in m.parameters()])


if __name__ == "__main__":
    main()
