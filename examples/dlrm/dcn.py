"""DLRM-DCNv2's dense part (MLPerf Training DLRMv2): bottom MLP, low-rank
cross network, top MLP.

    dense [b, 13] --bottom MLP--> x [b, D] --+
                                              +-> x0 = [x, e_1, ..., e_F]  [b, n = (F+1) D]
    pooled embeddings [b, F, D] -------------+        |
                          cross layer l = 0..L-1:  x_{l+1} = x0 * (W_l (V_l x_l) + c_l) + x_l
                          (V_l: [r, n], W_l: [n, r], c_l: [n]; rank r << n)
                                              |
                           x_L [b, n] --top MLP--> click logit [b]

Parameters are laid out as TorchRec's ``LowRankCrossNet`` (``V_kernels``,
``W_kernels``, ``bias``) with its initialisation (Xavier-normal kernels, zero
biases), so the two models are interchangeable weight for weight. The MLPs
are ``model.py``'s (same layers, same fused Linear+ReLU where it has one).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ipex_train.nn.functional import low_rank_cross

from .model import mlp, run_mlp


class LowRankCross(nn.Module):
    """``layers`` DCNv2 cross layers of width ``n`` with rank-``rank`` weights."""

    def __init__(self, n, layers, rank):
        super().__init__()
        self.V_kernels = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, n))) for _ in range(layers))
        self.W_kernels = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(n, rank))) for _ in range(layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(n)) for _ in range(layers))

    def forward(self, x0, dtype=None):
        """x0 [b, n] -> x_L [b, n], computing in `dtype` (default x0's); weights
        stored in another dtype are cast on the fly, as ``run_mlp`` does."""
        dtype = dtype or x0.dtype
        x0 = x0.to(dtype)
        weights = [[p.to(dtype) for p in ps] for ps in (self.V_kernels, self.W_kernels, self.bias)]
        if dtype in (torch.float32, torch.bfloat16) and not torch.is_autocast_enabled("cpu"):
            return low_rank_cross(x0, *weights)  # one node, native epilogues
        x = x0
        for v, w, c in zip(*weights):
            xw = F.linear(F.linear(x, v), w, c)
            x = torch.addcmul(x, x0, xw)
        return x


class DCNDenseArch(nn.Module):
    """Bottom MLP + cross network + top MLP: (dense [b, 13], emb [b, F, D]) -> logits [b].

    ``compute_dtype`` as in ``model.DenseArch``: the matmul dtype, independent
    of the weights' storage dtype (None: the weights' dtype). The logit comes
    back as fp32.
    """

    def __init__(self, num_dense, num_sparse, bottom, top, cross_layers=3, cross_rank=512,
                 compute_dtype=None):
        super().__init__()
        dim = bottom[-1]
        n = (num_sparse + 1) * dim
        self.bottom = mlp([num_dense] + list(bottom), last_relu=True)
        self.cross = LowRankCross(n, cross_layers, cross_rank)
        self.top = mlp([n] + list(top), last_relu=False)
        self.compute_dtype = compute_dtype

    def forward(self, dense, emb):
        dtype = self.compute_dtype or self.bottom[0].weight.dtype
        x = run_mlp(self.bottom, dense.to(dtype), dtype)
        x0 = torch.cat([x, emb.to(dtype).flatten(1)], 1)
        return run_mlp(self.top, self.cross(x0, dtype), dtype).squeeze(1).float()
