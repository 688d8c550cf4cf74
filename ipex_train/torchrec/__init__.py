"""TorchRec integration: train TorchRec models with ipex_train's kernels.

``fuse_embeddings(model, optimizer=..., lr=..., dtype=...)`` swaps each
torchrec EmbeddingBagCollection for a :class:`FusedEBC` (same KJT in,
KeyedTensor out; tables updated in backward by ipex_train.sparse), and
``dense_parameters(model)`` lists what a dense optimizer should get.
Needs torchrec (scripts/install.d/40-torchrec.sh installs it).
"""
from .collection import OPTIMIZERS, FusedEBC
from .fuse import dense_parameters, fuse_embeddings

__all__ = ["FusedEBC", "fuse_embeddings", "dense_parameters", "OPTIMIZERS"]
