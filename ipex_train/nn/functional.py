"""Functional forms of the model-side native ops."""
import os

import torch

from .. import _ops  # noqa: F401  (registers the fake kernels and autograd)


def interaction(dense, emb):
    """DLRM's dot interaction, dense copy and pair dots in one native pass.

    dense: [B, D]; emb: [B, F, D] (pooled embeddings; any strides, last
    dimension contiguous avoids a copy), one dtype, float32 or bfloat16.
    Returns [B, D + F(F+1)/2], in that dtype:

        t = [dense, emb_1, ..., emb_F]                      (n = F + 1 rows)
        out = [ dense | <t1,t0> <t2,t0> <t2,t1> <t3,t0> ... <tF,tF-1> ]
                        strict lower triangle of t t^T, row-major

    Sums are fp32 in a fixed order (see native/kernels/interaction.h), so the
    result does not depend on the thread count or the CPU. Differentiable in
    both inputs; under ``torch.autocast("cpu", torch.bfloat16)`` both are
    cast to bf16, like a matmul.
    """
    return torch.ops.ipex_train.interaction(dense, emb)


def interaction_reference(dense, emb):
    """Plain-PyTorch form of :func:`interaction` (same layout, autograd's own
    backward): cat + bmm + gather of the strict lower triangle."""
    t = torch.cat([dense.unsqueeze(1), emb], 1)
    n = t.shape[1]
    i, j = torch.tril_indices(n, n, offset=-1)
    z = torch.bmm(t, t.transpose(1, 2))[:, i, j]
    return torch.cat([dense, z], 1)


def _grad_through(reference, inputs, needs, grad):
    """A backward run with ``create_graph=True``: the gradients of
    ``reference(*inputs)`` by autograd, themselves differentiable, so that
    second derivatives (gradient penalties) are right. The native backward
    kernels are not differentiable; the ops switch to this when the engine
    runs their backward with grad mode on (that is, create_graph=True)."""
    wanted = [x for x, n in zip(inputs, needs) if n]
    with torch.enable_grad():
        gs = iter(torch.autograd.grad(reference(*inputs), wanted, grad, create_graph=True,
                                      allow_unused=True))
    return tuple(next(gs) if n else None for n in needs)


def _linear_relu_reference(x, weight, bias):
    return torch.relu(torch.nn.functional.linear(x, weight, bias))


def _onednn_linear():
    """oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``: x W^T + b with a
    fused ReLU) where torch has it, unless IPEX_TRAIN_GEMM=torch; else None."""
    if os.environ.get("IPEX_TRAIN_GEMM", "") == "torch" or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_ONEDNN_LINEAR = _onednn_linear()


class _LinearReLU(torch.autograd.Function):
    """relu(x W^T + b) with the epilogues fused: the forward runs bias and
    ReLU inside the GEMM (oneDNN post-ops; without oneDNN, addmm and an
    in-place ReLU); the backward masks the gradient and sums the bias
    gradient in one native pass (ipex_train::relu_bias_grad), then runs the
    two matmuls of nn.Linear's backward. fp32 GEMMs all go to oneDNN (on the
    AVX-512 EPYC its fp32 matmuls ran 10-40% faster than torch.mm's MKL ones;
    torch only sends bf16 to oneDNN); bf16 backward GEMMs stay torch.mm (the
    same oneDNN, in its faster layout). Inputs share one dtype (the
    functional wrapper casts under autocast)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, bias):
        if _ONEDNN_LINEAR is not None and x.numel() and weight.numel():  # oneDNN refuses size 0
            out = _ONEDNN_LINEAR(x, weight, bias, "relu", [], "")
        elif bias is None:
            out = torch.relu_(x.mm(weight.t()))
        else:
            out = torch._addmm_activation(bias, x, weight.t())
        ctx.save_for_backward(x, weight, bias, out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight, bias, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return _grad_through(_linear_relu_reference, (x, weight, bias), ctx.needs_input_grad,
                                 grad)
        gm, gb = torch.ops.ipex_train.relu_bias_grad(grad, out)
        gb = gb if ctx.needs_input_grad[2] else None
        gx = gw = None
        if _ONEDNN_LINEAR is not None and gm.dtype == torch.float32 and x.numel() and gm.numel():
            if ctx.needs_input_grad[0]:
                gx = _ONEDNN_LINEAR(gm, weight.t(), None, "none", [], "")
            if ctx.needs_input_grad[1]:
                gw = _ONEDNN_LINEAR(gm.t(), x.t(), None, "none", [], "")
        else:
            gx = gm.mm(weight) if ctx.needs_input_grad[0] else None
            gw = gm.t().mm(x) if ctx.needs_input_grad[1] else None
        return gx, gw, gb


def linear_relu(x, weight, bias):
    """``relu(F.linear(x, weight, bias))`` as one fused layer (see _LinearReLU).

    x: [B, in]; weight: [out, in]; bias: [out] or None; float32 or bfloat16 (a
    split-bf16 weight is used as is: its bf16 top half is the GEMM operand).
    bf16: same forward bits as nn.Linear + nn.ReLU, same input and weight
    gradients. fp32: the GEMMs run in oneDNN rather than torch's BLAS, so
    results equal nn.Linear's within fp32 rounding (not bitwise); they do
    not depend on the thread count. The bias gradient is summed in fp32 in a
    fixed order (within rounding of torch's sum). IPEX_TRAIN_GEMM=torch (read
    at import) keeps torch's own GEMMs, bitwise nn.Linear in both dtypes. Under ``torch.autocast("cpu")`` all three run in the
    autocast dtype, as F.linear does.
    """
    if torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
    bshape = None if bias is None else tuple(bias.shape)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or \
            (bias is not None and bshape != (weight.shape[0],)):
        raise ValueError(f"linear_relu: expected x [B, in], weight [out, in], bias [out] or None, "
                         f"got {tuple(x.shape)}, {tuple(weight.shape)}, {bshape}")
    if not x.dtype == weight.dtype == (x.dtype if bias is None else bias.dtype):
        raise TypeError(f"linear_relu: x, weight and bias must have one dtype, got {x.dtype}, "
                        f"{weight.dtype}, {None if bias is None else bias.dtype}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"linear_relu: float32 or bfloat16 only, got {x.dtype}")
    with torch.autocast("cpu", enabled=False):
        return _LinearReLU.apply(x, weight, bias)


def _mm(a, b):
    """a @ b: fp32 through oneDNN's linear (as _LinearReLU's backward; 15-17%
    less CPU time than torch.mm for the DCNv2 cross network on the AVX-512
    EPYC), bf16 and IPEX_TRAIN_GEMM=torch through torch.mm (oneDNN for bf16)."""
    if _ONEDNN_LINEAR is not None and a.dtype == torch.float32 and a.numel() and b.numel():
        return _ONEDNN_LINEAR(a, b.t(), None, "none", [], "")  # oneDNN refuses size 0
    return torch.mm(a, b)


class _LowRankCross(torch.autograd.Function):
    """DCNv2's low-rank cross layers as one autograd node: per layer two
    GEMMs and one native epilogue pass forward (cross_forward_: bias, x0 *
    (.), + x_l), one native pass and four GEMMs backward (cross_backward_:
    the x0 product, the bias-gradient column sums and the x0-gradient
    accumulation; x_l's gradient accumulates inside the last GEMM), instead
    of autograd's separate bias copy, addcmul, muls, sums and adds."""

    @staticmethod
    def forward(ctx, x0, layers, *params):
        vs, ws, cs = params[:layers], params[layers:2 * layers], params[2 * layers:]
        x0_in, x0 = x0, x0.contiguous()
        x, xs, hs, zs = x0, [], [], []
        for v, w, c in zip(vs, ws, cs):
            h = _mm(x, v.t())
            y = _mm(h, w.t())
            xs.append(x)
            hs.append(h)
            x = torch.ops.ipex_train.cross_forward_(y, c, x0, x)  # y becomes z = y + c
            zs.append(y)
        ctx.layers = layers
        ctx.save_for_backward(x0, *xs[1:], *hs, *zs, *vs, *ws, *cs, x0_in)
        return x

    @staticmethod
    def backward(ctx, grad):
        L = ctx.layers
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: through the reference
            vs, ws, cs = saved[3 * L:4 * L], saved[4 * L:5 * L], saved[5 * L:6 * L]
            gs = _grad_through(lambda x0, *p: low_rank_cross_reference(x0, p[:L], p[L:2 * L],
                                                                       p[2 * L:]),
                               (saved[-1], *vs, *ws, *cs),
                               (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:]), grad)
            return (gs[0], None, *gs[1:])
        x0 = saved[0]
        xs = [x0, *saved[1:L]]
        hs, zs = saved[L:2 * L], saved[2 * L:3 * L]
        vs, ws = saved[3 * L:4 * L], saved[4 * L:5 * L]
        g = grad.contiguous()
        acc = torch.empty_like(x0)  # the gradient of x0 through the x0 * (.) products
        gv, gw, gc = [None] * L, [None] * L, [None] * L
        for i in reversed(range(L)):
            # i == 0: x_0 is x0, so the pass-through gradient g joins acc there
            gz, gc[i] = torch.ops.ipex_train.cross_backward_(g, x0, zs[i], acc, i != L - 1, i == 0)
            gw[i] = _mm(gz.t(), hs[i])
            gh = _mm(gz, ws[i])
            gv[i] = _mm(gh.t(), xs[i])
            if i == 0:
                acc.addmm_(gh, vs[i])
            elif i == L - 1:
                g = torch.addmm(g, gh, vs[i])  # not in place: autograd owns `grad`
            else:
                g.addmm_(gh, vs[i])
        return (acc, None, *gv, *gw, *gc)


def low_rank_cross(x0, V, W, c):
    """DCNv2's low-rank cross network: x_{l+1} = x0 * (W_l (V_l x_l) + c_l) + x_l.

    x0: [B, n]; V: rank x n matrices, W: n x rank, c: [n] biases, one per
    layer (lists of equal length), all one dtype, float32 or bfloat16.
    Returns x_L [B, n]. The GEMMs are oneDNN's (fp32 too, unless
    IPEX_TRAIN_GEMM=torch, as linear_relu); the elementwise parts
    are native passes with one rounding per step of
    :func:`low_rank_cross_reference` (``x0 * z + x_l`` in fp32, no fma, then
    rounded), so in bf16 the forward is bitwise that reference's (in fp32
    within the rounding of torch.mm's GEMM against oneDNN's); the gradients
    equal its autograd's within rounding (GEMMs and sums in another order).
    Not for autocast: the caller casts (``examples/dlrm/dcn.py`` does).
    """
    L = len(V)
    if not (len(W) == len(c) == L):
        raise ValueError(f"low_rank_cross: V, W and c need one entry per layer, got {len(V)}, "
                         f"{len(W)}, {len(c)}")
    if x0.dim() != 2:
        raise ValueError(f"low_rank_cross: x0 must be [B, n], got shape {tuple(x0.shape)}")
    n = x0.shape[1]
    for v, w, b in zip(V, W, c):
        if v.dim() != 2 or v.shape[1] != n or tuple(w.shape) != (n, v.shape[0]) or \
                tuple(b.shape) != (n,):
            raise ValueError(f"low_rank_cross: for n = {n} each layer needs V [r, n], W [n, r], "
                             f"c [n], got {tuple(v.shape)}, {tuple(w.shape)}, {tuple(b.shape)}")
        if not (x0.dtype == v.dtype == w.dtype == b.dtype):
            raise TypeError(f"low_rank_cross: x0 and the weights must have one dtype, got "
                            f"{x0.dtype}, {v.dtype}, {w.dtype}, {b.dtype}")
    if x0.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"low_rank_cross: float32 or bfloat16 only, got {x0.dtype}")
    if L == 0:
        return x0
    return _LowRankCross.apply(x0, L, *V, *W, *c)


def low_rank_cross_reference(x0, V, W, c):
    """Plain-PyTorch form of :func:`low_rank_cross` (autograd's own backward)."""
    x = x0
    for v, w, b in zip(V, W, c):
        z = torch.mm(torch.mm(x, v.t()), w.t()) + b
        x = (x.float() + x0.float() * z.float()).to(x0.dtype)
    return x
