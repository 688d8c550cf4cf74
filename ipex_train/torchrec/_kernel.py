"""The compute kernel of the sharded EBC: one rank's shards of one table group.

TorchRec's GroupedPooledEmbeddingsLookup holds one kernel per group of local
shards (same pooling, data type, fused params). FBGEMM's kernel is
BatchedFusedEmbeddingBag; ours, FusedShardKernel, holds the shards in a
FusedEBC (ipex_train.sparse tables, updated in backward) and offers the same
surface TorchRec reads: forward(KJT) -> [B, sum of local dims], the shards
as ShardedTensor state_dict entries, per-table parameters and a FusedOptimizer
whose state (Adagrad sums) is sharded like the tables.

    GroupedEmbeddingConfig (tables t: local_rows x local_cols, features)
        -> FusedEBC over EmbeddingBagConfig(t.name, local_rows, local_cols)
    KJT of the group's features (stride = B of every rank) -> pooled values
"""
import copy
import functools
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from . import _compat

_compat.check()  # before importing TorchRec's internals: a clear error if they changed

from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardMetadata
from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata
from torchrec.distributed.composable.table_batched_embedding_slice import (
    TableBatchedEmbeddingSlice)
from torchrec.distributed.embedding_kernel import BaseEmbedding, get_state_dict
from torchrec.distributed.embedding_types import GroupedEmbeddingConfig
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import (
    EmbeddingBagConfig, PoolingType, pooling_type_to_pooling_mode)
from torchrec.optim.fused import EmptyFusedOptimizer, FusedOptimizer, FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from . import _backend
from .collection import FusedEBC

# fused_params["optimizer"]: FBGEMM's names (as EmbeddingBagCollectionSharder takes) or ours
_OPTIMIZERS = {EmbOptimType.EXACT_SGD: "sgd", EmbOptimType.EXACT_ADAGRAD: "adagrad",
               EmbOptimType.EXACT_ROWWISE_ADAGRAD: "rowwise_adagrad",
               "sgd": "sgd", "adagrad": "adagrad", "rowwise_adagrad": "rowwise_adagrad"}
DTYPE_KEY = "ipex_train_dtype"  # fused_params key: torch.float32 or torch.bfloat16 (split)


def settings(fused_params: Optional[Dict[str, Any]]) -> Tuple[str, float, Optional[float],
                                                              torch.dtype]:
    """(optimizer, lr, eps, dtype) of a group's fused params; raises on what
    our kernels do not run."""
    fp = fused_params or {}
    opt = fp.get("optimizer", "sgd")
    if opt not in _OPTIMIZERS:
        raise ValueError(f"ipex_train sharder: optimizer {opt} is not supported; use one of "
                         "EXACT_SGD, EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD (or 'sgd', "
                         "'adagrad', 'rowwise_adagrad')")
    for key in ("weight_decay", "momentum"):
        if fp.get(key, 0.0):
            raise ValueError(f"ipex_train sharder: fused param {key}={fp[key]} is not supported")
    eps = fp.get("eps")
    return (_OPTIMIZERS[opt], float(fp.get("learning_rate", 0.01)),
            None if eps is None else float(eps), fp.get(DTYPE_KEY, torch.float32))


class _ShardOptimizer(FusedOptimizer):
    """The kernel's lr (one param group) and its tables' Adagrad sums as
    ShardedTensors ("<table>.momentum1", as FBGEMM's kernel names them).
    step()/zero_grad() hand the lr to the tables (the update runs in backward)."""

    def __init__(self, config: GroupedEmbeddingConfig, kernel: "FusedShardKernel",
                 pg: Optional[dist.ProcessGroup]):
        self._kernel = kernel
        params: Dict[str, Any] = {}
        state: Dict[Any, Any] = {}
        group = {"params": [], "lr": kernel.lr}
        for t, tab in zip(config.embedding_tables, kernel.tables()):
            weight = _sharded(t, tab.weight, pg)
            params[t.name + ".weight"] = weight
            group["params"].append(weight)
            state[weight] = {}
            if tab.state_sum is not None:
                state[weight][t.name + ".momentum1"] = _sharded(t, tab.state_sum, pg)
        super().__init__(params, state, [group])

    def zero_grad(self, set_to_none: bool = False) -> None:
        self._kernel.set_lr(self.param_groups[0]["lr"])

    def step(self, closure: Any = None) -> None:
        self._kernel.set_lr(self.param_groups[0]["lr"])


def _sharded(table, local: torch.Tensor, pg) -> ShardedTensor:
    """`local` (a table shard [rows, cols] or a row-wise state [rows]) as a
    ShardedTensor laid out like `table`'s global metadata."""
    meta = copy.deepcopy(table.global_metadata)
    meta.tensor_properties.dtype = local.dtype
    meta.tensor_properties.requires_grad = False
    mine = table.local_metadata
    if local.dim() == 1:
        def rows(m):
            return ShardMetadata(shard_offsets=[m.shard_offsets[0]],
                                 shard_sizes=[m.shard_sizes[0]], placement=m.placement)
        meta = ShardedTensorMetadata([rows(m) for m in meta.shards_metadata],
                                     torch.Size([meta.size[0]]), meta.tensor_properties)
        mine = rows(mine)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        [Shard(local, mine)], meta, process_group=pg)


class FusedShardKernel(BaseEmbedding, FusedOptimizerModule):
    """One group of local shards on ipex_train's fused kernels (see the module
    docstring). `sharding_type` decides MEAN pooling: row-wise shards pool by
    SUM and TorchRec divides after the output all-to-all, as with FBGEMM."""

    def __init__(self, config: GroupedEmbeddingConfig, pg: Optional[dist.ProcessGroup] = None,
                 sharding_type: Optional[ShardingType] = None) -> None:
        super().__init__()
        self._config, self._pg = config, pg
        opt, lr, eps, dtype = settings(config.fused_params)
        self.lr = lr
        mode = pooling_type_to_pooling_mode(config.pooling, sharding_type)
        pooling = PoolingType.SUM if mode.name == "SUM" else PoolingType.MEAN
        names = [t.name for t in config.embedding_tables]
        if len(set(names)) != len(names):
            raise ValueError(f"ipex_train sharder: a rank holds several shards of one table "
                             f"({names}); plan its column-wise shards on different ranks (or "
                             "use table-wise or row-wise sharding)")
        configs = [EmbeddingBagConfig(
            name=t.name, num_embeddings=t.local_rows, embedding_dim=t.local_cols,
            feature_names=list(t.feature_names), pooling=pooling,
            init_fn=functools.partial(nn.init.uniform_, a=t.get_weight_init_min(),
                                      b=t.get_weight_init_max()))
            for t in config.embedding_tables]
        kwargs = {} if eps is None else {"eps": eps}
        self._ebc = FusedEBC(configs, optimizer=opt, lr=lr, dtype=dtype,
                             is_weighted=config.is_weighted, **kwargs)
        self._optim = _ShardOptimizer(config, self, pg)
        # row-wise bf16: each rank pools part of a bag; its fp32 sum goes out
        # unrounded and the sharded EBC rounds the reduced total once, as an
        # unsharded bf16 lookup rounds its pooled sum (ShardedFusedEBC)
        self.partial_sums = (dtype == torch.bfloat16 and
                             sharding_type == ShardingType.ROW_WISE)
        if self.partial_sums:
            self._ebc._out_dtype = torch.float32

    # -- BaseEmbedding ------------------------------------------------------
    @property
    def config(self) -> GroupedEmbeddingConfig:
        return self._config

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if not self._ebc._direct:  # shared tables: FusedEBC joins their features' bags
            return self._ebc(features).values()
        # one table per feature, in key order: per-table views in a few ops
        keys, batch = features.keys(), features.stride()
        if features.variable_stride_per_key() or len(keys) != len(self._ebc._names):
            return self._ebc(features).values()  # FusedEBC raises on what it cannot run
        lengths = features.length_per_key()
        offsets = features.offsets().view(-1).long()
        per_key = torch.cat([offsets[:-1].view(len(keys), batch),
                             offsets[batch::batch].view(len(keys), 1)], dim=1)
        per_key = (per_key - per_key[:, :1]).unbind(0)  # each key's [B + 1], from 0
        indices = features.values().long().contiguous().split(lengths)
        if not self._config.is_weighted:
            return _backend.lookup_prepared(self._ebc.groups[0], list(indices), list(per_key),
                                            self._ebc._out_dtype).float()
        weights = features.weights().split(lengths)
        return _backend.lookup(self._ebc.groups[0], list(indices), list(per_key),
                               list(weights), self._ebc._out_dtype).float()

    @property
    def fused_optimizer(self) -> FusedOptimizer:
        return self._optim

    # -- the tables ---------------------------------------------------------
    def tables(self) -> List[nn.Module]:
        """The ipex_train.sparse table of each shard, in config order
        (.weight, .trail, .state_sum, .master_weight(), .set_master_weight())."""
        ebc = self._ebc
        out = []
        for i in range(len(self._config.embedding_tables)):
            g, pos, _ = ebc._where[i]
            out.append(ebc.groups[g].table(pos))
        return out

    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)
        for opt in self._ebc.embedding_optimizers():
            for group in opt.param_groups:
                group["lr"] = self.lr

    def split_embedding_weights(self) -> List[torch.Tensor]:
        """The shards' storage: fp32 tables, or the bf16 top halves of split ones."""
        return [t.weight for t in self.tables()]

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        return get_state_dict(self._config.embedding_tables, self.split_embedding_weights(),
                              self._pg, destination, prefix)

    def named_split_embedding_weights(self, prefix: str = "", recurse: bool = True,
                                      remove_duplicate: bool = True
                                      ) -> Iterator[Tuple[str, torch.Tensor]]:
        for t, w in zip(self._config.embedding_tables, self.split_embedding_weights()):
            yield (prefix + "." if prefix else "") + f"{t.name}.weight", w

    def named_parameters_by_table(self) -> Iterator[Tuple[str, TableBatchedEmbeddingSlice]]:
        """{table name: its shard as a Parameter view}, marked as updated in
        backward (TorchRec's in_backward_optimizer_filter drops them)."""
        for t, w in zip(self._config.embedding_tables, self.split_embedding_weights()):
            p = TableBatchedEmbeddingSlice(w.view(-1), 0, w.numel(), w.shape[0], w.shape[1])
            p._in_backward_optimizers = [EmptyFusedOptimizer()]
            yield t.name, p

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:
        for name, p in self.named_parameters_by_table():
            yield (prefix + "." if prefix else "") + f"{name}.weight", p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, torch.Tensor]]:
        # the tables are fused parameters (TorchRec's convention), not buffers
        yield from ()

    def flush(self) -> None:
        pass

    def purge(self) -> None:
        pass
