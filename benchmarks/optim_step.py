"""Time per optimizer step: ipex_train.optim vs torch.optim(..., fused=True).

Cases: (a) one 16M-element fp32 param, (b) a DLRM-like group of 40 tensors of
mixed sizes (64 .. 1024x1024, ~9M elements), (c) a small MLP (1.3M elements in
8 tensors) where per-step Python overhead shows. LAMB has no torch fused
peer: it is compared with a torch._foreach implementation written here.

Ours and the peer step in turns, round by round (benchmarks/_timing.py), so
that a noisy phase of a shared machine slows both alike; times are the minimum over the rounds (the
steadier estimate of each code's own cost there) and ratios use them.
The bound: an in-place add (a.add_(b), 12 B/element) over as many elements as
the case takes its turn in the same rounds ("add_ GB/s"); "of bound" is our
GB/s (the optimizer's bytes per element) over it. The global line above the
table (best of an in-place add and a triad on 128 MiB arrays) is for reference.

    python benchmarks/optim_step.py [--steps 15] [--only adam,sgd]
"""
import argparse

import torch

import _timing  # benchmarks/_timing.py
import ipex_train


def timeit(fn, steps):
    return _timing.best(fn, steps, warmup=3)


def bandwidth_gbs(steps):
    n = 1 << 25  # 128 MiB per array
    a, b, c = torch.rand(n), torch.rand(n), torch.rand(n)
    add = timeit(lambda: a.add_(b), steps)
    triad = timeit(lambda: torch.add(b, c, alpha=0.5, out=a), steps)
    return 12 * n / min(add, triad) / 1e9


class ForeachLamb(torch.optim.Optimizer):
    """LAMB with torch._foreach ops: the peer for ipex_train.optim.Lamb."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 max_trust_ratio=10.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_trust_ratio=max_trust_ratio))

    @torch.no_grad()
    def step(self):
        for gr in self.param_groups:
            ps = [p for p in gr["params"] if p.grad is not None]
            gs = [p.grad for p in ps]
            st = [self.state[p] for p in ps]
            for s, p in zip(st, ps):
                if not s:
                    s["step"], s["m"], s["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                s["step"] += 1
            b1, b2 = gr["betas"]
            t = st[0]["step"]
            ms, vs = [s["m"] for s in st], [s["v"] for s in st]
            torch._foreach_lerp_(ms, gs, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            den = torch._foreach_div(vs, 1 - b2 ** t)
            torch._foreach_sqrt_(den)
            torch._foreach_add_(den, gr["eps"])
            r = torch._foreach_div(ms, 1 - b1 ** t)
            torch._foreach_div_(r, den)
            if gr["weight_decay"]:
                torch._foreach_add_(r, ps, alpha=gr["weight_decay"])
            wn, rn = torch._foreach_norm(ps), torch._foreach_norm(r)
            ratio = [torch.where((w > 0) & (q > 0), w / q, 1.0).clamp(max=gr["max_trust_ratio"])
                     for w, q in zip(wn, rn)]
            torch._foreach_mul_(r, ratio)
            torch._foreach_add_(ps, r, alpha=-gr["lr"])


# name, bytes moved per element, ours, peer
OPTIMIZERS = [
    ("sgd", 12, lambda ps: ipex_train.optim.SGD(ps, lr=0.01),
     lambda ps: torch.optim.SGD(ps, lr=0.01, fused=True)),
    ("sgd_momentum", 20, lambda ps: ipex_train.optim.SGD(ps, lr=0.01, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, fused=True)),
    ("adam", 28, lambda ps: ipex_train.optim.Adam(ps, lr=1e-3),
     lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
    ("adamw", 28, lambda ps: ipex_train.optim.AdamW(ps, lr=1e-3),
     lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
    ("adagrad", 20, lambda ps: ipex_train.optim.Adagrad(ps, lr=1e-2),
     lambda ps: torch.optim.Adagrad(ps, lr=1e-2, fused=True)),
    # two passes: (p, g, m, v read; m, v written) + (p, m, v read; p written)
    ("lamb", 40, lambda ps: ipex_train.optim.Lamb(ps, lr=1e-3, weight_decay=0.01),
     lambda ps: ForeachLamb(ps, lr=1e-3, weight_decay=0.01)),
]

_DLRM = [(64,), (256,), (512,), (1024,), (256, 256), (512, 256), (512, 512), (1024, 512),
         (1024, 1024), (415, 512)]
CASES = {
    "a: 1 x 16M": [(1 << 24,)],
    "b: DLRM 40 tensors": [_DLRM[i % len(_DLRM)] for i in range(40)],
    "c: MLP 1.3M": [(512, 13), (512,), (1024, 512), (1024,), (256, 1024), (256,), (1, 256), (1,)],
}


def params_for(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return ps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    bw = bandwidth_gbs(args.steps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, isa {ipex_train.isa()}")
    print(f"streaming bound (best of in-place add / triad): {bw:.1f} GB/s")
    print(f"{'case':20} {'optimizer':13} {'ours ms':>9} {'peer ms':>9} {'peer/ours':>9} "
          f"{'ours GB/s':>9} {'add_ GB/s':>8} {'of bound':>8}")
    for case, shapes in CASES.items():
        n = sum(torch.Size(s).numel() for s in shapes)
        for name, bpe, ours, peer in OPTIMIZERS:
            if only and name not in only:
                continue
            o_ours, o_peer = ours(params_for(shapes)), peer(params_for(shapes))
            # the bound's probe takes its turn in the same rounds, on as many elements
            a, b = torch.rand(n), torch.rand(n)
            res = _timing.interleaved({"ours": lambda r: o_ours.step(), "peer": lambda r: o_peer.step(),
                                       "add": lambda r: a.add_(b)}, args.steps)
            t_ours, t_peer, t_add = res["ours"][0], res["peer"][0], res["add"][0]
            del o_ours, o_peer, a, b
            case_bw = 12 * n / t_add / 1e9
            gbs = bpe * n / t_ours / 1e9
            print(f"{case:20} {name:13} {t_ours * 1e3:9.3f} {t_peer * 1e3:9.3f} "
                  f"{t_peer / t_ours:9.2f} {gbs:9.1f} {case_bw:8.1f} {gbs / case_bw:8.0%}")


if __name__ == "__main__":
    main()
