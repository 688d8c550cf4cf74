"""TorchRec integration: train TorchRec models with ipex_train's kernels.

``fuse_embeddings(model, optimizer=..., lr=..., dtype=...)`` swaps each
torchrec EmbeddingBagCollection for a :class:`FusedEBC` (same KJT in,
KeyedTensor out; tables updated in backward by ipex_train.sparse), and
``dense_parameters(model)`` lists what a dense optimizer should get, and
``sharders(...)`` gives DistributedModelParallel sharders that run the
sharded tables on the same kernels (sharding.py).
Needs torchrec (scripts/install.d/40-torchrec.sh installs it). The sharders
use TorchRec 1.8 internals: they are imported on first use, which raises
_compat.TorchRecInternalsChanged if those changed (fuse_embeddings does not
depend on them).
"""
from .collection import OPTIMIZERS, FusedEBC
from .fuse import dense_parameters, fuse_embeddings

_SHARDING = ("sharders", "FusedEBCSharder", "FusedEBCModuleSharder", "ShardedFusedEBC")

__all__ = ["FusedEBC", "fuse_embeddings", "dense_parameters", "OPTIMIZERS", *_SHARDING]


def __getattr__(name):
    if name in _SHARDING:
        from . import sharding  # checks TorchRec's internals first
        return getattr(sharding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
