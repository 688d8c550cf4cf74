"""BF16 split training vs torch, one MLP the size of DLRM's top MLP.

Model 1024-1024-512-256-1 (ReLU), batch 2048, MSE loss, SGD lr 0.01. One run
measures, on the same machine and threads:

  (a) torch fp32 params, fp32 compute, torch.optim.SGD(fused=True)
  (b) torch fp32 params under bf16 autocast, torch.optim.SGD(fused=True)
  (c) ours: ipex_train.optimize(dtype=bfloat16) under bf16 autocast, our fused SGD

full training step time (forward, backward, step), the optimizer step alone
against its bandwidth bound (split SGD moves 10 bytes per parameter: reads
bf16 top + int16 trail + bf16 grad, writes top + trail) using the stream
bandwidth measured here (in-place add), and the bytes per parameter that the
weights occupy at the step's peak: parameter storage + trails + the bf16
weight copies autocast makes (counted by intercepting every cast of a
parameter during one step).

bf16 speed needs native bf16 matrix units (AVX512_BF16 or AMX). On a CPU
without them oneDNN emulates bf16 matmuls and (b)/(c) are much slower than
(a); the script says so and times fewer steps there, so it still finishes.

    .venv/bin/python benchmarks/bf16_training.py [--threads N] [--steps N]
"""
import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ipex_train

SIZES = (1024, 1024, 512, 256, 1)
BATCH = 2048


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def make_mlp():
    torch.manual_seed(0)
    layers = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train_step(model, opt, x, y, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = nn.functional.mse_loss(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_it(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class CastCounter(TorchDispatchMode):
    """Bytes of every dtype conversion whose input is one of `params`."""

    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.data_ptr() for p in params}
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and \
                isinstance(args[0], torch.Tensor) and args[0].data_ptr() in self.ptrs:
            self.bytes += out.numel() * out.element_size()
        return out


def weight_bytes_per_param(model, opt, autocast):
    """(param storage + trails + casts of params during one step) / #params."""
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    stored = sum(p.numel() * p.element_size() for p in params)
    stored += sum(st["trail"].numel() * 2 for st in opt.state.values() if "trail" in st)
    x, y = torch.randn(8, SIZES[0]), torch.randn(8, 1)  # casts do not depend on the batch
    counter = CastCounter(params)
    with counter:
        train_step(model, opt, x, y, autocast)
    return (stored + counter.bytes) / numel


def stream_bandwidth(n):
    """Bytes/s of a.add_(b) on n fp32 elements (read a, read b, write a: 12 bytes/elem)."""
    a, b = torch.ones(n), torch.ones(n)
    t = time_it(lambda: a.add_(b), 2, 10)
    return 12 * n / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per configuration (default 10, or 3 without native bf16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    flags = cpu_flags()
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (a busy machine distorts the "
          "multi-threaded timings, torch's most)")
    print(f"torch {torch.__version__}, {args.threads} threads, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, ipex_train ISA {ipex_train.isa()}")
    print("native bf16 matmul: " + ("yes (" + ", ".join(sorted(flags & {'avx512_bf16', 'amx_bf16'}))
                                    + ")" if native_bf16 else
                                    "NO - this CPU lacks avx512_bf16 and AMX; oneDNN emulates bf16 "
                                    "matmuls, so (b) and (c) cannot beat fp32 here"))
    steps = args.steps or (10 if native_bf16 else 3)
    numel = sum(p.numel() for p in make_mlp().parameters())
    print(f"MLP {'-'.join(map(str, SIZES))}, {numel / 1e6:.2f}M params, batch {BATCH}, "
          f"median of {steps} timed steps (fp32: {max(steps, 5)})\n")

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, SIZES[0], generator=g), torch.randn(BATCH, 1, generator=g)

    def setup(kind):
        model = make_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, fused=True)
        if kind == "c":
            model, opt = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
        return model, opt

    results = {}
    for kind, label, autocast in [("a", "(a) torch fp32, SGD(fused=True)", False),
                                  ("b", "(b) torch autocast bf16, fp32 params", True),
                                  ("c", "(c) ipex_train bf16 split + autocast", True)]:
        model, opt = setup(kind)
        n = max(steps, 5) if kind == "a" else steps
        t = time_it(lambda: train_step(model, opt, x, y, autocast), 1, n)
        bpp = weight_bytes_per_param(*setup(kind), autocast)  # a fresh copy, batch 8
        results[kind] = t
        print(f"{label:42s} {t * 1e3:10.1f} ms/step  {BATCH / t:9.0f} samples/s  "
              f"weights at peak {bpp:.1f} bytes/param")
    a, b, c = results["a"], results["b"], results["c"]
    print(f"\nspeedup (c) vs (a): {a / c:.2f}x (target >= 1.8x)   (c) vs (b): {b / c:.2f}x "
          "(target >= 1.0x)")

    # Optimizer step alone, against the memory-bandwidth bound.
    # The split step's footprint (top + trail + grad, 6 B/param) is ~10 MB: it can
    # stay in the last-level cache, so its bound uses the stream bandwidth of an
    # in-place add with the same footprint (8 B/elem); DRAM's is shown too.
    bw_dram = stream_bandwidth(32 << 20)
    bw = stream_bandwidth(max(1, numel * 6 // 8))
    print(f"\nstream bandwidth (in-place add, 12 B/elem): {bw / 1e9:.1f} GB/s at the split step's "
          f"footprint ({numel * 6 / 1e6:.0f} MB), {bw_dram / 1e9:.1f} GB/s from DRAM (256 MB)")
    model, opt = setup("c")
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
    t_ours = time_it(opt.step, 3, 20)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, fused=True)
    for p in ref.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    t_ref = time_it(ref_opt.step, 3, 20)
    for label, t, bpp in [("ours split-bf16 SGD step", t_ours, 10),
                          ("torch fp32 SGD(fused=True) step", t_ref, 12)]:
        bound = bpp * numel / bw
        print(f"{label:34s} {t * 1e3:7.3f} ms  ({bpp} B/param: bound {bound * 1e3:.3f} ms, "
              f"{t / bound:.2f}x the bound, {bpp * numel / t / 1e9:.1f} GB/s)")
    print(f"optimizer step, torch / ours: {t_ref / t_ours:.2f}x   (target: ours within 1.15x "
          "of its bound)")


if __name__ == "__main__":
    main()
