"""DLRM's dense part: bottom MLP, pairwise dot interaction, top MLP.

The embedding tables live apart (``embeddings.py``): they are model-parallel,
while this module is replicated on every rank and trained data-parallel.

    dense [b, 13] --bottom MLP--> x [b, D] --+
                                              +-> T = [x; e_1..e_26]  [b, 27, D]
    pooled embeddings [b, 26, D] ------------+        |
                                         Z = T T^T, strict lower triangle:
                                         27*26/2 = 351 dot products
                                              |
                     [x, Z] [b, D + 351] --top MLP--> click logit [b]
"""
import torch
import torch.nn.functional as F
from torch import nn

from ipex_train.nn.functional import interaction, linear_relu


def mlp(sizes, last_relu):
    """Linear layers sizes[0]->sizes[1]->...; ReLU between, and after the last if asked."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def interact(x, emb):
    """Dense vector followed by the pairwise dots of [x, emb_1, ..., emb_F].

    x: [b, D]; emb: [b, F, D] (one dtype)  ->  [b, D + (F+1)F/2], dots in the
    strict lower triangle's row-major order (<t_1,t_0>, <t_2,t_0>, <t_2,t_1>, ...).
    One native call (``ipex_train.nn.functional.interaction``): no t t^T bmm,
    no gather, no cat; autocast-safe.
    """
    return interaction(x, emb)


def upper_to_lower_pairs(n):
    """perm with lower[k] = upper[perm[k]]: position of each lower-triangle
    pair (i > j, row-major) in the upper-triangle order (j < i, row-major)
    of the earlier bmm + triu layout."""
    i, j = torch.tril_indices(n, n, offset=-1)
    # upper-row-major index of (j, i), j < i: rows above j hold n-1, n-2, ... pairs
    return j * n - j * (j + 1) // 2 + (i - j - 1)


def run_mlp(layers, x, dtype):
    """Applies `layers` computing in `dtype`: weights stored in another dtype
    (bf16 halves of split fp32 masters) are cast on the fly; their gradients
    flow back through the cast in the storage dtype. A Linear followed by a
    ReLU runs as one fused layer (``ipex_train.nn.functional.linear_relu``)."""
    layers = list(layers)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Linear):
            w, b = layer.weight.to(dtype), layer.bias.to(dtype)
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
                x = linear_relu(x, w, b)
                i += 2
                continue
            x = F.linear(x, w, b)
        else:
            x = layer(x)
        i += 1
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
        # Same initial function as the earlier upper-triangle layout for a given
        # seed: the first top layer's pair columns are reordered to match.
        with torch.no_grad():
            w = self.top[0].weight
            w[:, dim:] = w[:, dim:][:, upper_to_lower_pairs(num_sparse + 1)]
        self.compute_dtype = compute_dtype

    def forward(self, dense, emb):
        dtype = self.compute_dtype or self.bottom[0].weight.dtype
        x = run_mlp(self.bottom, dense.to(dtype), dtype)
        return run_mlp(self.top, interact(x, emb.to(dtype)), dtype).squeeze(1).float()
