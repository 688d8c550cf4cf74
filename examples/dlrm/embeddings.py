"""The embedding tables one rank owns, and their update.

Two implementations behind one interface, picked by ``--embeddings``:

* ``fused`` (default): ``ipex_train.sparse.FusedEmbeddingBagCollection``.
  Its backward applies the optimizer update straight into the tables, so no
  gradient tensor is ever built and ``step()`` has nothing left to do.
* ``torch``: one ``nn.EmbeddingBag(sparse=True)`` per table and a torch
  optimizer stepped by ``step()`` (the stock PyTorch baseline, fp32 tables).

Every table starts from the same values whatever rank owns it (table t is
drawn from a generator seeded by (seed, t)), so runs at different world sizes
start identical.
"""
import hashlib
import warnings

import torch
from torch import nn

from ipex_train.sparse import FusedEmbeddingBagCollection


def initial_table(rows, dim, seed, table):
    """DLRM's initialisation U(-1/sqrt(rows), 1/sqrt(rows)) for table `table`, fp32 [rows, dim]."""
    digest = hashlib.blake2b(f"{seed}/table/{table}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    bound = rows ** -0.5
    return torch.rand(rows, dim, generator=g).mul_(2 * bound).sub_(bound)


class LocalTables(nn.Module):
    """Tables ``ids`` (global feature numbers) of ``rows[t]`` x ``dim``.

    forward(sparse [B, sum(bag_sizes)] int64) -> pooled [B, len(ids) * dim],
    feature t's bag of ``bag_sizes[t]`` indices (default 1: one-hot) summed,
    columns in the order of ``ids``.
    """

    def __init__(self, ids, rows, dim, *, kind, optimizer, lr, dtype, seed, bag_sizes=None):
        super().__init__()
        self.ids, self.dim, self.kind = list(ids), dim, kind
        bag_sizes = [1] * len(rows) if bag_sizes is None else list(bag_sizes)
        starts = [sum(bag_sizes[:t]) for t in range(len(bag_sizes))]
        self.cols = [(starts[t], starts[t] + bag_sizes[t]) for t in self.ids]
        self.rows = [rows[t] for t in self.ids]
        weights = [initial_table(rows[t], dim, seed, t) for t in self.ids]
        self.opt, self.out_dtype = None, dtype
        if not self.ids:  # more ranks than tables: this rank owns none
            self.tables = None
        elif kind == "fused":
            self.tables = FusedEmbeddingBagCollection(
                tables=[(r, dim) for r in self.rows], mode="sum", optimizer=optimizer, lr=lr,
                dtype=dtype)
            self._load_fused(weights)
        elif kind == "torch":
            self.tables = nn.ModuleList(
                nn.EmbeddingBag(r, dim, mode="sum", sparse=True, _weight=w)
                for r, w in zip(self.rows, weights))
            params = list(self.tables.parameters())
            cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[optimizer]
            self.opt = cls(params, lr=lr)
        else:
            raise ValueError(f"unknown embeddings kind {kind!r}")

    @property
    def lr(self):
        """The tables' learning rate (None when this rank owns no table)."""
        opt = self.opt if self.kind == "torch" else getattr(self.tables, "optimizer", None)
        return None if opt is None else opt.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        opt = self.opt if self.kind == "torch" else getattr(self.tables, "optimizer", None)
        for g in ([] if opt is None else opt.param_groups):
            g["lr"] = value

    def _load_fused(self, weights):
        with torch.no_grad():
            for i, w in enumerate(weights):
                self.tables.table(i).set_master_weight(w)

    def forward(self, sparse):
        B = sparse.shape[0]
        if not self.ids:
            return torch.zeros((B, 0), dtype=self.out_dtype)
        if all(b - a == 1 for a, b in self.cols):
            offsets = [torch.arange(B, dtype=torch.int64)] * len(self.cols)
            indices = [sparse[:, a].contiguous() for a, _ in self.cols]
        else:  # fixed-size bags: 2-D [B, k] indices, no offsets
            offsets, indices = None, [sparse[:, a:b] for a, b in self.cols]
        if self.kind == "fused":
            return self.tables(indices, offsets)
        offsets = offsets or [None] * len(indices)
        out = torch.cat([bag(i, o) for bag, i, o in zip(self.tables, indices, offsets)], 1)
        return out.to(self.out_dtype)

    def step(self):
        """Applies the pending update (torch tables); the fused ones did it in backward."""
        if self.opt is not None:
            with warnings.catch_warnings():  # torch's note on sparse invariant checks
                warnings.filterwarnings("ignore", message="Sparse invariant checks")
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
