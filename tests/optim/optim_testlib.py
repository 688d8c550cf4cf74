"""Shared helpers of the optimizer tests: random problems and a step runner."""
import torch

# Odd sizes: empty, scalar-like, below/around vector widths, multi-dim, and one
# tensor over two kernel chunks (32768 elements) so threads split it.
SHAPES = [(0,), (1,), (7,), (33, 17), (1000,), (3, 5, 7), (40000,)]


def problem(seed, steps=50, scale=1.0, skip=True):
    """Random params and `steps` rounds of grads. With `skip`, param 2 has no
    grad on every 7th step and param 3 gets its first grad at step 5, so the
    per-param step counts differ (torch skips params whose grad is None)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) * scale for s in SHAPES]
    grads = []
    for t in range(steps):
        row = [torch.randn(s, generator=g) for s in SHAPES]
        if skip:
            if t % 7 == 3:
                row[2] = None
            if t < 5:
                row[3] = None
        grads.append(row)
    return params, grads


def run(make_opt, params, grads, closure=False):
    """Clones params, builds the optimizer with make_opt(params) and steps
    through the grads; returns (params, optimizer)."""
    ps = [p.clone().requires_grad_() for p in params]
    opt = make_opt(ps)
    for row in grads:
        for p, g in zip(ps, row):
            p.grad = None if g is None else g.clone()
        if closure:
            opt.step(lambda: torch.tensor(0.0))
        else:
            opt.step()
    return ps, opt


def cfg_id(cfg):
    return "-".join(f"{k}{v}" for k, v in cfg.items())


def join_split(top, trail):
    """fp32 values from (bf16 top, int16 trail)."""
    hi = top.view(torch.int16).to(torch.int32) << 16
    lo = trail.to(torch.int32) & 0xFFFF
    return (hi | lo).view(torch.float32)


def split(w):
    """(bf16 top, int16 trail) of fp32 w: an exact bit partition."""
    bits = w.view(torch.int32)
    top = (bits >> 16).to(torch.int16).view(torch.bfloat16).clone()
    trail = (bits & 0xFFFF).to(torch.int16)
    return top, trail


def bits_equal(a, b):
    """Bitwise equality (NaN-safe)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))
