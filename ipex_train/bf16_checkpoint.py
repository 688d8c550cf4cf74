"""fp32 checkpoints of split-bf16 models.

A model prepared by ``ipex_train.optimize(..., dtype=torch.bfloat16)`` holds
the top halves of its fp32 master weights; its optimizer holds the low halves
(``"trail"``). Two ways to checkpoint it:

* exact resume in the same setup: save ``model.state_dict()`` (bf16 tops) and
  ``optimizer.state_dict()`` (trails and fp32 state); load both back. The
  optimizer's ``load_state_dict`` keeps fp32 state fp32 and trails int16.
* portable fp32 weights: ``fp32_state_dict(model)`` joins the two halves
  into the exact fp32 master weights (load into any fp32 model); fp32 weights
  load back exactly with the ordinary ``model.load_state_dict(sd)`` (a load
  hook installed by ``optimize`` splits them and resets the trails) or with
  ``load_fp32_state_dict(model, optimizer, sd)``.

Which optimizer holds a param's trail is recorded when the trail is made
(``optimize``, ``add_param_group``, ``load_state_dict``), so the functions
here find it without being given the optimizer.
"""
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import bf16_split
from .bf16_split import TRAIL
from .sparse.embedding import tables_as_fp32

_HOLDER = WeakIdKeyDictionary()  # split param -> weakref to the optimizer holding its trail


def record_trail_holder(optimizer, p):
    """Notes that `optimizer`'s state holds the trail of split param `p`."""
    _HOLDER[p] = weakref.ref(optimizer)


def trail_of(p, optimizer=None):
    """The int16 trail of split param `p`: from `optimizer`'s state if given,
    else from the optimizer last recorded for it; None if there is none."""
    if optimizer is None:
        ref = _HOLDER.get(p)
        optimizer = ref() if ref is not None else None
    if optimizer is None:
        return None
    st = optimizer.state.get(p)
    return st.get(TRAIL) if isinstance(st, dict) else None


def _split_fp32_on_load(module, state_dict, prefix, *_):
    """Module load pre-hook: a float32 value for a split bf16 param becomes its
    exact master weight (bf16 top loaded by torch, trail reset here). bf16
    values load as they are (with the optimizer's trails: exact resume)."""
    for name, p in module._parameters.items():
        if p is None or p.dtype != torch.bfloat16:
            continue
        v = state_dict.get(prefix + name)
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() \
                or v.dtype == torch.bfloat16 or v.shape != p.shape:
            continue  # torch loads it (or reports the mismatch) as usual
        trail = trail_of(p)
        if trail is None:
            continue  # not split: torch rounds to bf16
        top, low = bf16_split.split(v.detach().to(device="cpu", dtype=torch.float32))
        state_dict[prefix + name] = top
        with torch.no_grad():
            trail.copy_(low)


def install_load_hooks(model):
    """Makes ``model.load_state_dict`` load fp32 weights into split params exactly."""
    for m in model.modules():
        if m._parameters and not getattr(m, "_ipex_train_split_hook", False):
            m.register_load_state_dict_pre_hook(_split_fp32_on_load)
            m._ipex_train_split_hook = True


def _check_optimizer(model, optimizer, who):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{who}: optimizer must be a torch.optim.Optimizer or None, "
                        f"got {type(optimizer).__name__}")


def fp32_state_dict(model, optimizer=None):
    """``model.state_dict()`` with every bf16 parameter as fp32.

    A split parameter (bf16 top with a trail in the optimizer's state; the
    optimizer is found if not given) becomes its exact fp32 master weight; a bf16 parameter without a trail becomes
    its bf16 value widened to fp32 (exact). Buffers and other parameters are
    as ``state_dict`` gives them. The tensors are new, not views of the model.
    """
    _check_optimizer(model, optimizer, "fp32_state_dict")
    with tables_as_fp32():  # fused bf16 tables: exact fp32 weight, no trail
        sd = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    out = type(sd)()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and id(v) in params and v.dtype == torch.bfloat16:
            t = trail_of(v, optimizer)
            out[k] = bf16_split.join(v, t) if t is not None else v.detach().to(torch.float32)
        else:
            out[k] = v.detach() if isinstance(v, torch.Tensor) else v
    if hasattr(sd, "_metadata"):
        out._metadata = sd._metadata
    return out


def load_fp32_state_dict(model, optimizer, state_dict, strict=True):
    """Loads fp32 weights into a model prepared by ``ipex_train.optimize``, exactly.

    For each split parameter the fp32 value is split into the bf16 top (the
    parameter) and the trail (in `optimizer`'s state), so
    ``fp32_state_dict(model, optimizer)`` afterwards returns the loaded values
    bit for bit. bf16 parameters without a trail get the value rounded to
    nearest bf16; everything else loads as ``model.load_state_dict`` does.
    Values of split parameters are converted to fp32 first (exact for fp32
    and bf16 inputs). Optimizer state other than the trails is untouched.

    Checks keys (with `strict`), shapes and dtypes before writing anything.
    Returns ``model.load_state_dict``'s result (missing/unexpected keys).
    """
    who = "load_fp32_state_dict"
    _check_optimizer(model, optimizer, who)
    with tables_as_fp32():  # fused tables take fp32 weights (split exactly on load)
        mine = model.state_dict(keep_vars=True)
    if strict:
        missing = [k for k in mine if k not in state_dict]
        unexpected = [k for k in state_dict if k not in mine]
        if missing or unexpected:
            raise KeyError(f"{who}: state dict does not match the model: missing keys "
                           f"{missing}, unexpected keys {unexpected}")
    params = {id(p) for p in model.parameters()}
    split_tops = {}
    for k, v in state_dict.items():
        target = mine.get(k)
        if target is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{who}: {k!r} must be a tensor, got {type(v).__name__}")
        if v.shape != target.shape:
            raise ValueError(f"{who}: {k!r} has shape {tuple(v.shape)} but the model's "
                             f"has {tuple(target.shape)}")
        if id(target) in params and target.dtype == torch.bfloat16 and not v.is_floating_point():
            raise TypeError(f"{who}: {k!r} must be floating point, got {v.dtype}")
        t = trail_of(target, optimizer) if id(target) in params else None
        if t is not None:
            split_tops[k] = (target, t, v.detach().to(torch.float32))
    sd = dict(state_dict)
    for k, (_, _, w) in split_tops.items():
        sd[k] = bf16_split.split(w)[0]
    result = model.load_state_dict(sd, strict=strict)
    with torch.no_grad():
        for target, t, w in split_tops.values():
            t.copy_(bf16_split.split(w)[1])
    return result
