"""FusedEBC: a TorchRec EmbeddingBagCollection trained by ipex_train's kernels.

Same interface as torchrec's EmbeddingBagCollection: a KeyedJaggedTensor in,
a KeyedTensor out, with the same keys, key order and length_per_key. The
tables live in ipex_train.sparse fused collections whose backward applies
the optimizer update to the touched rows, so the tables never get gradients
and are not parameters of any torch.optim optimizer.

Config mapping (torchrec EmbeddingBagConfig -> ipex_train.sparse):

    num_embeddings, embedding_dim  -> one table (rows, dim)
    pooling SUM / MEAN             -> that table's mode "sum" / "mean"
    feature_names [f]              -> table read by feature f
    feature_names [f, g, ...]      -> one shared table read by k features
    data_type                      -> ignored: `dtype` picks fp32 or bf16-split
    is_weighted (collection)       -> KJT weights become per-sample weights

Shared tables: the k features reading one table are pooled as k*B bags of
that table in one lookup, so their updates land in the same rows with the
exact summed gradient. Tables are grouped by (k, pooling): one
ipex_train.sparse module per distinct pair, usually just one (k=1, SUM):

    group k=2, tables t3(f3,f4), t5(f6,f7), B bags per feature
    indices  [ f3 bags | f4 bags ]  for t3, [ f6 bags | f7 bags ] for t5
    output   [2*B, d3 + d5] -> view [2, B, d3 + d5] -> f3 = [0, :, :d3] ...

Names of the output keys follow torchrec: a feature read by several tables
appears once per table as "feature@table".
"""
from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection, EmbeddingBagCollectionInterface, get_embedding_names_by_table)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from . import _backend

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
_MODES = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


class FusedEBC(EmbeddingBagCollectionInterface):
    """EmbeddingBagCollection whose backward updates its own tables.

    Args:
        tables: torchrec EmbeddingBagConfigs (SUM or MEAN pooling).
        optimizer: "sgd", "adagrad" or "rowwise_adagrad", applied in backward.
        lr: learning rate of that optimizer.
        dtype: torch.float32, or torch.bfloat16 for bf16-split tables.
        is_weighted: read KJT weights as per-sample weights (SUM tables only).
        weights: optional {table name: [rows, dim] tensor} initial values;
            tables without one are initialised as torchrec's EBC does (the
            config's init_fn, by default uniform in +-1/sqrt(rows)).
        **optimizer_kwargs: passed to ipex_train.sparse (e.g. eps).

    forward(features: KeyedJaggedTensor [F keys, stride B]) -> KeyedTensor
    with values [B, sum of dims] in float32, like torchrec's EBC.
    """

    def __init__(self, tables: List[EmbeddingBagConfig], *, optimizer: str = "sgd",
                 lr: float = 0.01, dtype: torch.dtype = torch.float32,
                 is_weighted: bool = False,
                 weights: Optional[Dict[str, torch.Tensor]] = None,
                 **optimizer_kwargs) -> None:
        super().__init__()
        _check_config(tables, optimizer, lr, dtype, is_weighted, weights or {})
        self._configs = list(tables)
        self._is_weighted = is_weighted
        # bf16 tables pool to bf16 (then widened); float32 here keeps the fp32
        # sums unrounded (the sharder's row-wise partial sums)
        self._out_dtype: Optional[torch.dtype] = None
        self._optimizer = optimizer
        self._names = [n for names in get_embedding_names_by_table(tables) for n in names]
        self._dims = [t.embedding_dim for t in tables for _ in t.feature_names]
        self._read = sorted({f for t in tables for f in t.feature_names})

        by_key: Dict[tuple, List[int]] = {}
        for i, t in enumerate(tables):
            by_key.setdefault((len(t.feature_names), _MODES[t.pooling]), []).append(i)
        keys = sorted(by_key)
        self._group_k = [k for k, _ in keys]
        self._group_tables = [by_key[key] for key in keys]
        self.groups = nn.ModuleList(
            _backend.build([(tables[i].name, tables[i].num_embeddings, tables[i].embedding_dim)
                            for i in by_key[key]], key[1], optimizer, lr, dtype,
                           optimizer_kwargs)
            for key in keys)
        # where table i lives: (group, position in group, first column in group output)
        self._where: Dict[int, tuple] = {}
        for g, idx in enumerate(self._group_tables):
            col = 0
            for pos, i in enumerate(idx):
                self._where[i] = (g, pos, col)
                col += tables[i].embedding_dim
        # a single group of single-feature tables already yields the KT values
        self._direct = self._group_k == [1]
        weights = weights or {}
        for i, t in enumerate(tables):
            w = weights.get(t.name)
            if w is None:
                w = _torchrec_init(t)
            g, pos, _ = self._where[i]
            _backend.load_weight(self.groups[g], pos, w)

    @classmethod
    def from_ebc(cls, ebc: EmbeddingBagCollection, **kwargs) -> "FusedEBC":
        """A FusedEBC with `ebc`'s configs, weighting and current weights."""
        weights = {name: bag.weight.detach() for name, bag in ebc.embedding_bags.items()}
        return cls(ebc.embedding_bag_configs(), is_weighted=ebc.is_weighted(),
                   weights=weights, **kwargs)

    # -- torchrec's EmbeddingBagCollection interface ------------------------
    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        batch = self._check_features(features)
        keys = {k: i for i, k in enumerate(features.keys())}
        values, offsets = features.values(), features.offsets()
        starts = features.offset_per_key()
        psw = features.weights() if self._is_weighted else None

        def bags(name):
            i = keys[name]
            lo, hi = starts[i], starts[i + 1]
            return (values[lo:hi], offsets[i * batch:(i + 1) * batch + 1] - lo,
                    None if psw is None else psw[lo:hi])

        outs = []
        for idx, mod in zip(self._group_tables, self.groups):
            per_table = [_concat_bags([bags(f) for f in self._configs[i].feature_names])
                         for i in idx]
            try:
                outs.append(_backend.lookup(
                    mod, [p[0] for p in per_table], [p[1] for p in per_table],
                    None if psw is None else [p[2] for p in per_table], self._out_dtype))
            except IndexError:
                self._name_bad_id(idx, bags)  # the kernel's message numbers its own lists
                raise
        if self._direct:
            pooled = outs[0].float()
        else:
            pieces = []
            for i, t in enumerate(self._configs):
                g, _, col = self._where[i]
                out = outs[g].view(self._group_k[g], batch, outs[g].shape[1])
                pieces += [out[j, :, col:col + t.embedding_dim]
                           for j in range(len(t.feature_names))]
            pooled = torch.cat(pieces, dim=1).float()
        return KeyedTensor(keys=self._names, length_per_key=self._dims, values=pooled)

    def _name_bad_id(self, tables, bags):
        """Raises IndexError naming the feature, table and id of the first id out
        of its table's range among `tables` (config indices); returns if none."""
        for i in tables:
            t = self._configs[i]
            for f in t.feature_names:
                v = bags(f)[0]
                bad = ((v < 0) | (v >= t.num_embeddings)).nonzero()
                if bad.numel():
                    pos = int(bad[0, 0])
                    raise IndexError(f"feature {f!r}: id {int(v[pos])} (value {pos} of the "
                                     f"feature's values) is out of range for table {t.name!r} "
                                     f"of {t.num_embeddings} rows")

    # -- ours ---------------------------------------------------------------
    @property
    def optimizer(self) -> str:
        return self._optimizer

    @property
    def dtype(self) -> torch.dtype:
        """Table storage: float32 or bfloat16 (split); ``.float()`` / ``.bfloat16()``
        convert it exactly."""
        return _backend.dtype(self.groups[0])

    def embedding_optimizers(self) -> List[torch.optim.Optimizer]:
        """The torch.optim.Optimizers holding the tables' lr (one per group):
        lr schedulers drive them; their step() does nothing (updates happen
        in backward)."""
        return [_backend.optimizer(g) for g in self.groups]

    def table_weights(self) -> Dict[str, torch.Tensor]:
        """{table name: fp32 copy of its weights [rows, dim]}."""
        out = {}
        for i, t in enumerate(self._configs):
            g, pos, _ = self._where[i]
            out[t.name] = _backend.weight(self.groups[g], pos)
        return out

    def to_torchrec(self) -> EmbeddingBagCollection:
        """A plain torchrec EmbeddingBagCollection holding the current weights."""
        ebc = EmbeddingBagCollection(tables=self._configs, is_weighted=self._is_weighted)
        with torch.no_grad():
            for name, w in self.table_weights().items():
                ebc.embedding_bags[name].weight.copy_(w)
        return ebc

    def _check_features(self, features) -> int:
        if not isinstance(features, KeyedJaggedTensor):
            raise TypeError(f"features must be a KeyedJaggedTensor, got {type(features).__name__}")
        missing = [f for f in self._read if f not in features.keys()]
        if missing:
            raise ValueError(f"features lacks key(s) {missing}; this collection reads "
                             f"{self._read}, got keys {features.keys()}")
        if features.variable_stride_per_key():
            raise ValueError("features has a variable batch size per key, which FusedEBC "
                             "does not support; give every key the same stride")
        if features.inverse_indices_or_none() is not None:
            raise ValueError("features carries inverse_indices, which FusedEBC does not "
                             "support")
        if self._is_weighted and features.weights_or_none() is None:
            raise ValueError("this collection is weighted but features has no weights")
        for what, t in (("values", features.values()), ("weights", features.weights_or_none())):
            if t is not None and t.device.type != "cpu":
                raise RuntimeError(f"features.{what}() is on {t.device}, but FusedEBC's tables "
                                   "are on the CPU")
        if features.values().is_floating_point():
            raise TypeError(f"features.values() must hold integer ids, got "
                            f"{features.values().dtype}")
        return features.stride()


def _torchrec_init(config: EmbeddingBagConfig) -> torch.Tensor:
    """Initial fp32 weights as torchrec's EmbeddingBagCollection makes them."""
    w = torch.empty(config.num_embeddings, config.embedding_dim)
    if config.init_fn is not None:
        config.init_fn(w)
    else:
        bound = (1.0 / config.num_embeddings) ** 0.5
        torch.nn.init.uniform_(w, -bound, bound)
    return w


def _concat_bags(parts):
    """Concatenates (indices, offsets, weights) bag lists into one list."""
    if len(parts) == 1:
        v, o, w = parts[0]
        return v.long(), o.long(), w
    shift, offsets = 0, [parts[0][1][:1]]
    for v, o, _ in parts:
        offsets.append(o[1:] + shift)
        shift += v.numel()
    weights = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
    return (torch.cat([p[0] for p in parts]).long(), torch.cat(offsets).long(), weights)


def _check_config(tables, optimizer, lr, dtype, is_weighted, weights) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(lr, (int, float)) or not lr >= 0:
        raise ValueError(f"lr must be a number >= 0, got {lr!r}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    if not tables:
        raise ValueError("tables is empty")
    names = {t.name for t in tables}
    unknown = sorted(set(weights) - names)
    if unknown:
        raise ValueError(f"weights has table(s) {unknown}, which are not in tables "
                         f"{[t.name for t in tables]}")
    if len(names) != len(tables):
        raise ValueError(f"duplicate table names in {[t.name for t in tables]}")
    for t in tables:
        if t.pooling not in _MODES:
            raise ValueError(f"table {t.name!r} has pooling {t.pooling}; FusedEBC supports "
                             f"SUM and MEAN")
        if is_weighted and t.pooling != PoolingType.SUM:
            raise ValueError(f"table {t.name!r}: weighted lookups need SUM pooling, got "
                             f"{t.pooling}")
        if not t.feature_names:
            raise ValueError(f"table {t.name!r} has no feature_names")
        if len(set(t.feature_names)) != len(t.feature_names):
            raise ValueError(f"table {t.name!r} lists a feature twice: {t.feature_names}")
        if t.num_embeddings <= 0 or t.embedding_dim <= 0:
            raise ValueError(f"table {t.name!r} has shape ({t.num_embeddings}, "
                             f"{t.embedding_dim}); both must be > 0")
        w = weights.get(t.name)
        if w is not None:
            if w.is_meta:
                raise ValueError(f"weights for table {t.name!r} are on the meta device; "
                                 "materialize the EmbeddingBagCollection first")
            if tuple(w.shape) != (t.num_embeddings, t.embedding_dim):
                raise ValueError(f"weights for table {t.name!r} have shape {tuple(w.shape)}, "
                                 f"expected ({t.num_embeddings}, {t.embedding_dim})")
            if not w.is_floating_point():
                raise ValueError(f"weights for table {t.name!r} must be floating point, "
                                 f"got {w.dtype}")
