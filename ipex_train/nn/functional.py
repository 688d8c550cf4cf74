"""Functional forms of the model-side native ops."""
import torch

from .. import ops  # noqa: F401  (registers the fake kernels and autograd)


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
