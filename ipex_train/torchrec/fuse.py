"""fuse_embeddings: swap TorchRec EmbeddingBagCollections for FusedEBC.

    model = torchrec.models.dlrm.DLRM(ebc, ...)
    model = ipex_train.torchrec.fuse_embeddings(model, optimizer="rowwise_adagrad",
                                                lr=0.02, dtype=torch.bfloat16)
    dense = ipex_train.torchrec.dense_parameters(model)
    opt = ipex_train.optim.SGD(dense, lr=0.02)   # the tables update in backward

The model code is unchanged: it still feeds KeyedJaggedTensors and reads
KeyedTensors. Only the optimizer wiring differs: the tables are no longer
parameters, so hand only the dense ones to a dense optimizer.
"""
from typing import Dict, Iterator

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from .collection import FusedEBC


def fuse_embeddings(module: nn.Module, optimizer: str = "sgd", lr: float = 0.01,
                    dtype: torch.dtype = torch.float32, **optimizer_kwargs) -> nn.Module:
    """Replaces every EmbeddingBagCollection in `module` by a FusedEBC.

    `module` may itself be an EmbeddingBagCollection: the FusedEBC is
    returned. Otherwise the swap is done in place on `module`'s submodules
    (one EBC reached by two paths becomes one FusedEBC) and `module` is
    returned. Weights are copied; the optimizer (`"sgd"`, `"adagrad"`,
    `"rowwise_adagrad"`), `lr`, `dtype` (fp32 or bf16-split) and
    `optimizer_kwargs` configure every swapped collection.
    Raises ValueError if `module` holds no EmbeddingBagCollection.
    """
    def fused(ebc):
        return FusedEBC.from_ebc(ebc, optimizer=optimizer, lr=lr, dtype=dtype,
                                 **optimizer_kwargs)

    if isinstance(module, EmbeddingBagCollection):
        return fused(module)
    # plan everything first, so a bad config raises before any swap
    done: Dict[int, FusedEBC] = {}
    swaps = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, EmbeddingBagCollection):
                if id(child) not in done:
                    done[id(child)] = fused(child)
                swaps.append((parent, name, done[id(child)]))
    if not swaps:
        raise ValueError(f"{type(module).__name__} holds no torchrec EmbeddingBagCollection")
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return module


def dense_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters of `module` outside every FusedEBC and other than sharded
    tables updated in backward (TorchRec marks those `_in_backward_optimizers`):
    what a dense optimizer gets."""
    inside = {id(p) for m in module.modules() if isinstance(m, FusedEBC)
              for p in m.parameters()}
    seen = set()
    for p in module.parameters():
        if hasattr(p, "_in_backward_optimizers"):
            continue
        if id(p) not in inside and id(p) not in seen:
            seen.add(id(p))
            yield p
