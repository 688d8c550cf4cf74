"""The one place that talks to ipex_train.sparse.FusedEmbeddingBagCollection.

FusedEBC (collection.py) speaks TorchRec; this file turns its groups of
tables into ipex_train.sparse modules and reads/writes their weights, so an
API change in ipex_train.sparse touches only these few lines.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn


def build(tables: Sequence[Tuple[int, int]], modes: Sequence[str], optimizer: str,
          lr: float, dtype: torch.dtype, optimizer_kwargs: dict) -> nn.Module:
    """One ipex_train.sparse collection over `tables` [(rows, dim)], pooling `modes`."""
    from ipex_train.sparse import FusedEmbeddingBagCollection
    return FusedEmbeddingBagCollection(tables=list(tables), optimizer=optimizer, lr=lr,
                                       dtype=dtype, modes=list(modes), **optimizer_kwargs)


def load_weight(collection: nn.Module, table: int, weight: torch.Tensor) -> None:
    """Sets table `table` of `collection` to `weight` (any float dtype)."""
    with torch.no_grad():
        collection.weights[table].copy_(weight)


def weight(collection: nn.Module, table: int) -> torch.Tensor:
    """Table `table` of `collection` as an fp32 tensor [rows, dim] (a copy)."""
    return collection.weights[table].detach().float().clone()


def lookup(collection: nn.Module, indices: List[torch.Tensor], offsets: List[torch.Tensor],
           weights) -> torch.Tensor:
    """Pooled lookups [bags, sum of dims]; the backward updates the tables."""
    return collection(indices, offsets, per_sample_weights=weights)
