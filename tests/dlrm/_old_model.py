"""The DLRM example's dense part as it was before the native interaction and
the fused layers (bmm + upper-triangle gather in a custom autograd Function,
nn.Linear then ReLU), kept verbatim as the reference the new model must match
within float rounding."""
import torch
import torch.nn.functional as F
from torch import nn

from dlrm.model import mlp


def run_mlp(layers, x, dtype):
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype))
        else:
            x = layer(x)
    return x


class _PairwiseDots(torch.autograd.Function):
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


def old_interact(x, emb):
    t = torch.cat([x.unsqueeze(1), emb], 1)
    return torch.cat([x, _PairwiseDots.apply(t)], 1)


class OldDenseArch(nn.Module):
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
        return run_mlp(self.top, old_interact(x, emb.to(dtype)), dtype).squeeze(1).float()
