"""``ipex_train.optimize``: fused optimizers and split-bf16 weights for a model."""
import inspect
import warnings

import torch
from torch import nn

from . import bf16_split
from . import optim as _optim
from .bf16_checkpoint import install_load_hooks, record_trail_holder
from .bf16_split import TRAIL
from .optim._base import FusedOptimizer

# torch.optim classes we convert, by exact type (a user subclass may change
# step(), which we could not reproduce), to the name of our class.
_TORCH_OPTIMIZERS = {
    torch.optim.SGD: "SGD",
    torch.optim.Adam: "Adam",
    torch.optim.AdamW: "AdamW",
    torch.optim.Adagrad: "Adagrad",
    torch.optim.SparseAdam: "SparseAdam",
}
# Group keys that only pick torch's implementation (ours is always fused).
_IMPL_KEYS = ("foreach", "fused", "capturable")

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
# Normalization layers whose params stay fp32 with keep_batchnorm_fp32 (see optimize).
_NORMS = _BATCHNORM + (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                       nn.RMSNorm)


def optimize(model, optimizer=None, dtype=torch.float32, *, keep_batchnorm_fp32=True):
    """Prepares `model` (and its optimizer) for fast CPU training.

    ::

        model, optimizer = ipex_train.optimize(model, optimizer, dtype=torch.bfloat16)
        for x, y in data:                       # the fp32 training loop, unchanged
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    Args:
        model: an ``nn.Module`` on the CPU, not yet wrapped in
            DistributedDataParallel (wrap the returned model afterwards).
        optimizer: ``torch.optim.SGD/Adam/AdamW/Adagrad`` (exact classes) or
            one of ``ipex_train.optim``'s, over parameters of `model`; or None.
        dtype: ``torch.float32`` keeps fp32 weights and only swaps in our fused
            optimizer; ``torch.bfloat16`` stores weights split (below).
        keep_batchnorm_fp32: the weights and biases of normalization layers
            (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm) stay fp32
            (default). torch's CPU batch_norm runs bf16 weights only with bf16
            running statistics, which would lose precision, and layer_norm /
            group_norm refuse bf16 weights for an fp32 input (the residual
            sum ``x + f(x)`` of a Transformer block under autocast is fp32);
            with fp32 weights they take fp32 or bf16 input. An fp32 param
            costs the same 4 bytes as a split one and our optimizers take
            mixed groups. With False they are split too and BatchNorm running
            stats become bf16.

    Returns ``(model, new_optimizer)``, or just the model when `optimizer` is None.

    **In place.** The model is converted in place and returned (the same
    object). Its ``nn.Parameter`` objects are kept and only their ``.data``
    changes, so tied weights and any reference the user holds to a parameter
    stay valid. Gradients of converted parameters are cleared (their dtype
    changes). The returned optimizer is a new object of our fused class over
    those same parameters, with the old one's param groups, hyperparameters
    and state (momentum, exp_avg, step, ...; moved, not copied). The old
    optimizer must not be used again: it gets a step pre-hook that raises, so
    it can never update the converted weights behind the new optimizer's back.

    **bf16** (``dtype=torch.bfloat16``): every floating-point parameter
    (Linear, Conv, Embedding/EmbeddingBag, norms, biases, custom
    ``nn.Parameter``s) becomes bfloat16. For parameters the optimizer trains,
    the bf16 value is the top half of the fp32 master weight and the optimizer
    keeps the low half as int16 state ``"trail"`` (see
    :mod:`ipex_train.bf16_split` for the layout and why the top is a
    truncation): 4 bytes per parameter in all, and no fp32 copy exists. Each
    step rebuilds the fp32 value, updates it in fp32 with fp32 optimizer state
    and splits it again, so the master weights match an fp32 run bit for bit
    when fed the same gradients. Parameters outside the optimizer (frozen, or
    `optimizer` None) have no trail to keep and are rounded to nearest bf16.
    Nothing traces ``forward``: only parameters change, so models called
    through any method work.

    Requirements of the bf16 model: run it under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` with fp32 inputs, or
    without autocast with bf16 inputs. Normalization layers keep fp32 weights
    (``keep_batchnorm_fp32``) and so take fp32 or bf16 input, as in
    Transformer blocks under autocast. Gradients arrive in bf16 and are applied in
    fp32 (accumulated over micro-batches in bf16: see README). Save with
    ``optimizer.state_dict()`` (holds the trails) plus ``model.state_dict()``,
    or as fp32 with :func:`ipex_train.fp32_state_dict`. fp32 weights load
    exactly with ``model.load_state_dict`` (a hook installed here splits them
    and resets the trails) or :func:`ipex_train.load_fp32_state_dict`. Params
    keep their memory format (e.g. channels_last). Build lr schedulers on the
    returned optimizer (one built before is carried over, with a warning).
    Sparse gradients (``sparse=True`` embeddings) go to the native sparse
    kernels with SGD (no momentum/weight decay, as torch) and Adagrad, in fp32
    or split bf16 (exact, no coalesce); other optimizers raise before writing
    anything, as torch's do. For the fastest embedding training use
    :class:`ipex_train.sparse.FusedEmbeddingBagCollection`, which updates in
    backward.

    ``dtype=torch.float32`` turns split parameters back into fp32 exactly and
    bf16 ones into fp32; float64/float16 parameters are an error in both modes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("optimize: call ipex_train.optimize on the model before wrapping it in "
                        "DistributedDataParallel, and wrap the returned model")
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"optimize: dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    if optimizer is not None:
        cls, defaults, groups = _translate(optimizer)
        _check_params_in_model(model, optimizer)
    trails = _old_trails(optimizer)
    train_ids = set() if optimizer is None else {
        id(p) for g in optimizer.param_groups for p in g["params"]}
    keep_fp32 = _norm_param_ids(model) if keep_batchnorm_fp32 else set()
    plan = _plan(model, dtype, trails, train_ids, keep_fp32)
    new = None
    if optimizer is not None:
        new = cls(groups, **defaults)  # validates hyperparameters before any write
    new_trails = _convert(plan, trails)
    if dtype == torch.bfloat16 and not keep_batchnorm_fp32:
        _batchnorm_stats_to_bf16(model)
    if dtype == torch.bfloat16:
        install_load_hooks(model)
    if optimizer is None:
        return model
    _move_state(optimizer, new, new_trails)
    for p, st in new.state.items():
        if TRAIL in st:
            record_trail_holder(new, p)
    optimizer.register_step_pre_hook(_stale_optimizer_hook)
    _carry_schedulers_over(optimizer, new)
    return model, new


def _translate(optimizer):
    """(our class, defaults, param groups) for `optimizer`; raises on what we cannot do."""
    t = type(optimizer)
    if t in _TORCH_OPTIMIZERS:
        name = _TORCH_OPTIMIZERS[t]
    elif isinstance(optimizer, FusedOptimizer) and getattr(_optim, t.__name__, None) is t:
        name = t.__name__
    else:
        raise TypeError(
            f"optimize: cannot convert a {t.__module__}.{t.__name__}; supported: torch.optim."
            "SGD/Adam/AdamW/Adagrad/SparseAdam and the classes of ipex_train.optim")
    if t is torch.optim.Adam and any(g.get("decoupled_weight_decay") for g in optimizer.param_groups):
        if not all(g.get("decoupled_weight_decay") for g in optimizer.param_groups):
            raise ValueError("optimize: Adam groups mix decoupled_weight_decay True and False")
        name = "AdamW"
    cls = getattr(_optim, name, None)
    if cls is None:
        raise TypeError(f"optimize: ipex_train.optim has no fused {name} yet")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    known = set(optimizer.defaults)

    def fix(d, where):
        out = {}
        for k, v in d.items():
            if k == "params" or k in _IMPL_KEYS:
                continue
            if k == "decoupled_weight_decay" and name == "AdamW":
                continue
            if k == "differentiable":
                if v:
                    raise ValueError(f"optimize: {where} has differentiable=True, which "
                                     f"ipex_train.optim.{name} does not support")
                continue
            if k in known and k not in accepted:
                if v:
                    raise ValueError(f"optimize: {where} sets {k}={v!r}, which "
                                     f"ipex_train.optim.{name} does not support")
                continue
            out[k] = v  # our hyperparameter, or a user key (e.g. initial_lr): kept
        return out

    defaults = {k: v for k, v in fix(optimizer.defaults, "the optimizer's defaults").items()
                if k in accepted}
    groups = []
    for i, g in enumerate(optimizer.param_groups):
        ng = fix(g, f"param group {i}")
        ng["params"] = list(g["params"])
        groups.append(ng)
    return cls, defaults, groups


def _check_params_in_model(model, optimizer):
    in_model = {id(p) for p in model.parameters()}
    for gi, g in enumerate(optimizer.param_groups):
        for pi, p in enumerate(g["params"]):
            if id(p) not in in_model:
                raise ValueError(
                    f"optimize: param group {gi}, param {pi} (shape {tuple(p.shape)}, {p.dtype}) "
                    "is not a parameter of the model: the optimizer must be built over "
                    "model.parameters()")


def _old_trails(optimizer):
    """id(param) -> trail for params already split by one of our optimizers."""
    if optimizer is None or not isinstance(optimizer, FusedOptimizer):
        return {}
    return {id(p): st[TRAIL] for p, st in optimizer.state.items()
            if isinstance(st, dict) and st.get(TRAIL) is not None}


def _norm_param_ids(model):
    return {id(p) for m in model.modules() if isinstance(m, _NORMS)
            for p in m.parameters(recurse=False)}


def _plan(model, dtype, trails, train_ids, keep_fp32):
    """[(name, param, action)] for every floating param; raises before any write."""
    plan = []
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        if p.device.type != "cpu":
            raise ValueError(f"optimize: parameter {name!r} is on {p.device}; move the model "
                             "to the CPU first")
        split = id(p) in trails
        if p.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"optimize: parameter {name!r} is {p.dtype}; expected float32 (or "
                            "bfloat16) parameters")
        if split and p.dtype != torch.bfloat16:
            raise ValueError(f"optimize: parameter {name!r} has a trail but is {p.dtype}")
        if dtype == torch.float32 or id(p) in keep_fp32:
            action = "join" if split else ("widen" if p.dtype == torch.bfloat16 else "keep")
        elif id(p) in train_ids:
            action = "keep_split" if split else (
                "split" if p.dtype == torch.float32 else "zero_trail")
        else:  # not trained by the optimizer (trails only exist for trained params)
            action = "round" if p.dtype == torch.float32 else "keep"
        plan.append((name, p, action))
    return plan


def _convert(plan, old_trails):
    """Applies the plan in place; returns id(param) -> trail for newly split params."""
    trails = {}
    for _, p, action in plan:
        if action in ("keep", "keep_split"):
            continue  # a kept split param's trail comes over with the old state
        if action == "split":
            top, trails[id(p)] = bf16_split.split(p.detach())
            new = top
        elif action == "zero_trail":
            new = p.detach().contiguous()
            trails[id(p)] = torch.zeros_like(p, dtype=bf16_split.TRAIL_DTYPE)
        elif action == "join":
            new = bf16_split.join(p.detach(), old_trails[id(p)])
        elif action == "widen":
            new = p.detach().to(torch.float32)
        else:  # round
            new = p.detach().to(torch.bfloat16)
        p.grad = None
        p.data = new
    return trails


def _batchnorm_stats_to_bf16(model):
    for m in model.modules():
        if isinstance(m, _BATCHNORM):
            for name in ("running_mean", "running_var"):
                b = getattr(m, name, None)
                if b is not None and b.dtype == torch.float32:
                    setattr(m, name, b.to(torch.bfloat16))


def _move_state(old, new, new_trails):
    """Loads the old optimizer's state into `new`, with trails added or dropped."""
    sd = old.state_dict()
    ours = [p for g in new.param_groups for p in g["params"]]
    ids = [pid for g in sd["param_groups"] for pid in g["params"]]
    state = {}
    for pid, p in zip(ids, ours):
        st = {k: v for k, v in sd["state"].get(pid, {}).items()}
        if p.dtype != torch.bfloat16:
            st.pop(TRAIL, None)
        elif id(p) in new_trails:
            st[TRAIL] = new_trails[id(p)]
        if st:
            state[pid] = st
    groups = [dict(ng, params=list(sg["params"]))
              for ng, sg in zip(new.state_dict()["param_groups"], sd["param_groups"])]
    new.load_state_dict({"state": state, "param_groups": groups})


def _carry_schedulers_over(old, new):
    """An lr scheduler built on `old` before optimize() keeps working: the old
    optimizer's param groups become the new one's (the same dicts), so what a
    scheduler writes there (lr, initial_lr, ...) reaches the new optimizer."""
    if not hasattr(old.step, "_wrapped_by_lr_sched"):
        return
    warnings.warn(
        "optimize: a learning-rate scheduler was built on this optimizer before "
        "ipex_train.optimize; it now drives the returned optimizer's param groups, but build "
        "schedulers on the optimizer that optimize returns", UserWarning, stacklevel=3)
    old.param_groups = new.param_groups
    old._opt_called = True  # the scheduler's order check watches the old optimizer's step


def _stale_optimizer_hook(optimizer, args, kwargs):
    raise RuntimeError(
        f"this {type(optimizer).__name__} was converted by ipex_train.optimize and must not be "
        "used any more (its parameters changed storage); step the optimizer that optimize returned")
