"""TorchRec integration: train TorchRec models with ipex_train's kernels.

``fuse_embeddings(model, optimizer=..., lr=..., dtype=...)`` swaps each
torchrec EmbeddingBagCollection for a :class:`FusedEBC` (same KJT in,
KeyedTensor out; tables updated in backward by ipex_train.sparse), and
``dense_parameters(model)`` lists what a dense optimizer should get, and
``sharders(...)`` gives DistributedModelParallel sharders that run the
sharded tables on the same kernels (sharding.py).
Needs torchrec (scripts/install.d/40-torchrec.sh installs it).
"""
from .collection import OPTIMIZERS, FusedEBC
from .fuse import dense_parameters, fuse_embeddings
from .sharding import FusedEBCModuleSharder, FusedEBCSharder, ShardedFusedEBC, sharders

__all__ = ["FusedEBC", "fuse_embeddings", "dense_parameters", "OPTIMIZERS", "sharders",
           "FusedEBCSharder", "FusedEBCModuleSharder", "ShardedFusedEBC"]
