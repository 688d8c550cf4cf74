"""How far gradients accumulated over micro-batches drift in split-bf16 models.

A split-bf16 param is a bfloat16 tensor, so autograd accumulates its .grad in
bf16 across backward calls (torch's rule: a grad has its param's dtype). Over
many micro-batches the rounding of each partial sum adds up. This script
measures the relative error of the accumulated gradient against the same
accumulation in fp32 (fp32 params under the same autocast, i.e. the same
bf16 matmuls), for 1..64 micro-batches, and prints it per count.

    python benchmarks/bf16_grad_accumulation.py [--micro 1,4,16,64]
"""
import argparse
import copy

import torch
from torch import nn

import ipex_train


def model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 1))


def accumulated_grads(m, batches):
    for p in m.parameters():
        p.grad = None
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(m(x).float(), y) / len(batches)
        loss.backward()
    return [p.grad.float() for p in m.parameters()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micro", default="1,4,16,64", help="micro-batch counts (comma separated)")
    ap.add_argument("--batch", type=int, default=32, help="rows per micro-batch")
    args = ap.parse_args()
    base = model(0)
    ours = copy.deepcopy(base)
    ours, _ = ipex_train.optimize(ours, torch.optim.SGD(ours.parameters(), lr=0.1),
                                  dtype=torch.bfloat16)
    ref = copy.deepcopy(base)
    with torch.no_grad():  # the reference starts from the same (truncated) weights
        for p, q in zip(ref.parameters(), ours.parameters()):
            p.copy_(q.float())
    g = torch.Generator().manual_seed(1)
    print(f"CPU threads: {torch.get_num_threads()}, ISA: {ipex_train.isa()}")
    print("micro-batches  rel. error of the accumulated grad (bf16 params vs fp32 params)")
    for n in (int(v) for v in args.micro.split(",")):
        batches = [(torch.randn(args.batch, 256, generator=g),
                    torch.randn(args.batch, 1, generator=g)) for _ in range(n)]
        a, b = accumulated_grads(ours, batches), accumulated_grads(ref, batches)
        num = sum(((x - y) ** 2).sum() for x, y in zip(a, b)).sqrt()
        den = sum((y ** 2).sum() for y in b).sqrt()
        print(f"{n:13d}  {float(num / den):.2e}")


if __name__ == "__main__":
    main()
