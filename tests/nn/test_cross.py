"""DCNv2's low-rank cross network: the native epilogues
(ipex_train::cross_forward_ / cross_backward_) and the one-node autograd
Function (ipex_train.nn.functional.low_rank_cross) against plain PyTorch.

- cross_forward_ / cross_backward_: bitwise against plain-PyTorch replays of
  their rounding order (fp32 and bf16, odd sizes, every ISA level, 1 and 2
  threads); the bias gradient replays the fixed 64-row block order.
- low_rank_cross: forward bitwise equal to low_rank_cross_reference in bf16
  (same oneDNN GEMMs) and in fp32 with torch's GEMMs (IPEX_TRAIN_GEMM=torch),
  within 1e-5 relative in fp32 with oneDNN's (the default; the reference
  runs torch.mm's); the gradients of x0 and every weight within
  rounding of its autograd (fp32 1e-5 relative; bf16 2^-6 of the largest value).
"""
import pytest
import torch

from ipex_train.nn.functional import low_rank_cross, low_rank_cross_reference
from tests.nn._replay import column_sums_in_blocks

DTYPES = [torch.float32, torch.bfloat16]
SIZES = [(0, 5), (1, 1), (63, 17), (64, 16), (65, 33), (200, 130)]


def _rand(shape, dtype, g):
    return torch.randn(*shape, generator=g).to(dtype)


def _fwd_replay(y, c, x0, xl):
    z = y + c
    return z, (xl.float() + x0.float() * z.float()).to(y.dtype)


def _bwd_replay(g, x0, z, acc, accumulate, add_g):
    gz = g * x0
    t = g * z
    acc = acc + t if accumulate else t
    if add_g:
        acc = acc + g
    return gz, column_sums_in_blocks(gz).to(g.dtype), acc


def _fwd_inputs(rows, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [_rand(s, dtype, g) for s in ((rows, n), (n,), (rows, n), (rows, n))]


@pytest.mark.parametrize("rows,n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_forward_bitwise_every_isa(rows, n, dtype, isa_level):
    y, c, x0, xl = _fwd_inputs(rows, n, dtype, rows + n)
    z_ref, out_ref = _fwd_replay(y, c, x0, xl)
    out = torch.ops.ipex_train.cross_forward_(y, c, x0, xl)
    torch.testing.assert_close(y, z_ref, rtol=0, atol=0)  # y now holds z
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)


@pytest.mark.parametrize("rows,n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate,add_g", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_cross_backward_bitwise_every_isa(rows, n, dtype, accumulate, add_g, isa_level):
    gen = torch.Generator().manual_seed(rows * n + 7)
    g, x0, z, acc = (_rand((rows, n), dtype, gen) for _ in range(4))
    rz, rc, racc = _bwd_replay(g, x0, z, acc, accumulate, add_g)
    gz, gc = torch.ops.ipex_train.cross_backward_(g, x0, z, acc, accumulate, add_g)
    torch.testing.assert_close(gz, rz, rtol=0, atol=0)
    torch.testing.assert_close(gc, rc, rtol=0, atol=0)
    torch.testing.assert_close(acc, racc, rtol=0, atol=0)


def test_cross_backward_special_values():
    """NaN and infinities flow as in the torch replay, bf16 NaN stays quiet."""
    for dtype in DTYPES:
        g = torch.tensor([[1.0, float("nan"), float("inf"), -2.0]]).to(dtype)
        x0 = torch.tensor([[0.0, 1.0, 1.0, float("-inf")]]).to(dtype)
        z, acc = x0.clone(), torch.ones(1, 4).to(dtype)
        rz, rc, racc = _bwd_replay(g, x0, z, acc, True, True)
        gz, gc = torch.ops.ipex_train.cross_backward_(g, x0, z, acc, True, True)
        for a, b in ((gz, rz), (gc, rc), (acc, racc)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_ops_same_bits_at_1_and_2_threads(n_threads, dtype, threads):
    threads(n_threads)
    y, c, x0, xl = _fwd_inputs(1000, 300, dtype, 5)
    z_ref, out_ref = _fwd_replay(y, c, x0, xl)
    out = torch.ops.ipex_train.cross_forward_(y, c, x0, xl)
    assert torch.equal(out, out_ref) and torch.equal(y, z_ref)
    acc = torch.zeros_like(y)
    gz, gc = torch.ops.ipex_train.cross_backward_(xl, x0, y, acc, True, False)
    rz, rc, racc = _bwd_replay(xl, x0, y, torch.zeros_like(y), True, False)
    assert torch.equal(gz, rz) and torch.equal(gc, rc) and torch.equal(acc, racc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_ops_opcheck(dtype):
    y, c, x0, xl = _fwd_inputs(70, 9, dtype, 1)
    torch.library.opcheck(torch.ops.ipex_train.cross_forward_.default, (y, c, x0, xl))
    torch.library.opcheck(torch.ops.ipex_train.cross_backward_.default,
                          (xl, x0, y, torch.zeros_like(y), True, True))


def test_cross_ops_bad_inputs_are_named():
    a, c = torch.ones(3, 4), torch.ones(4)
    with pytest.raises(ValueError, match="xl has shape"):
        torch.ops.ipex_train.cross_forward_(a.clone(), c, a, torch.ones(3, 5))
    with pytest.raises(ValueError, match="c must have shape"):
        torch.ops.ipex_train.cross_forward_(a.clone(), torch.ones(5), a, a)
    with pytest.raises(TypeError, match="one dtype"):
        torch.ops.ipex_train.cross_forward_(a.clone(), c, a.bfloat16(), a)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        torch.ops.ipex_train.cross_forward_(a.double(), c.double(), a.double(), a.double())
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.ipex_train.cross_backward_(a, a, a, torch.ones(4, 3).t(), True, False)
    with pytest.raises(ValueError, match="2 dimension"):
        torch.ops.ipex_train.cross_backward_(a, a, a, torch.ones(12), True, False)


def _weights(n, layers, rank, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    V = [(torch.randn(rank, n, generator=g) / n ** 0.5).to(dtype).requires_grad_()
         for _ in range(layers)]
    W = [(torch.randn(n, rank, generator=g) / rank ** 0.5).to(dtype).requires_grad_()
         for _ in range(layers)]
    c = [(torch.randn(n, generator=g) * 0.1).to(dtype).requires_grad_() for _ in range(layers)]
    return V, W, c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,layers,rank", [(5, 12, 3, 4), (1, 7, 1, 7), (0, 6, 2, 3),
                                             (70, 30, 2, 1), (130, 96, 3, 16)])
def test_low_rank_cross_matches_reference(b, n, layers, rank, dtype, gemm):
    V, W, c = _weights(n, layers, rank, dtype, b + n)
    x0 = (torch.randn(b, n, generator=torch.Generator().manual_seed(3))).to(dtype)
    x0.requires_grad_()
    out = low_rank_cross(x0, V, W, c)
    ref = low_rank_cross_reference(x0, V, W, c)
    if dtype == torch.bfloat16 or gemm == "torch":
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(b, n, generator=torch.Generator().manual_seed(4)).to(dtype)
    params = [x0, *V, *W, *c]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, r in zip(got, want):
        assert a.shape == r.shape and a.dtype == r.dtype
        tol = 1e-5 if dtype == torch.float32 else 2 ** -6
        scale = r.float().abs().amax(tuple(range(r.dim()))) if r.numel() else 0.0
        assert ((a.float() - r.float()).abs() <= tol * scale + 1e-30).all()


def test_low_rank_cross_zero_layers_and_errors():
    x0 = torch.randn(3, 4)
    assert low_rank_cross(x0, [], [], []) is x0
    V, W, c = _weights(4, 2, 2, torch.float32, 0)
    with pytest.raises(ValueError, match="one entry per layer"):
        low_rank_cross(x0, V, W[:1], c)
    with pytest.raises(ValueError, match="each layer needs"):
        low_rank_cross(torch.randn(3, 5), V, W, c)
    with pytest.raises(TypeError, match="one dtype"):
        low_rank_cross(x0.bfloat16(), V, W, c)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        low_rank_cross(x0.double(), *[[p.double() for p in ps] for ps in (V, W, c)])
