"""fp32 checkpoints of split-bf16 models.

A model prepared by ``ipex_train.optimize(..., dtype=torch.bfloat16)`` holds
the top halves of its fp32 master weights; its optimizer holds the low halves
(``"trail"``). Two ways to checkpoint it:

* exact resume in the same setup: save ``model.state_dict()`` (bf16 tops) and
  ``optimizer.state_dict()`` (trails and fp32 state); load both back. The
  optimizer's ``load_state_dict`` keeps fp32 state fp32 and trails int16.
* portable fp32 weights: ``fp32_state_dict(model, optimizer)`` joins the two
  halves into the exact fp32 master weights (load into any fp32 model);
  ``load_fp32_state_dict(model, optimizer, sd)`` splits fp32 weights back
  into an optimized bf16 model, exactly.
"""
import torch

from . import bf16_split
from .bf16_split import TRAIL
from .sparse.embedding import tables_as_fp32


def _trail(optimizer, p):
    if optimizer is None or p not in optimizer.state:
        return None
    st = optimizer.state[p]
    return st.get(TRAIL) if isinstance(st, dict) else None


def _check_optimizer(model, optimizer, who):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{who}: optimizer must be a torch.optim.Optimizer or None, "
                        f"got {type(optimizer).__name__}")


def fp32_state_dict(model, optimizer=None):
    """``model.state_dict()`` with every bf16 parameter as fp32.

    A split parameter (bf16 top with a trail in `optimizer`'s state) becomes
    its exact fp32 master weight; a bf16 parameter without a trail becomes
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
            t = _trail(optimizer, v)
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
        t = _trail(optimizer, target) if id(target) in params else None
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
