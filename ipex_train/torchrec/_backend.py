"""The one place that talks to ipex_train.sparse.FusedEmbeddingBagCollection.

FusedEBC (collection.py) speaks TorchRec; this file turns its groups of
tables into ipex_train.sparse modules and reads/writes their weights, so an
API change in ipex_train.sparse touches only these few lines.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ipex_train.sparse import FusedEmbeddingBagCollection, TableConfig
from ipex_train.sparse.embedding import _native_lookup


def build(tables: Sequence[Tuple[str, int, int]], mode: str, optimizer: str, lr: float,
          dtype: torch.dtype, optimizer_kwargs: dict) -> FusedEmbeddingBagCollection:
    """One ipex_train.sparse collection over `tables` [(name, rows, dim)], all
    pooled with `mode` ("sum" / "mean"); offsets carry B + 1 entries (KJT style)."""
    return FusedEmbeddingBagCollection(
        [TableConfig(rows, dim, name) for name, rows, dim in tables], mode=mode,
        optimizer=optimizer, lr=lr, dtype=dtype, include_last_offset=True, **optimizer_kwargs)


def load_weight(collection: FusedEmbeddingBagCollection, table: int, weight: torch.Tensor):
    """Sets table `table` of `collection` to `weight` (fp32 master values)."""
    collection.table(table).set_master_weight(weight.detach().float())


def weight(collection: FusedEmbeddingBagCollection, table: int) -> torch.Tensor:
    """Table `table` of `collection` as fp32 master values [rows, dim] (a copy)."""
    return collection.table(table).master_weight().detach().clone()


def dtype(collection: FusedEmbeddingBagCollection) -> torch.dtype:
    """`collection`'s table storage (it follows .float() / .bfloat16())."""
    return collection.dtype


def optimizer(collection: FusedEmbeddingBagCollection) -> torch.optim.Optimizer:
    """The torch.optim.Optimizer holding `collection`'s lr (for lr schedulers)."""
    return collection.optimizer


def lookup(collection: nn.Module, indices: List[torch.Tensor], offsets: List[torch.Tensor],
           weights: Optional[List[torch.Tensor]],
           out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Pooled lookups [bags, sum of dims] in the tables' dtype (float32 if
    out_dtype says so); the backward updates the tables."""
    if weights is not None:
        weights = [w.float() for w in weights]
    return collection(indices, offsets, per_sample_weights=weights, out_dtype=out_dtype)


def lookup_prepared(collection: FusedEmbeddingBagCollection, indices: List[torch.Tensor],
                    offsets: List[torch.Tensor], out_dtype: Optional[torch.dtype] = None
                    ) -> torch.Tensor:
    """lookup() for inputs the caller built itself: one 1-D contiguous int64
    index tensor and one [B + 1] offsets tensor per table, unweighted. Skips
    the per-table Python checks of the module's forward (~10 us a table); the
    op still checks ids and offsets."""
    return _native_lookup(collection, indices, offsets, None, out_dtype, True)
