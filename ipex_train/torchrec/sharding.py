"""TorchRec sharders whose sharded EmbeddingBagCollection runs ipex_train's kernels.

    model = DLRM(EmbeddingBagCollection(tables), ...)          # or fuse_embeddings(...)
    sharders = ipex_train.torchrec.sharders(optimizer="rowwise_adagrad", lr=0.02)
    plan = EmbeddingShardingPlanner(topology, constraints=...).collective_plan(
        model, sharders, pg)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan,
                                   sharders=sharders)

Only the compute kernel changes: the sharded module is TorchRec's
ShardedEmbeddingBagCollection with its own input distribution (KJT
all-to-all), output distribution (pooled all-to-all / reduce-scatter),
planner, state_dict (ShardedTensors) and fused optimizer; its lookups hold
FusedShardKernel (_kernel.py) instead of FBGEMM's BatchedFusedEmbeddingBag.

Sharding types (compute kernel "fused"): table-wise, row-wise, and
column-wise (each shard a [rows, some columns] table on our kernel; TorchRec
concatenates the pooled columns), except column-wise with row-wise Adagrad,
whose per-row sum spans all of a row's columns.
Row-wise: our kernel pools a partial sum per shard; TorchRec reduce-scatters
them. For MEAN pooling TorchRec's own callback divides every feature by its
bag length + 1e-6 (SUM features by 1 + 1e-6); ours replaces it by the
kernel's rule (x * 1/length). bf16 tables send fp32 partial sums; the total
and its gradient are rounded to bf16 once, where the unsharded lookup rounds.
Weights: a materialised source module's weights (and a FusedEBC's Adagrad
sums) are copied into the shards; a meta-device module's shards start as
TorchRec's do (uniform in +-1/sqrt(rows)).
bf16 (dtype=torch.bfloat16): split storage; state_dict holds the fp32 master
values of every shard (exact), and loading one writes them back exactly.
Checkpoints: dmp.state_dict() and dmp.fused_optimizer.state_dict() (the
Adagrad sums, "<table>.momentum1") hold ShardedTensors over the live shards.
torch.save of them resumes exactly at the same world size and plan; saved
with torch.distributed.checkpoint they load at another world size or plan
(TorchRec's resharding path, tested 2 -> 3 ranks: table-wise -> row-wise and
column-wise, column-wise -> table-wise). A rank holds at most one shard of a
table (a plan with two is refused on every rank).
In-place resharding of a live model (update_shards, DMP.reshard) raises.
"""
import dataclasses
import functools
from typing import Any, Dict, List, Optional, Type

import torch
from torch import nn

from . import _compat

_compat.check()  # before importing TorchRec's internals: a clear error if they changed

from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection)
from torchrec.distributed.embeddingbag import (
    _apply_mean_pooling as _torchrec_mean_pooling)
from torchrec.distributed.types import ParameterSharding, ShardingEnv, ShardingType
from torchrec.modules.embedding_configs import DataType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedTensor

from ._compat import private
from ._kernel import DTYPE_KEY, FusedShardKernel, settings
from .collection import FusedEBC
from ipex_train.sparse.embedding import split_fp32

SHARDING_TYPES = (ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value,
                  ShardingType.COLUMN_WISE.value)
_CW_REFUSED = ("row-wise Adagrad keeps one sum per row over all of its columns; a "
               "column-wise shard would sum only its own columns (another optimizer than "
               "the unsharded one), so it is not offered")


class _Lookup(GroupedPooledEmbeddingsLookup):
    """TorchRec's pooled lookup with our kernel for every group."""

    def __init__(self, *args, ipex_sharding_type: ShardingType, **kwargs):
        self._ipex_sharding_type = ipex_sharding_type
        super().__init__(*args, **kwargs)

    def _create_embedding_kernel(self, config, device, pg, sharding_type, env):
        if config.compute_kernel != EmbeddingComputeKernel.FUSED:
            raise ValueError(f"ipex_train sharder: compute kernel {config.compute_kernel.value} "
                             "is not supported; the plan must use 'fused'")
        return FusedShardKernel(config, pg, self._ipex_sharding_type)


class ShardedFusedEBC(ShardedEmbeddingBagCollection):
    """TorchRec's ShardedEmbeddingBagCollection whose local shards live in
    ipex_train's fused tables (see the module docstring)."""

    def __init__(self, module, table_name_to_parameter_sharding, env, fused_params=None,
                 device=None, qcomm_codecs_registry=None, module_fqn=None,
                 source_state: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> None:
        for name, ps in table_name_to_parameter_sharding.items():
            if ps.sharding_type not in SHARDING_TYPES:
                raise ValueError(f"ipex_train sharder: table {name!r} is planned "
                                 f"{ps.sharding_type}; supported: {list(SHARDING_TYPES)}")
        for name, ps in table_name_to_parameter_sharding.items():
            ranks = ps.ranks or []
            if len(set(ranks)) != len(ranks):  # the plan is the same on every rank: all raise
                raise ValueError(f"ipex_train sharder: table {name!r} is planned "
                                 f"{ps.sharding_type} with several shards on one rank (ranks "
                                 f"{ranks}); each rank may hold one shard of a table: plan its "
                                 "column-wise shards on different ranks (or use table-wise "
                                 "or row-wise sharding)")
        opt = settings(fused_params)[0]
        for name, ps in table_name_to_parameter_sharding.items():
            if ps.sharding_type == ShardingType.COLUMN_WISE.value and opt == "rowwise_adagrad":
                raise ValueError(f"ipex_train sharder: table {name!r} is planned column_wise "
                                 f"with rowwise_adagrad: {_CW_REFUSED}")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"ipex_train sharder: the fused tables live on the CPU, got "
                             f"device {device}")
        super().__init__(module, table_name_to_parameter_sharding, env, fused_params, device,
                         qcomm_codecs_registry, module_fqn)
        if source_state:
            self._load_source(source_state)
        if self._fused_dtype() == torch.bfloat16:
            self.register_state_dict_post_hook(_masters_out)
            self._register_load_state_dict_pre_hook(_masters_in, with_module=True)

    def _initialize_torch_state(self, skip_registering: bool = False) -> None:
        # TorchRec types each table's ShardedTensor by its config's data_type;
        # bf16-split shards are stored as bf16, so say so while it builds them
        configs = private(self, "_table_name_to_config")
        if self._fused_dtype() == torch.bfloat16:
            self._table_name_to_config = {
                n: dataclasses.replace(c, data_type=DataType.BF16) for n, c in configs.items()}
        try:
            super()._initialize_torch_state(skip_registering)
        finally:
            self._table_name_to_config = configs

    def output_dist(self, ctx, output):
        return self._rounded(super().output_dist(ctx, output))

    def compute_and_output_dist(self, ctx, input):
        return self._rounded(super().compute_and_output_dist(ctx, input))

    def _rounded(self, awaitable):
        """The pooled values after the output dist, as an unsharded lookup
        gives them: row-wise MEAN divides each bag's reduced sum as our
        kernel does (TorchRec's callback divides every feature by its length
        + 1e-6, SUM ones by 1 + 1e-6), then row-wise bf16 shards' fp32
        partial sums are rounded to bf16 once, as an unsharded bf16 lookup
        rounds its sums, and their gradients are rounded there too: the
        kernel then gets round(g) / world and, for MEAN, * 1/length, the
        fp32 values the unsharded kernel computes from its bf16 gradient."""
        callbacks = awaitable.callbacks
        for i, cb in enumerate(callbacks):
            if isinstance(cb, functools.partial) and cb.func is _torchrec_mean_pooling:
                callbacks[i] = functools.partial(_mean_pooling, divisor=cb.keywords["divisor"])
                break
        else:
            if private(self, "_has_mean_pooling_callback"):
                raise _compat.TorchRecInternalsChanged(_compat.message(
                    "ShardedEmbeddingBagCollection's mean-pooling callback "
                    "(_apply_mean_pooling) was not found on the output awaitable"))
        if any(k.partial_sums for k in self._kernels()):
            callbacks.append(_round_bf16)
        return awaitable

    def _fused_dtype(self) -> torch.dtype:
        kernels = self._kernels()
        return kernels[0].tables()[0].weight.dtype if kernels else torch.float32

    def _create_lookups(self) -> None:
        for sharding, stype in zip(private(self, "_embedding_shardings"),
                                   private(self, "_sharding_types")):
            private(self, "_lookups").append(_Lookup(
                grouped_configs=private(sharding, "_grouped_embedding_configs"),
                pg=private(sharding, "_pg"), device=torch.device("cpu"),
                env=private(sharding, "_env"), ipex_sharding_type=ShardingType(stype)))

    def _kernels(self) -> List[FusedShardKernel]:
        return [k for lookup in private(self, "_lookups")
                for k in private(lookup, "_emb_modules")]

    def shards(self):
        """(table config, kernel table) for every local shard: the config's
        local_metadata gives its offsets, the table its storage."""
        for k in self._kernels():
            yield from zip(k.config.embedding_tables, k.tables())

    @torch.no_grad()
    def _load_source(self, source: Dict[str, Dict[str, torch.Tensor]]) -> None:
        for cfg, tab in self.shards():
            (r0, c0), (r, c) = cfg.local_metadata.shard_offsets, cfg.local_metadata.shard_sizes
            src = source[cfg.name]
            tab.set_master_weight(src["weight"][r0:r0 + r, c0:c0 + c])
            s = src.get("state_sum")
            if s is not None and tab.state_sum is not None and s.dim() == tab.state_sum.dim():
                tab.state_sum.copy_(s[r0:r0 + r] if s.dim() == 1 else s[r0:r0 + r, c0:c0 + c])

    def update_shards(self, *args, **kwargs):
        raise NotImplementedError(
            "ipex_train sharder: in-place resharding (update_shards) is not supported; save "
            "the state_dict with torch.distributed.checkpoint and load it into a model "
            "sharded by the new plan")


class _RoundBF16(torch.autograd.Function):
    """x rounded to bf16 precision (kept fp32), and so is its gradient: what
    an unsharded bf16 lookup's output and its .float() do."""

    @staticmethod
    def forward(ctx, x):
        return x.bfloat16().float()

    @staticmethod
    def backward(ctx, grad):
        return grad.bfloat16().float()


def _mean_pooling(kt: KeyedTensor, divisor: torch.Tensor) -> KeyedTensor:
    """TorchRec's row-wise mean callback without its epsilon: divisor is each
    value's bag length + 1e-6 (1 + 1e-6 for SUM features); values are
    multiplied by 1/length (0 for empty bags), as our kernel's MEAN does."""
    n = divisor.round()
    inv = torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
    return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(),
                       values=kt.values() * inv, key_dim=kt.key_dim())


def _round_bf16(kt: KeyedTensor) -> KeyedTensor:
    return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(),
                       values=_RoundBF16.apply(kt.values()), key_dim=kt.key_dim())


def _masters_out(module: ShardedFusedEBC, destination, prefix, local_metadata) -> None:
    """bf16 tables: state_dict's weight shards become fp32 master copies."""
    for cfg, tab in module.shards():
        if tab.trail is None:
            continue
        key = f"{prefix}embedding_bags.{cfg.name}.weight"
        st = destination[key]
        meta = st.metadata()
        meta.tensor_properties.dtype = torch.float32
        destination[key] = ShardedTensor._init_from_local_shards_and_global_metadata(
            [Shard(tab.master_weight(), cfg.local_metadata)], meta,
            process_group=module._env.process_group)


def _masters_in(module: ShardedFusedEBC, state_dict, prefix, *args) -> None:
    """bf16 tables: loads fp32 masters (TorchRec's pre-hook, run before this
    one, made them local tensors); the weight param then gets their top halves."""
    for cfg, tab in module.shards():
        key = f"{prefix}embedding_bags.{cfg.name}.weight"
        if tab.trail is None or key not in state_dict:
            continue
        w = state_dict[key]
        if w.dtype != torch.float32:
            raise ValueError(f"{key}: a bf16-split table loads fp32 master values, got {w.dtype}")
        tab.set_master_weight(w.view(tab.weight.shape))
        state_dict[key] = split_fp32(w)[0]


class FusedEBCSharder(EmbeddingBagCollectionSharder):
    """Shards torchrec EmbeddingBagCollections onto ipex_train's fused kernels.

    Args:
        optimizer: "sgd", "adagrad" or "rowwise_adagrad" (or FBGEMM's
            EmbOptimType EXACT_*), applied in backward.
        lr, eps: its hyperparameters (eps: ipex_train.sparse's defaults if None).
        dtype: torch.float32 or torch.bfloat16 (split storage).
        fused_params: FBGEMM-style fused params; "optimizer", "learning_rate"
            and "eps" there override the arguments above.
    """

    def __init__(self, optimizer: Any = "sgd", lr: float = 0.01,
                 dtype: torch.dtype = torch.float32, eps: Optional[float] = None,
                 fused_params: Optional[Dict[str, Any]] = None,
                 qcomm_codecs_registry=None) -> None:
        fp = {"optimizer": optimizer, "learning_rate": lr, DTYPE_KEY: dtype}
        if eps is not None:
            fp["eps"] = eps
        fp.update(fused_params or {})
        if fp[DTYPE_KEY] not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {fp[DTYPE_KEY]}")
        settings(fp)  # raise now on what the kernels do not run
        super().__init__(fused_params=fp, qcomm_codecs_registry=qcomm_codecs_registry)

    def sharding_types(self, compute_device_type: str) -> List[str]:
        if settings(self.fused_params)[0] == "rowwise_adagrad":  # see _CW_REFUSED
            return [t for t in SHARDING_TYPES if t != ShardingType.COLUMN_WISE.value]
        return list(SHARDING_TYPES)

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return [EmbeddingComputeKernel.FUSED.value]

    def shard(self, module, params: Dict[str, ParameterSharding], env: ShardingEnv,
              device: Optional[torch.device] = None, module_fqn: Optional[str] = None
              ) -> ShardedFusedEBC:
        source = None
        if not any(p.is_meta for p in module.parameters()):
            source = {n: {"weight": bag.weight.detach()}
                      for n, bag in module.embedding_bags.items()}
        return ShardedFusedEBC(module, params, env, self.fused_params, device,
                               self.qcomm_codecs_registry, module_fqn, source_state=source)

    @property
    def sharded_module_type(self) -> Type[ShardedFusedEBC]:
        return ShardedFusedEBC


class FusedEBCModuleSharder(FusedEBCSharder):
    """Shards ipex_train's FusedEBC (models passed through fuse_embeddings):
    its optimizer, lr, eps and dtype, weights and Adagrad sums carry over."""

    def __init__(self, qcomm_codecs_registry=None) -> None:
        super().__init__(qcomm_codecs_registry=qcomm_codecs_registry)

    @property
    def module_type(self) -> Type[FusedEBC]:
        return FusedEBC

    def shardable_parameters(self, module: FusedEBC) -> Dict[str, nn.Parameter]:
        return {t.name: nn.Parameter(torch.empty(t.num_embeddings, t.embedding_dim,
                                                 device="meta"), requires_grad=False)
                for t in module.embedding_bag_configs()}

    def shard(self, module: FusedEBC, params, env, device=None, module_fqn=None):
        group_opt = module.embedding_optimizers()[0].param_groups[0]
        fp = dict(self.fused_params, optimizer=module.optimizer,
                  learning_rate=float(group_opt["lr"]), eps=float(group_opt["eps"]))
        fp[DTYPE_KEY] = module.dtype
        proxy = EmbeddingBagCollection(module.embedding_bag_configs(),
                                       is_weighted=module.is_weighted(),
                                       device=torch.device("meta"))
        source = {}
        for i, t in enumerate(module.embedding_bag_configs()):
            g, pos, _ = module._where[i]
            tab = module.groups[g].table(pos)
            source[t.name] = {"weight": tab.master_weight(), "state_sum": tab.state_sum}
        return ShardedFusedEBC(proxy, params, env, fp, device, self.qcomm_codecs_registry,
                               module_fqn, source_state=source)


def sharders(optimizer: Any = "sgd", lr: float = 0.01, dtype: torch.dtype = torch.float32,
             eps: Optional[float] = None, fused_params: Optional[Dict[str, Any]] = None
             ) -> List[EmbeddingBagCollectionSharder]:
    """The sharders to give the planner and DistributedModelParallel: one for
    torchrec EmbeddingBagCollections (trained with `optimizer`, `lr`, `dtype`)
    and one for FusedEBCs (which keep their own settings)."""
    return [FusedEBCSharder(optimizer, lr, dtype, eps, fused_params), FusedEBCModuleSharder()]
