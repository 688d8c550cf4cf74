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
        else:
            out = torch._addmm_activation(bias, x, weight.t())
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        gm, gb = torch.ops.ipex_train.relu_bias_grad(grad, out)
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

    x: [B, in]; weight: [out, in]; bias: [out]; float32 or bfloat16 (a
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
        x, weight, bias = x.to(dt), weight.to(dt), bias.to(dt)
    if x.dim() != 2 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(f"linear_relu: expected x [B, in], weight [out, in], bias [out], got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if not x.dtype == weight.dtype == bias.dtype:
        raise TypeError(f"linear_relu: x, weight and bias must have one dtype, got {x.dtype}, "
                        f"{weight.dtype}, {bias.dtype}")
    with torch.autocast("cpu", enabled=False):
        return _LinearReLU.apply(x, weight, bias)
