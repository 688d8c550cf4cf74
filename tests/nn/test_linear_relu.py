"""ipex_train.nn.functional.linear_relu and its native backward epilogue
(ipex_train::relu_bias_grad) against nn.Linear + nn.ReLU.

- relu_bias_grad: bitwise against a plain-PyTorch replay of its order (mask as
  threshold_backward; bias grad = fp32 sums of 64-row blocks, row by row, then
  the block sums in order), every ISA level, 1 and 2 threads.
- linear_relu: bf16 forward output and x / weight gradients bitwise equal to
  autograd of nn.Linear + nn.ReLU (the same oneDNN GEMMs); fp32 runs its
  GEMMs in oneDNN instead of torch's BLAS: within the GEMM rounding bound
  (K + 2) * 2^-24 * sum_k |a_k b_k| per entry, and bitwise with torch's GEMMs
  (IPEX_TRAIN_GEMM=torch); the bias gradient within rounding of torch's sum
  (fp32: 1e-5 relative to sum |g|; bf16: one ulp); same bits at 1 and 2
  threads; training with SGD stays equal step for step within that rounding.
"""
import pytest
import torch

from ipex_train.nn.functional import linear_relu
from tests.nn._replay import column_sums_in_blocks

DTYPES = [torch.float32, torch.bfloat16]


def _replay(grad, out):
    gm = torch.ops.aten.threshold_backward(grad, out, 0)
    return gm, column_sums_in_blocks(gm).to(grad.dtype)


def _grad_out(rows, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(rows, n, generator=g).relu().to(dtype)  # relu output: zeros and positives
    return torch.randn(rows, n, generator=g).to(dtype), out


@pytest.mark.parametrize("rows,n", [(0, 5), (1, 1), (63, 17), (64, 16), (65, 33), (200, 512)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_bias_grad_bitwise_every_isa(rows, n, dtype, isa_level):
    grad, out = _grad_out(rows, n, dtype, rows + n)
    gm, db = torch.ops.ipex_train.relu_bias_grad(grad, out)
    rm, rb = _replay(grad, out)
    torch.testing.assert_close(gm, rm, rtol=0, atol=0)
    torch.testing.assert_close(db, rb, rtol=0, atol=0)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_relu_bias_grad_same_bits_at_1_and_2_threads(n_threads, threads):
    threads(n_threads)
    grad, out = _grad_out(1000, 300, torch.float32, 5)
    _, db = torch.ops.ipex_train.relu_bias_grad(grad, out)
    torch.testing.assert_close(db, _replay(grad, out)[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_bias_grad_opcheck(dtype):
    grad, out = _grad_out(70, 9, dtype, 1)
    torch.library.opcheck(torch.ops.ipex_train.relu_bias_grad.default, (grad, out))


def test_relu_bias_grad_bad_inputs_are_named():
    with pytest.raises(ValueError, match="grad has shape"):
        torch.ops.ipex_train.relu_bias_grad(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(TypeError, match="one dtype"):
        torch.ops.ipex_train.relu_bias_grad(torch.ones(3, 4), torch.ones(3, 4).bfloat16())
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        torch.ops.ipex_train.relu_bias_grad(torch.ones(3, 4).double(), torch.ones(3, 4).double())


def _within_gemm_rounding(ours, ref, a_abs, b_abs, k):
    """|ours - ref| <= (k + 2) 2^-24 (|A| |B|) entrywise: both sides are fp32
    GEMMs of k terms in some order, each within half that of the exact value."""
    bound = (k + 2) * 2.0 ** -24 * (a_abs.double() @ b_abs.double())
    assert ((ours.double() - ref.double()).abs() <= bound + 1e-30).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n_in,n_out", [(0, 3, 2), (1, 3, 2), (65, 13, 512), (130, 415, 33)])
def test_one_layer_matches_linear_relu(b, n_in, n_out, dtype, gemm):
    torch.manual_seed(b)
    lin = torch.nn.Linear(n_in, n_out).to(dtype)
    x = torch.randn(b, n_in).to(dtype).requires_grad_()
    ref = torch.relu(lin(x))
    out = linear_relu(x, lin.weight, lin.bias)
    g = torch.randn_like(ref)
    rx, rw, rb = torch.autograd.grad(ref, (x, lin.weight, lin.bias), g)
    ox, ow, ob = torch.autograd.grad(out, (x, lin.weight, lin.bias), g)
    if dtype == torch.float32 and gemm == "onednn":
        w, xd = lin.weight.detach(), x.detach()
        gm = g * (ref > 0)
        _within_gemm_rounding(out, ref, torch.cat([xd.abs(), torch.ones(b, 1)], 1),
                              torch.cat([w.abs(), lin.bias.detach().abs()[:, None]], 1).t(), n_in + 1)
        _within_gemm_rounding(ox, rx, gm.abs(), w.abs(), n_out)
        _within_gemm_rounding(ow, rw, gm.abs().t(), xd.abs(), b)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(ox, rx, rtol=0, atol=0)
        torch.testing.assert_close(ow, rw, rtol=0, atol=0)
    gm = g.float() * (ref.float() > 0)
    if dtype == torch.float32:
        assert ((ob - rb).abs() <= 1e-5 * gm.abs().sum(0) + 1e-30).all()
    else:  # both round one fp32 sum to bf16: at most one bf16 ulp apart
        assert ((ob.float() - rb.float()).abs() <= rb.float().abs() * 2 ** -7 + 1e-30).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_layer_same_bits_at_1_and_2_threads(dtype, threads):
    torch.manual_seed(3)
    lin = torch.nn.Linear(415, 512).to(dtype)
    x = torch.randn(300, 415).to(dtype).requires_grad_()
    g = torch.randn(300, 512).to(dtype)
    runs = []
    for n in (1, 2):
        threads(n)
        out = linear_relu(x, lin.weight, lin.bias)
        runs.append((out,) + torch.autograd.grad(out, (x, lin.weight, lin.bias), g))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers)


def _fused_forward(seq, x):
    mods = list(seq)
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Linear):
            relu = i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.ReLU)
            x = linear_relu(x, m.weight, m.bias) if relu else m(x)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_step_for_step_equals_nn_linear_relu(dtype):
    torch.manual_seed(0)
    ref = _mlp([13, 64, 32, 1]).to(dtype)
    ours = _mlp([13, 64, 32, 1]).to(dtype)
    ours.load_state_dict(ref.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, ours)]
    g = torch.Generator().manual_seed(1)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for step in range(10):
        x = torch.randn(96, 13, generator=g).to(dtype)
        y = torch.randint(0, 2, (96,), generator=g).float()
        losses = []
        for m, fwd, opt in ((ref, lambda m, x: m(x), opts[0]), (ours, _fused_forward, opts[1])):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                fwd(m, x).squeeze(1).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if step == 0 and dtype == torch.bfloat16:
            assert losses[0] == losses[1]  # same weights: the bf16 forward is bitwise equal
        assert abs(losses[0] - losses[1]) <= tol["rtol"] * 10 + tol["atol"], (step, losses)
        for a, b in zip(ref.parameters(), ours.parameters()):
            torch.testing.assert_close(b, a, **tol)


def test_under_autocast_with_fp32_params():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_relu(x, lin.weight, lin.bias)
        ref = torch.relu(lin(x))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.float().sum().backward()
    assert lin.weight.grad.dtype == lin.bias.grad.dtype == torch.float32


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="expected x"):
        linear_relu(torch.ones(2, 3, 4), torch.ones(5, 4), torch.ones(5))
    with pytest.raises(TypeError, match="one dtype"):
        linear_relu(torch.ones(2, 4), torch.ones(5, 4).bfloat16(), torch.ones(5))
    # mismatched sizes and dtypes oneDNN cannot take: named here, not "could
    # not create a primitive descriptor" from inside oneDNN
    with pytest.raises(ValueError, match=r"got \(4, 6\), \(5, 7\), \(5,\)"):
        linear_relu(torch.ones(4, 6), torch.ones(5, 7), torch.ones(5))
    with pytest.raises(ValueError, match=r"bias \[out\] or None, got \(4, 6\), \(5, 6\), \(4,\)"):
        linear_relu(torch.ones(4, 6), torch.ones(5, 6), torch.ones(4))
    with pytest.raises(TypeError, match="float32 or bfloat16 only, got torch.float64"):
        linear_relu(torch.ones(4, 6).double(), torch.ones(5, 6).double(), torch.ones(5).double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [0, 9])
def test_without_bias_matches_linear_relu(b, dtype, gemm):
    """bias=None as F.linear takes it: the same values and gradients as with a zero bias."""
    torch.manual_seed(7)
    x = torch.randn(b, 11).to(dtype).requires_grad_()
    w = (torch.randn(6, 11) * 0.3).to(dtype).requires_grad_()
    out = linear_relu(x, w, None)
    zero = torch.zeros(6, dtype=dtype)
    ref = linear_relu(x, w, zero)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    torch.testing.assert_close(out.float(), torch.relu(x.float() @ w.float().t()),
                               rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
