"""Sparse gradients and embeddings.

* ``sparse_add_(weight, grad, alpha=1.0, trail=None)``: ``weight += alpha * grad``
  for a sparse COO grad (as nn.EmbeddingBag(sparse=True) makes it), without
  coalescing; fp32 or split-bf16 weights; the same bits for any thread count.
* Per-parameter sparse optimizer rules (``functional``): ``sparse_sgd_``,
  ``sparse_adagrad_``, ``rowwise_adagrad_``, ``sparse_adam_``; the optimizer
  classes in ``ipex_train.optim`` route sparse gradients to them.
* ``FusedEmbeddingBag`` / ``FusedEmbeddingBagCollection``: embedding bags whose
  backward applies SGD / Adagrad / row-wise Adagrad straight into the tables;
  ``tables_as_fp32()`` makes their state dicts portable fp32 (see embedding.py).
"""
from .embedding import (FusedEmbeddingBag, FusedEmbeddingBagCollection,
                        FusedEmbeddingOptimizer, TableConfig, join_split, split_fp32,
                        tables_as_fp32)
from .functional import (rowwise_adagrad_, sparse_adagrad_, sparse_adam_, sparse_add_,
                         sparse_sgd_)

__all__ = ["sparse_add_", "sparse_sgd_", "sparse_adagrad_", "rowwise_adagrad_", "sparse_adam_",
           "FusedEmbeddingBag", "FusedEmbeddingBagCollection", "FusedEmbeddingOptimizer",
           "TableConfig", "join_split", "split_fp32", "tables_as_fp32"]
