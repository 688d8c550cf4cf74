"""Split-bf16 optimizer steps reproduce fp32 steps bit for bit.

Fed the same gradients, the fp32 master weights rebuilt from (bf16 top,
trail) after 50 steps must equal exactly those of the same optimizer on fp32
weights, and the fp32 state (momentum, ...) too: the split kernels only change
where the fp32 value is stored. Checked for every optimizer, every ISA level
the CPU has and 1 and 2 threads.
"""
import functools

import pytest
import torch

import ipex_train
from bf16_helpers import Holder, make_optimizer, optimizer_cases

SHAPES = [(0,), (1,), (7,), (33, 17), (3, 5, 7), (33000,)]  # last: two kernel chunks
STEPS = 50


def _run(name, cfg, dtype, init, grads):
    model = Holder(init)
    opt = make_optimizer(name, model.parameters(), cfg)
    model, opt = ipex_train.optimize(model, opt, dtype=dtype)
    for step in grads:
        for p, g in zip(model.parameters(), step):
            if g.dtype != p.dtype:
                p.grad_dtype = None  # torch 2.13: allow an fp32 grad on a bf16 param
            p.grad = g.clone()
        opt.step()
    weights = list(ipex_train.fp32_state_dict(model, opt).values())
    state = [{k: v for k, v in opt.state[p].items() if k != "trail"} for p in model.parameters()]
    return weights, state, model, opt


@functools.lru_cache(maxsize=None)
def _problem():
    """Initial fp32 weights and 50 steps of gradients: bf16 (as autocast makes
    them) for even-numbered params, fp32 for odd ones - both kernel paths."""
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    dtypes = [torch.bfloat16 if i % 2 == 0 else torch.float32 for i in range(len(SHAPES))]
    grads = [[torch.randn(s, generator=g).to(dt) for s, dt in zip(SHAPES, dtypes)]
             for _ in range(STEPS)]
    return init, grads


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("name,cfg", optimizer_cases())
def test_split_matches_fp32_bitwise(name, cfg, nthreads, isa_level, threads):
    threads(nthreads)
    init, grads = _problem()
    w32, s32, _, _ = _run(name, cfg, torch.float32, init, grads)
    wsp, ssp, model, opt = _run(name, cfg, torch.bfloat16, init, grads)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for i, (a, b) in enumerate(zip(w32, wsp)):
        assert b.dtype == torch.float32
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"param {i} differs"
        assert not torch.equal(a, init[i]) or a.numel() == 0, "the weights did not move"
    for a, b in zip(s32, ssp):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k
    # The bf16 params are exactly the top halves of those fp32 weights.
    for p, w in zip(model.parameters(), wsp):
        assert torch.equal(p.detach().view(torch.int16), ipex_train.bf16_split.split(w)[0].view(torch.int16))


@pytest.mark.parametrize("name,cfg", optimizer_cases()[::2])
def test_split_result_independent_of_isa_and_threads(name, cfg, threads):
    init, grads = _problem()
    grads = grads[:10]
    results = []
    for level in ipex_train.available_isas():
        for n in (1, 2):
            threads(n)
            with ipex_train.force_isa(level):
                results.append(_run(name, cfg, torch.bfloat16, init, grads)[0])
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))
