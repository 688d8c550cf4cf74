"""DLRM interaction alone: ipex_train.nn.functional.interaction vs stock PyTorch.

Stock is TorchRec's formula in plain PyTorch: t = cat([dense, emb]), bmm(t, t^T),
gather of the upper triangle, cat with dense; autograd's own backward. Ours is
one native call each way. Batch 2048, 26 embeddings of dim 64 by default;
fp32 and bf16; forward and forward + backward; one rotating-order run,
minimum (and median) per call, and the ratio.

Usage: python benchmarks/interaction.py [--batch 2048] [--features 26] [--dim 64]
       [--threads N] [--clock wall|cpu]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved  # noqa: E402

import ipex_train  # noqa: E402
from ipex_train.nn.functional import interaction  # noqa: E402


def stock(dense, emb, iu, ju):
    t = torch.cat([dense.unsqueeze(1), emb], 1)
    return torch.cat([dense, torch.bmm(t, t.transpose(1, 2))[:, iu, ju]], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (for shared machines; best at 1 thread)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    b, f, d = args.batch, args.features, args.dim
    iu, ju = torch.triu_indices(f + 1, f + 1, offset=1)
    print(f"interaction, batch {b}, {f} embeddings + dense, dim {d}; {torch.get_num_threads()} "
          f"threads, ISA {ipex_train.isa()}, clock {args.clock}")
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(b, d).to(dt).requires_grad_()
        e = torch.randn(b, f, d).to(dt).requires_grad_()
        g = torch.randn(b, d + f * (f + 1) // 2).to(dt)
        fns = {}
        for name, fn in (("stock", lambda a, c: stock(a, c, iu, ju)), ("ours", interaction)):
            fns[f"{name} fwd"] = lambda r, fn=fn: fn(x.detach(), e.detach())
            fns[f"{name} fwd+bwd"] = lambda r, fn=fn: torch.autograd.grad(fn(x, e), (x, e), g)
        t = interleaved(fns, args.rounds, clock=clock)
        for what in ("fwd", "fwd+bwd"):
            s, o = t[f"stock {what}"], t[f"ours {what}"]
            print(f"  {str(dt)[6:]:8s} {what:8s} stock {s[0] * 1e3:7.2f} ms (median "
                  f"{s[1] * 1e3:7.2f})  ours {o[0] * 1e3:7.2f} ms (median {o[1] * 1e3:7.2f})  "
                  f"{s[0] / o[0]:.2f}x")


if __name__ == "__main__":
    main()
