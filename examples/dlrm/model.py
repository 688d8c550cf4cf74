"""DLRM's dense part: bottom MLP, pairwise dot interaction, top MLP.

The embedding tables live apart (``embeddings.py``): they are model-parallel,
while this module is replicated on every rank and trained data-parallel.

    dense [b, 13] --bottom MLP--> x [b, D] --+
                                              +-> T = [x; e_1..e_26]  [b, 27, D]
    pooled embeddings [b, 26, D] ------------+        |
                                         Z = T T^T, upper triangle without the
                                         diagonal: 27*26/2 = 351 dot products
                                              |
                     [x, Z] [b, D + 351] --top MLP--> click logit [b]
"""
import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes, last_relu):
    """Linear layers sizes[0]->sizes[1]->...; ReLU between, and after the last if asked."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _PairwiseDots(torch.autograd.Function):
    """t [b, n, D] -> dots [b, n(n-1)/2]: <t_i, t_j> for i < j (row-major order).

    Forward is one bmm Z = t t^T and a gather of the upper triangle. Backward
    uses Z's symmetry: dL/dt = (G + G^T) t, where G holds the incoming
    gradient at (i, j); G + G^T is built by one scatter into both (i, j) and
    (j, i), so the backward is one bmm instead of autograd's two.
    """

    @staticmethod
    def forward(ctx, t):
        b, n, _ = t.shape
        i, j = torch.triu_indices(n, n, offset=1)
        upper, lower = i * n + j, j * n + i
        ctx.save_for_backward(t)
        ctx.both = torch.cat([upper, lower])
        return torch.bmm(t, t.transpose(1, 2)).view(b, n * n).index_select(1, upper)

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        b, n, _ = t.shape
        sym = grad.new_zeros(b, n * n).index_copy_(1, ctx.both, torch.cat([grad, grad], 1))
        return torch.bmm(sym.view(b, n, n), t)


def interact(x, emb):
    """Pairwise dot products of [x, emb_1, ..., emb_F], i<j, appended to x.

    x: [b, D]; emb: [b, F, D]  ->  [b, D + (F+1)F/2]
    """
    t = torch.cat([x.unsqueeze(1), emb], 1)
    return torch.cat([x, _PairwiseDots.apply(t)], 1)


def run_mlp(layers, x, dtype):
    """Applies `layers` computing in `dtype`: weights stored in another dtype
    (bf16 halves of split fp32 masters) are cast on the fly; their gradients
    flow back through the cast in the storage dtype."""
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))
        else:
            x = layer(x)
    return x


class DenseArch(nn.Module):
    """Bottom MLP + interaction + top MLP: (dense [b, 13], emb [b, F, D]) -> logits [b].

    ``compute_dtype`` is the dtype of the matmuls, independent of the storage
    dtype of the weights (bf16 after ``ipex_train.optimize`` with bf16). CPUs
    without bf16 dot-product instructions (AVX2, plain AVX-512) run bf16
    matmuls several times slower than fp32 ones, so there the trainer keeps
    bf16 *storage* (half the memory traffic) with fp32 *compute*. None: the
    weights' dtype. The logit comes back as fp32 for the loss.
    """

    def __init__(self, num_dense, num_sparse, bottom, top, compute_dtype=None):
        super().__init__()
        dim = bottom[-1]
        self.bottom = mlp([num_dense] + list(bottom), last_relu=True)
        n_int = (num_sparse + 1) * num_sparse // 2
        self.top = mlp([dim + n_int] + list(top), last_relu=False)
        self.compute_dtype = compute_dtype

    def forward(self, dense, emb):
        dtype = self.compute_dtype or self.bottom[0].weight.dtype
        x = run_mlp(self.bottom, dense.to(dtype), dtype)
        return run_mlp(self.top, interact(x, emb.to(dtype)), dtype).squeeze(1).float()
