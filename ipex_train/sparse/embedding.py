"""Embedding bags whose backward applies the optimizer update in place.

``FusedEmbeddingBagCollection`` holds T tables and pools all of them in one
native call; its backward is one more native call that, for every touched
row, sums the row's gradient from ``grad_output`` and applies SGD, Adagrad or
row-wise Adagrad straight into the table. No weight-gradient tensor is ever
materialised, and the weights are buffers, not parameters: a dense optimizer
built from ``model.parameters()`` never sees them. This is what FBGEMM's
table-batched embeddings and TorchRec's fused EmbeddingBagCollection do.

    indices[t]  (int32/int64, [nnz_t])  offsets[t] ([B] or [B+1])
         |                                   |
         v                                   v
    table t [rows_t, dim_t] --pool each bag--> out[:, col_t : col_t + dim_t]
    out = [B, dim_0 + dim_1 + ...]          (like TorchRec's KeyedTensor.values())

Learning rate: each module has ``.optimizer``, a ``torch.optim.Optimizer``
whose single param group holds ``lr`` (and ``eps``). The backward reads
``optimizer.param_groups[0]["lr"]`` at the time it runs, so assigning to it,
or driving it with any ``torch.optim.lr_scheduler`` (``StepLR(emb.optimizer,
...)``), changes the rate of the next update. ``optimizer.step()`` and
``zero_grad()`` do nothing (the update already happened in backward); calling
them keeps training loops and schedulers uniform.

Autograd: the output's ``grad_fn`` is a C++ node (``ipex_train._lookup``,
native/python/lookup.cpp), not a Python ``autograd.Function``: with 1-D
contiguous CPU indices and offsets and no per-sample weights the step runs no
Python of ours past ``forward`` (2-D indices and per-sample weights are
checked and normalised in Python first). The backward reads ``lr``/``eps``
and the tables' buffers when it runs; the graph holds the tables and the
optimizer (not the module) until it is freed. Changing indices or offsets in place before the backward, or a second
backward through one forward, raises.

Storage (``dtype``): ``torch.float32``, or ``torch.bfloat16`` = split storage:
``weight`` holds the bf16 top halves of the fp32 master values and ``trail``
(int16) the low halves; updates are exact fp32 arithmetic on the master value.
The forward pools the bf16 weights (fp32 accumulation) and returns bfloat16.

Typical use (DLRM: 26 tables)::

    ebc = FusedEmbeddingBagCollection([(rows, 64) for rows in table_sizes], mode="sum",
                                      optimizer="rowwise_adagrad", lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(ebc.optimizer, step_size=1000, gamma=0.5)
    dense_opt = torch.optim.SGD(top_mlp.parameters(), lr=0.1)   # never sees the tables
    for indices, offsets, target in batches:
        out = ebc(indices, offsets)                # [B, 26 * 64]
        loss_fn(top_mlp(out), target).backward()   # <- the tables are updated here
        dense_opt.step(); dense_opt.zero_grad()
        ebc.optimizer.step()   # a no-op, but lr schedulers expect it before their step
        sched.step()           # sets ebc.optimizer's lr for the next backward

``mode`` is required by the collection; ``FusedEmbeddingBag`` defaults to
``"mean"`` as ``nn.EmbeddingBag`` does.

State (``state_dict``): per table ``weight``, ``trail`` (bf16 storage) and
``state_sum`` (Adagrad: fp32 like the weight; row-wise Adagrad: fp32 [rows]),
plus ``optimizer.state_dict()`` for the learning rate. Inside
``with tables_as_fp32():`` (used by ``ipex_train.fp32_state_dict``) a bf16
table gives its exact fp32 master values as ``weight`` and no ``trail``.
Loading takes either form into either storage, exactly: an fp32 ``weight``
(e.g. from ``nn.EmbeddingBag``) is split into top and trail, a bf16 ``weight``
without a ``trail`` gets a zero trail, ``weight`` + ``trail`` are joined for
fp32 tables. ``.float()`` / ``.bfloat16()`` / ``.to(dtype)`` convert the
storage exactly (fp32 <-> split bf16); other dtypes are refused.
"""
import contextlib
import contextvars
import dataclasses
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .. import _lookup, _ops
from ..bf16_split import TRAIL, join as join_split, split as split_fp32

_DEFAULT_EPS = {"sgd": 0.0, "adagrad": 1e-10, "rowwise_adagrad": 1e-8}
_STORAGE = (torch.float32, torch.bfloat16)
_AS_FP32 = contextvars.ContextVar("ipex_train_tables_as_fp32", default=False)


@contextlib.contextmanager
def tables_as_fp32():
    """Within it, ``state_dict()`` gives every bf16 fused table as its exact fp32
    master ``weight`` (no ``trail``): a state dict any fp32 model loads."""
    token = _AS_FP32.set(True)
    try:
        yield
    finally:
        _AS_FP32.reset(token)


@dataclasses.dataclass
class TableConfig:
    """One table of a FusedEmbeddingBagCollection."""
    num_embeddings: int
    embedding_dim: int
    name: Optional[str] = None
    padding_idx: Optional[int] = None


class FusedEmbeddingOptimizer(torch.optim.Optimizer):
    """Holds the learning rate of fused embedding tables (see the module docstring).

    A real ``torch.optim.Optimizer`` so that lr schedulers and checkpointing work;
    its params are the tables' weights. ``step()`` only runs the closure: the
    update is applied during backward, with ``param_groups[0]["lr"]``.
    """

    def __init__(self, weights, lr, eps, optimizer):
        super().__init__(list(weights), dict(lr=lr, eps=eps, optimizer=optimizer))

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        pass


class _Table(nn.Module):
    """Buffers of one table: weight, optional trail, optional Adagrad state."""

    def __init__(self, rows, dim, dtype, optimizer, padding_idx, init_accumulator):
        super().__init__()
        if rows < 1 or dim < 1:
            raise ValueError(f"a table needs num_embeddings >= 1 and embedding_dim >= 1, got "
                             f"({rows}, {dim})")
        if padding_idx is not None:
            if not -rows <= padding_idx < rows:
                raise ValueError(f"padding_idx {padding_idx} is out of range for {rows} rows")
            padding_idx %= rows
        self.padding_idx = padding_idx
        if dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"dtype must be torch.float32 or torch.bfloat16 (split), got {dtype}")
        # nn.EmbeddingBag's default init, N(0, 1); tables on huge pages (see table_tensor)
        w = _ops.table_tensor((rows, dim), torch.float32).normal_()
        if padding_idx is not None:
            w[padding_idx] = 0
        if dtype == torch.float32:
            self.register_buffer("weight", w)
            self.trail = None
        else:
            top, trail = split_fp32(w)
            del w
            self.register_buffer("weight", _ops.table_tensor((rows, dim), torch.bfloat16).copy_(top))
            self.register_buffer(TRAIL, _ops.table_tensor((rows, dim), torch.int16).copy_(trail))
        shape = {"adagrad": (rows, dim), "rowwise_adagrad": (rows,)}.get(optimizer)
        if shape is None:
            self.state_sum = None
        else:
            self.register_buffer("state_sum", _ops.table_tensor(shape, torch.float32).fill_(
                float(init_accumulator)))
        self.register_state_dict_post_hook(_table_state_dict)
        self.register_load_state_dict_pre_hook(_table_load_pre)

    def master_weight(self) -> torch.Tensor:
        """The fp32 master values (a copy for split storage, the table itself for fp32)."""
        return self.weight if self.trail is None else join_split(self.weight, self.trail)

    @torch.no_grad()
    def set_master_weight(self, w: torch.Tensor):
        """Overwrites the table with fp32 values ``w`` [rows, dim]."""
        if tuple(w.shape) != tuple(self.weight.shape):
            raise ValueError(f"expected shape {tuple(self.weight.shape)}, got {tuple(w.shape)}")
        w = w.to(torch.float32)
        if self.trail is None:
            self.weight.copy_(w)
        else:
            top, trail = split_fp32(w)
            self.weight.copy_(top)
            self.trail.copy_(trail)

    @torch.no_grad()
    def _convert(self, dtype):
        """Re-stores the table as fp32 or split bf16 (exact both ways)."""
        if dtype == self.weight.dtype:
            return
        w = self.master_weight()
        rows, dim = w.shape
        if dtype == torch.float32:
            self.register_buffer("weight", _ops.table_tensor((rows, dim), torch.float32).copy_(w))
            del self._buffers[TRAIL]
            self.trail = None
        else:
            top, trail = split_fp32(w)
            del w
            self.register_buffer("weight", _ops.table_tensor((rows, dim), torch.bfloat16).copy_(top))
            del self.trail
            self.register_buffer(TRAIL, _ops.table_tensor((rows, dim), torch.int16).copy_(trail))

    def _apply(self, fn, recurse=True):
        # A table alone keeps its storage: its collection converts all its
        # tables together (FusedEmbeddingBagCollection._apply); CPU only.
        target = _apply_target(fn, self.weight.dtype)
        if target != self.weight.dtype:
            raise TypeError(f"a fused embedding table cannot be converted alone (to {target}); "
                            "convert its FusedEmbeddingBagCollection")
        return self


def _apply_target(fn, current):
    """The storage dtype after nn.Module._apply's `fn` (`current` where `fn` keeps
    dtypes, as .cpu() does); refuses non-CPU devices."""
    probes = [fn(torch.empty(0, dtype=d)) for d in _STORAGE]
    for p in probes:
        if p.device.type != "cpu":
            raise RuntimeError("fused embedding tables live on the CPU; cannot move them to "
                               f"{p.device}")
    if [p.dtype for p in probes] == list(_STORAGE):
        return current
    return probes[_STORAGE.index(current)].dtype


def _table_state_dict(table, state_dict, prefix, local_metadata):
    # inside tables_as_fp32(): the exact fp32 master as "weight", no "trail"
    if _AS_FP32.get() and table.trail is not None and prefix + TRAIL in state_dict:
        del state_dict[prefix + TRAIL]
        state_dict[prefix + "weight"] = table.master_weight()


def _table_load_pre(table, state_dict, prefix, local_metadata, strict, missing, unexpected,
                    errors):
    """Brings a table's incoming weight (fp32, or bf16 with or without a trail) to
    this table's storage, exactly: the loaded values become the fp32 master."""
    wk, tk = prefix + "weight", prefix + TRAIL
    w, trail = state_dict.get(wk), state_dict.get(tk)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        return  # missing or not a float tensor: load_state_dict reports it
    if trail is not None:
        if w.dtype != torch.bfloat16 or not isinstance(trail, torch.Tensor) \
                or trail.dtype != torch.int16 or trail.shape != w.shape:
            raise ValueError(f"state dict entry {tk!r} must be an int16 tensor of the shape of a "
                             f"bfloat16 {wk!r}; got {wk!r} {w.dtype} {tuple(w.shape)} and "
                             f"{tk!r} {getattr(trail, 'dtype', type(trail).__name__)} "
                             f"{tuple(getattr(trail, 'shape', ()))}")
        master = join_split(w.detach(), trail.detach())
    elif w.dtype == torch.bfloat16:
        master = None  # bf16 values: exact in either storage, trail 0
    else:
        master = w.detach().to(torch.float32)
    if table.trail is None:
        state_dict.pop(tk, None)
        state_dict[wk] = (w.detach() if master is None else master).to(torch.float32)
    elif master is None:
        state_dict[tk] = torch.zeros(w.shape, dtype=torch.int16)
    else:
        state_dict[wk], state_dict[tk] = split_fp32(master)


@torch.compiler.disable
def _lookup_outside_dynamo(*args):
    return _lookup.lookup(*args)


def _native_lookup(*args):
    """_lookup.lookup; under torch.compile a graph break around it (Dynamo
    cannot trace the extension's builtin and otherwise warns that it does not
    know how, once per process; the lookup runs eagerly either way)."""
    if torch.compiler.is_compiling():
        return _lookup_outside_dynamo(*args)
    return _lookup.lookup(*args)


class _UpdateTarget:
    """What a lookup's backward node (native/python/lookup.cpp) holds: the
    tables (their buffers read when the backward runs), the optimizer whose lr
    it reads then, and the per-sample-weight gradients. Not the collection:
    Python's garbage collector cannot see a C++ node's references, so a
    collection that kept its own output (a cycle through the node) would
    never be freed."""

    __slots__ = ("_tables", "optimizer")

    def __init__(self, tables, optimizer):
        self._tables, self.optimizer = tables, optimizer

    def _psw_grads(self, grad_output, indices, offsets):
        """d out / d per_sample_weights[e] = <grad_output[bag(e)], weight[idx(e)]> (0 for padding)."""
        grads, col = [], 0
        for t, (tab, idx, off) in enumerate(zip(self._tables, indices, offsets)):
            d = tab.weight.shape[1]
            starts = off[:grad_output.shape[0]]  # one start per bag, without a last end
            sizes = torch.diff(starts.to(torch.int64), append=torch.tensor([idx.numel()]))
            bag = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
            g = grad_output[:, col:col + d].float().index_select(0, bag)
            w = tab.weight.float().index_select(0, idx.to(torch.int64))
            gr = (g * w).sum(1)
            if tab.padding_idx is not None:
                gr = gr.masked_fill(idx == tab.padding_idx, 0.0)
            grads.append(gr)
            col += d
        return grads


class FusedEmbeddingBagCollection(nn.Module):
    """T embedding-bag tables, pooled in one call, updated in their backward.

    Args:
        tables: list of ``(num_embeddings, embedding_dim)`` pairs or ``TableConfig``.
        mode: ``"sum"`` or ``"mean"`` (as nn.EmbeddingBag), required: nn.EmbeddingBag
            defaults to "mean", TorchRec and FBGEMM to sum.
        optimizer: ``"sgd"``, ``"adagrad"`` (torch.optim.Adagrad's sparse rule) or
            ``"rowwise_adagrad"`` (FBGEMM's EXACT_ROWWISE_ADAGRAD).
        lr, eps: the update's hyperparameters (eps defaults: 1e-10 Adagrad as torch,
            1e-8 row-wise as FBGEMM). ``lr`` lives in ``self.optimizer``.
        initial_accumulator_value: starting value of the Adagrad sums.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (split storage, bf16 output);
            ``.float()`` / ``.bfloat16()`` / ``.to(dtype)`` convert it later, exactly.
        include_last_offset: as nn.EmbeddingBag.

    forward(indices, offsets=None, per_sample_weights=None): lists with one entry
    per table (``offsets`` may be None for 2-D ``[B, L]`` indices); returns
    ``[B, sum of dims]``, tables concatenated along dim 1 in order.
    Gradients reach ``per_sample_weights`` (mode "sum") if they require grad.
    """

    # how forward's error messages name table t's arguments
    _ARG_NAMES = ("indices[{}]", "offsets[{}]", "per_sample_weights[{}]")

    def __init__(self, tables: Sequence[Union[TableConfig, tuple]], *, mode: str,
                 optimizer="sgd", lr=0.01, eps=None, initial_accumulator_value=0.0,
                 dtype=torch.float32, include_last_offset=False):
        super().__init__()
        if mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        if optimizer not in _DEFAULT_EPS:
            raise ValueError(f"optimizer must be one of {sorted(_DEFAULT_EPS)}, got {optimizer!r}")
        if dtype not in _STORAGE:
            raise TypeError(f"dtype must be torch.float32 or torch.bfloat16 (split), got {dtype}")
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        configs = [t if isinstance(t, TableConfig) else TableConfig(*t) for t in tables]
        if not configs:
            raise ValueError("FusedEmbeddingBagCollection needs at least one table")
        self.mode, self.include_last_offset, self.dtype = mode, bool(include_last_offset), dtype
        self.optimizer_kind = optimizer
        self.embedding_bags = nn.ModuleDict()
        for i, c in enumerate(configs):
            name = c.name or f"t{i}"
            if name in self.embedding_bags:
                raise ValueError(f"duplicate table name {name!r}")
            self.embedding_bags[name] = _Table(c.num_embeddings, c.embedding_dim, dtype, optimizer,
                                               c.padding_idx, initial_accumulator_value)
        self.embedding_dims = [c.embedding_dim for c in configs]
        # the tables in order; the set is fixed once built (buffers may still be
        # replaced: the lookup and its backward read them afresh on every call)
        self._tables = list(self.embedding_bags.values())
        self._padding = [-1 if t.padding_idx is None else t.padding_idx for t in self._tables]
        eps = _DEFAULT_EPS[optimizer] if eps is None else float(eps)
        self._target = _UpdateTarget(self._tables, FusedEmbeddingOptimizer(
            [t.weight for t in self._table_list()], lr, eps, optimizer))
        self._anchor = torch.zeros((), requires_grad=True)

    @property
    def optimizer(self) -> FusedEmbeddingOptimizer:
        """Holds the tables' lr (and eps): see the module docstring."""
        return self._target.optimizer

    @optimizer.setter
    def optimizer(self, opt):
        self._target.optimizer = opt

    def _table_list(self) -> List[_Table]:
        return self._tables

    def _weights(self) -> List[torch.Tensor]:
        return [t._buffers["weight"] for t in self._tables]

    def _apply(self, fn, recurse=True):
        # .float() / .bfloat16() / .to(dtype) re-store every table exactly;
        # other dtypes and devices are refused before anything changes.
        target = _apply_target(fn, self.dtype)
        if target != self.dtype:
            if target not in _STORAGE:
                raise TypeError(f"{type(self).__name__} stores float32 or bfloat16 (split) "
                                f"tables; cannot convert to {target}")
            for table in self._tables:
                table._convert(target)
            self.dtype = target
            self.optimizer.param_groups[0]["params"] = [t.weight for t in self._tables]
        return self

    def _bags(self, t, idx, off, psw):
        """Normalises one table's (indices, offsets, per_sample_weights) to 1-D."""
        ni, no, nw = (n.format(t) for n in self._ARG_NAMES)
        for name, x in ((ni, idx), (no, off), (nw, psw)):
            if x is not None and not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
            if x is not None and x.device.type != "cpu":
                raise RuntimeError(f"{name} is on {x.device}, but the embedding tables are on "
                                   "the CPU")
        if idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{ni} must be int32 or int64, got {idx.dtype}")
        if idx.dim() == 2:
            if off is not None:
                raise ValueError(f"{no} must be None when {ni} is 2-D [B, L]")
            b, l = idx.shape
            off = torch.arange(b + int(self.include_last_offset), dtype=idx.dtype) * l
            idx = idx.reshape(-1)
            if psw is not None:
                psw = psw.reshape(-1)
        elif idx.dim() == 1:
            if off is None:
                raise ValueError(f"{no} is required when {ni} is 1-D")
        else:
            raise ValueError(f"{ni} must be 1-D (with offsets) or 2-D [B, L], got shape "
                             f"{tuple(idx.shape)}")
        if psw is not None:
            if self.mode != "sum":
                raise ValueError("per_sample_weights are only supported with mode='sum'")
            if psw.dtype != torch.float32:
                raise TypeError(f"{nw} must be float32, got {psw.dtype}")
            if tuple(psw.shape) != tuple(idx.shape):
                raise ValueError(f"{nw} has shape {tuple(psw.shape)} but {ni} has shape "
                                 f"{tuple(idx.shape)}")
        return idx.contiguous(), off.contiguous(), psw

    def forward(self, indices: List[torch.Tensor], offsets: Optional[List] = None,
                per_sample_weights: Optional[List] = None,
                out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Pooled [bags, sum of dims] in the tables' dtype, or float32 when
        out_dtype=torch.float32 (bf16 tables: the fp32 sums, unrounded; the
        backward then updates with the fp32 gradient, unrounded)."""
        # the common case (1-D contiguous CPU indices and offsets, no
        # per-sample weights) goes straight to native code; anything else is
        # checked and normalised here first
        if per_sample_weights is None and offsets is not None:
            out = _native_lookup(self, indices, offsets, None, out_dtype, False)
            if out is not None:
                return out
        n = len(self.embedding_dims)
        if len(indices) != n:
            raise ValueError(f"expected {n} index tensors (one per table), got {len(indices)}")
        offsets = [None] * n if offsets is None else list(offsets)
        if len(offsets) != n:
            raise ValueError(f"expected {n} offset tensors (one per table), got {len(offsets)}")
        if per_sample_weights is not None and len(per_sample_weights) != n:
            raise ValueError(f"expected {n} per_sample_weights tensors, got "
                             f"{len(per_sample_weights)}")
        psws = per_sample_weights or [None] * n
        if per_sample_weights is not None and any(p is None for p in psws):
            raise ValueError("per_sample_weights: give a tensor for every table or None")
        norm = [self._bags(t, indices[t], offsets[t], psws[t]) for t in range(n)]
        idx = [x[0] for x in norm]
        off = [x[1] for x in norm]
        psw = [x[2] for x in norm] if per_sample_weights is not None else None
        return _native_lookup(self, idx, off, psw, out_dtype, True)

    def table(self, i: Union[int, str]) -> _Table:
        """Table ``i`` (by position or name): ``.weight``, ``.trail``, ``.state_sum``,
        ``.master_weight()``, ``.set_master_weight(w)``."""
        return self._table_list()[i] if isinstance(i, int) else self.embedding_bags[i]


class FusedEmbeddingBag(FusedEmbeddingBagCollection):
    """One fused table with nn.EmbeddingBag's call: ``forward(input, offsets=None,
    per_sample_weights=None) -> [B, embedding_dim]``, and its default ``mode="mean"``.
    See FusedEmbeddingBagCollection for the update-in-backward contract, lr
    scheduling, state and dtype conversion.

    ``self.weight`` (and ``self.trail`` for bf16 split storage) is the table.
    """

    _ARG_NAMES = ("input", "offsets", "per_sample_weights")

    def __init__(self, num_embeddings, embedding_dim, mode="mean", optimizer="sgd", lr=0.01,
                 eps=None, initial_accumulator_value=0.0, dtype=torch.float32, padding_idx=None,
                 include_last_offset=False):
        super().__init__([TableConfig(num_embeddings, embedding_dim, "weight", padding_idx)],
                         mode=mode, optimizer=optimizer, lr=lr, eps=eps,
                         initial_accumulator_value=initial_accumulator_value, dtype=dtype,
                         include_last_offset=include_last_offset)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        # state_dict keys as nn.EmbeddingBag's: "weight" (+ "trail", "state_sum"),
        # so an nn.EmbeddingBag checkpoint loads into an fp32 FusedEmbeddingBag.
        self.register_state_dict_post_hook(_flatten_keys)
        self.register_load_state_dict_pre_hook(_nest_keys)

    @property
    def weight(self):
        return self.table(0).weight

    @property
    def trail(self):
        return self.table(0).trail

    def forward(self, input, offsets=None, per_sample_weights=None):
        if per_sample_weights is None and offsets is not None:  # the common case, as above
            out = _native_lookup(self, [input], [offsets], None, None, False)
            if out is not None:
                return out
        return super().forward([input], None if offsets is None else [offsets],
                               None if per_sample_weights is None else [per_sample_weights])


_INNER = "embedding_bags.weight."


def _flatten_keys(module, state_dict, prefix, local_metadata):
    for k in [k for k in state_dict if k.startswith(prefix + _INNER)]:
        state_dict[prefix + k[len(prefix + _INNER):]] = state_dict.pop(k)


def _nest_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    for name in ("weight", TRAIL, "state_sum"):
        if prefix + name in state_dict:
            state_dict[prefix + _INNER + name] = state_dict.pop(prefix + name)
