"""Test data and references shared by the sparse tests: random bags as
nn.EmbeddingBag takes them, and a plain-PyTorch row-wise Adagrad."""
import torch


def random_bags(rows, bags, gen, idx_dtype=torch.int64, include_last=False, max_len=6, padding=None):
    """Random bags (some empty) with duplicate indices, as nn.EmbeddingBag takes them."""
    lengths = torch.randint(0, max_len + 1, (bags,), generator=gen)
    lengths[::5] = 0
    nnz = int(lengths.sum())
    idx = torch.randint(0, rows, (nnz,), generator=gen)
    idx[nnz // 2:] = idx[: nnz - nnz // 2].clone()  # duplicates, within and across bags
    if padding is not None:
        idx[::7] = padding
    off = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    if not include_last:
        off = off[:-1]
    return idx.to(idx_dtype), off.to(idx_dtype)


class RowWiseRef:
    """Plain-PyTorch EXACT_ROWWISE_ADAGRAD on a sparse grad."""

    def __init__(self, p, lr, eps):
        self.p, self.lr, self.eps = p, lr, eps
        self.sum = torch.zeros(p.shape[0])

    @torch.no_grad()
    def step(self):
        g = self.p.grad.coalesce()
        rows, gv = g.indices()[0], g.values()
        self.sum[rows] += (gv * gv).mean(1)
        self.p[rows] -= (self.lr / (self.sum[rows].sqrt() + self.eps))[:, None] * gv

    def zero_grad(self):
        self.p.grad = None
