"""Second derivatives (create_graph=True, e.g. a gradient penalty) through the
fused dense ops equal their plain-PyTorch references'. Their native backward
kernels are not differentiable; before the ops switched to a differentiable
backward under create_graph, interaction's second derivative came out as
zeros and linear_relu's as wrong values (with only a warning), and
low_rank_cross raised."""
import pytest
import torch

from ipex_train.nn.functional import (interaction, interaction_reference, linear_relu,
                                      low_rank_cross, low_rank_cross_reference)


def _linear_relu_reference(x, w, b):
    return torch.relu(torch.nn.functional.linear(x, w, b))


def _penalty_grads(fn, inputs, which):
    """d/d inputs of sum(fn(inputs)^2) + sum over `which` of |d sum(fn^3) / d input|^2."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    y = fn(*leaves)
    gs = torch.autograd.grad((y ** 3).sum(), [leaves[i] for i in which], create_graph=True)
    ((y ** 2).sum() + sum((g ** 2).sum() for g in gs)).backward()
    return [x.grad for x in leaves]


def _check(ours, ref, inputs, which):
    torch.manual_seed(0)
    got = _penalty_grads(ours, inputs, which)
    want = _penalty_grads(ref, inputs, which)
    for g, w in zip(got, want):
        assert g is not None and w is not None
        torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-4)
        assert w.abs().sum() > 0


@pytest.mark.parametrize("which", [(0,), (1,), (0, 1)])
def test_interaction(which):
    torch.manual_seed(1)
    dense, emb = torch.randn(6, 8) * 0.5, torch.randn(6, 4, 8) * 0.5
    _check(interaction, interaction_reference, (dense, emb), which)


@pytest.mark.parametrize("which", [(0,), (1,), (0, 1, 2)])
def test_linear_relu(which):
    torch.manual_seed(2)
    x, w, b = torch.randn(7, 5), torch.randn(6, 5) * 0.5, torch.randn(6) * 0.1
    _check(linear_relu, _linear_relu_reference, (x, w, b), which)


@pytest.mark.parametrize("which", [(0,), (0, 1, 3), (2,)])
def test_low_rank_cross(which):
    torch.manual_seed(3)
    n, r, layers = 9, 4, 2
    x0 = torch.randn(5, n) * 0.5
    params = [torch.randn(r, n) * 0.3 for _ in range(layers)] + \
        [torch.randn(n, r) * 0.3 for _ in range(layers)] + [torch.randn(n) * 0.1 for _ in range(layers)]

    def split(fn):
        return lambda x0, *p: fn(x0, p[:layers], p[layers:2 * layers], p[2 * layers:])
    _check(split(low_rank_cross), split(low_rank_cross_reference), (x0, *params), which)


def test_low_rank_cross_noncontiguous_x0():
    """The differentiable backward reaches the caller's x0, not the op's contiguous copy."""
    torch.manual_seed(4)
    x0 = (torch.randn(6, 5) * 0.5).t()
    v, w, c = torch.randn(3, 6) * 0.3, torch.randn(6, 3) * 0.3, torch.randn(6) * 0.1
    _check(lambda x, *p: low_rank_cross(x, [p[0]], [p[1]], [p[2]]),
           lambda x, *p: low_rank_cross_reference(x, [p[0]], [p[1]], [p[2]]), (x0, v, w, c), (0,))


def test_first_order_unchanged_by_grad_mode():
    """Without create_graph the native kernels still run (the gradients equal
    the reference's to fp32 rounding, no graph attached)."""
    torch.manual_seed(5)
    d = torch.randn(4, 8, requires_grad=True)
    e = torch.randn(4, 3, 8, requires_grad=True)
    g = torch.autograd.grad(interaction(d, e).sum(), (d, e))
    assert not any(x.requires_grad for x in g)
    ref = torch.autograd.grad(interaction_reference(d, e).sum(), (d, e))
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b)
