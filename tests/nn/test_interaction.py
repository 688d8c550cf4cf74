"""ipex_train.nn.functional.interaction against plain PyTorch.

How results are compared:
- bitwise, fp32 and bf16, forward and backward: against `_ordered_*` below,
  which replay the kernel's summation order (native/kernels/interaction.h)
  with elementwise torch ops (each product rounded before its add, as the
  kernels build with -ffp-contract=off); bf16 inputs are widened exactly and
  the fp32 result rounded once, as torch's .to(bfloat16) does.
- against autograd of the cat + bmm + gather formula in float64: fp32 within
  the accumulation bound (terms + 5) * 2^-24 * sum |a_k b_k| per entry; bf16
  within one bf16 ulp (2^-8 relative) of the float64 value plus that bound.
"""
import pytest
import torch

from ipex_train.nn.functional import interaction, interaction_reference

# (B, F, D): empty batch, no embeddings, widths around the 16-lane block.
SHAPES = [(0, 3, 8), (1, 0, 5), (3, 1, 1), (5, 3, 17), (9, 26, 64), (4, 7, 33), (2, 2, 67)]
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(b, f, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g).to(dtype), torch.randn(b, f, d, generator=g).to(dtype)


def _ordered_dot(a, b):
    """<a, b> over the last dim: 16 lane sums (16-chunks in order), halving tree."""
    pad = (-a.shape[-1]) % 16
    p = torch.nn.functional.pad(a * b, (0, pad)).unflatten(-1, (-1, 16))
    s = torch.zeros(p.shape[:-2] + (16,))
    for c in range(p.shape[-2]):
        s = s + p[..., c, :]
    s = s[..., :8] + s[..., 8:]
    s = s[..., :4] + s[..., 4:]
    s = s[..., :2] + s[..., 2:]
    return s[..., 0] + s[..., 1]


def _ordered_forward(x, e):
    t = torch.cat([x.unsqueeze(1), e], 1).float()
    i, j = torch.tril_indices(t.shape[1], t.shape[1], offset=-1)
    return torch.cat([x, _ordered_dot(t[:, i], t[:, j]).to(x.dtype)], 1)


def _pair_matrix(grad_pairs, n):
    """[B, P] strict-lower-triangle values -> symmetric [B, n, n]."""
    g = grad_pairs.new_zeros(grad_pairs.shape[0], n, n)
    i, j = torch.tril_indices(n, n, offset=-1)
    g[:, i, j] = grad_pairs
    g[:, j, i] = grad_pairs
    return g


def _ordered_backward(grad, x, e):
    t = torch.cat([x.unsqueeze(1), e], 1).float()
    b, n, d = t.shape
    go = grad.float()
    g = _pair_matrix(go[:, d:], n)
    acc = torch.zeros(b, n, d)
    rows = torch.arange(n)
    for j in range(n):
        term = g[:, :, j, None] * t[:, None, j, :]
        acc = torch.where((rows != j)[None, :, None], acc + term, acc)
    acc[:, 0] = acc[:, 0] + go[:, :d]
    return acc[:, 0].to(x.dtype), acc[:, 1:].to(x.dtype)


def _bitwise(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("b,f,d", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_bitwise_every_isa(b, f, d, dtype, isa_level):
    x, e = _inputs(b, f, d, dtype, seed=b + f + d)
    out = interaction(x, e)
    assert out.shape == (b, d + f * (f + 1) // 2) and out.dtype == dtype
    _bitwise(out, _ordered_forward(x, e))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    gx, ge = torch.ops.ipex_train.interaction_backward(grad, x, e)
    rx, re = _ordered_backward(grad, x, e)
    _bitwise(gx, rx)
    _bitwise(ge, re)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_at_1_and_2_threads(n_threads, dtype, threads):
    threads(n_threads)
    x, e = _inputs(67, 26, 64, dtype, seed=3)
    x.requires_grad_()
    e.requires_grad_()
    out = interaction(x, e)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    gx, ge = torch.autograd.grad(out, (x, e), grad)
    _bitwise(out, _ordered_forward(x.detach(), e.detach()))
    rx, re = _ordered_backward(grad, x.detach(), e.detach())
    _bitwise(gx, rx)
    _bitwise(ge, re)


def _bound(terms_abs_sum, terms, dtype, ref):
    """Accumulation bound of fp32 sums of `terms` rounded products, plus one
    bf16 ulp of the exact value when the output is bf16."""
    tol = (terms + 5) * 2.0 ** -24 * terms_abs_sum + 1e-30
    if dtype == torch.bfloat16:
        tol = tol + 2.0 ** -8 * ref.abs()
    return tol


@pytest.mark.parametrize("b,f,d", [(5, 3, 17), (9, 26, 64), (2, 2, 67)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_autograd_of_bmm_formula(b, f, d, dtype):
    x, e = _inputs(b, f, d, dtype, seed=11)
    x64 = x.double().requires_grad_()
    e64 = e.double().requires_grad_()
    ref = interaction_reference(x64, e64)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    rgx, rge = torch.autograd.grad(ref, (x64, e64), grad.double())
    xs, es = x.clone().requires_grad_(), e.clone().requires_grad_()
    out = interaction(xs, es)
    gx, ge = torch.autograd.grad(out, (xs, es), grad)
    # forward: |a_k b_k| summed per pair
    t = torch.cat([x64.unsqueeze(1), e64], 1).detach()
    n = t.shape[1]
    i, j = torch.tril_indices(n, n, offset=-1)
    abs_dots = (t[:, i].abs() * t[:, j].abs()).sum(-1)
    err = (out.double()[:, d:] - ref.detach()[:, d:]).abs()
    assert (err <= _bound(abs_dots, d, dtype, ref.detach()[:, d:])).all()
    _bitwise(out[:, :d], x)
    # backward: |g_ij| |t_j| summed over j per element
    gm = _pair_matrix(grad.double()[:, d:], n).abs()
    abs_grad = torch.bmm(gm, t.abs())
    abs_grad[:, 0] += grad.double()[:, :d].abs()
    got = torch.cat([gx.double().unsqueeze(1), ge.double()], 1)
    want = torch.cat([rgx.unsqueeze(1), rge], 1)
    assert ((got - want).abs() <= _bound(abs_grad, n + 1, dtype, want)).all()


def test_strided_inputs_are_read_in_place():
    x, e = _inputs(6, 4, 9, torch.float32, seed=5)
    wide = torch.randn(6, 4 * 12)  # rows of 4 features with 3 padding columns each
    wide.view(6, 4, 12)[:, :, :9] = e
    strided = wide.view(6, 4, 12)[:, :, :9]
    by_feature = e.transpose(0, 1).contiguous().transpose(0, 1)  # [F, B, D] storage
    x_wide = torch.randn(6, 20)[:, 3:12]
    x_wide.copy_(x)
    want = interaction(x, e)
    for xi, ei in [(x_wide, strided), (x, by_feature), (x, e.transpose(1, 2).contiguous().transpose(1, 2))]:
        _bitwise(interaction(xi, ei), want)
        gx, ge = torch.ops.ipex_train.interaction_backward(torch.ones_like(want), xi, ei)
        rx, re = torch.ops.ipex_train.interaction_backward(torch.ones_like(want), x, e)
        _bitwise(gx, rx)
        _bitwise(ge, re)


def test_mixed_grad_dtype():
    x, e = _inputs(5, 3, 17, torch.bfloat16, seed=4)
    grad = torch.randn(5, 17 + 6)
    gx, ge = torch.ops.ipex_train.interaction_backward(grad, x, e)
    rx, re = _ordered_backward(grad, x, e)
    assert gx.dtype == ge.dtype == torch.bfloat16
    _bitwise(gx, rx)
    _bitwise(ge, re)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,f,d", [(3, 2, 5), (4, 5, 16)])
def test_opcheck(b, f, d, dtype):
    x, e = _inputs(b, f, d, dtype, seed=1)
    for rg in (False, True):
        args = (x.clone().requires_grad_(rg), e.clone().requires_grad_(rg))
        torch.library.opcheck(torch.ops.ipex_train.interaction.default, args)
    g = torch.randn(b, d + f * (f + 1) // 2).to(dtype)
    torch.library.opcheck(torch.ops.ipex_train.interaction_backward.default, (g, x, e))


def test_traces_with_aot_autograd():
    x, e = _inputs(4, 3, 8, torch.float32, seed=2)
    f = torch.compile(lambda a, b: interaction(a, b).relu().sum(), backend="aot_eager", fullgraph=True)
    xs, es = x.clone().requires_grad_(), e.clone().requires_grad_()
    f(xs, es).backward()
    x2, e2 = x.clone().requires_grad_(), e.clone().requires_grad_()
    interaction(x2, e2).relu().sum().backward()
    _bitwise(xs.grad, x2.grad)
    _bitwise(es.grad, e2.grad)


def test_autocast_runs_in_bf16_and_grads_reach_fp32_inputs():
    x, e = _inputs(5, 3, 16, torch.float32, seed=9)
    xs, es = x.clone().requires_grad_(), e.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = interaction(xs, es.to(torch.bfloat16))  # mixed dtypes are cast, not refused
    assert out.dtype == torch.bfloat16
    _bitwise(out, _ordered_forward(x.bfloat16(), e.bfloat16()))
    grad = torch.randn(out.shape).bfloat16()
    out.backward(grad)
    assert xs.grad.dtype == es.grad.dtype == torch.float32
    rx, re = _ordered_backward(grad, x.bfloat16(), e.bfloat16())
    _bitwise(xs.grad, rx.float())
    _bitwise(es.grad, re.float())


@pytest.mark.parametrize("x,e,err,match", [
    (torch.ones(2, 4), torch.ones(2, 3, 4).bfloat16(), TypeError, "one dtype"),
    (torch.ones(2, 4).double(), torch.ones(2, 3, 4).double(), TypeError, "float32 or bfloat16"),
    (torch.ones(2, 4), torch.ones(2, 3, 5), ValueError, r"emb must have shape \[B, F, D\]"),
    (torch.ones(2, 4), torch.ones(3, 3, 4), ValueError, r"emb must have shape \[B, F, D\]"),
    (torch.ones(2, 4), torch.ones(2, 12), ValueError, "emb must have 3 dimensions"),
    (torch.ones(2, 4, 1), torch.ones(2, 3, 4), ValueError, "dense must have 2 dimensions"),
])
def test_bad_inputs_are_named(x, e, err, match):
    with pytest.raises(err, match=match):
        interaction(x, e)


def test_bad_grad_shape_is_named():
    x, e = _inputs(2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match=r"grad_out must have shape \[2, 10\]"):
        torch.ops.ipex_train.interaction_backward(torch.ones(2, 9), x, e)
