"""Split-bf16 storage of fp32 weights, in plain PyTorch (no native code).

One fp32 master weight ``w`` is kept as two 16-bit halves of its bit
pattern; the model holds the top half as its bfloat16 parameter, the
optimizer holds the low half as an int16 ``"trail"``::

    w (float32) bits:  [ 31 ............ 16 | 15 ............. 0 ]
                         top: bf16 param      trail: int16 state
                         (what forward reads) (only the optimizer reads it)

The top half is ``w`` *truncated* to bf16 (not rounded). Why truncation:

* the split is an exact bit partition: ``join(*split(w))`` is ``w`` bit for
  bit for every value, NaN, Inf, -0.0 and subnormals included, with no carry
  or special case - a rounded top would need the trail to hold a signed
  correction, and rounding up can overflow a finite ``w`` to Inf;
* it is the same pure bit move in every kernel at every ISA level and here;
* the optimizer updates the joined fp32 value with fp32 math, so nothing
  accumulates in bf16 and nothing drifts: the fp32 master evolves exactly as
  in an fp32 run. Only the forward/backward pass sees the truncated weight,
  at most one bf16 ulp below |w| (round-to-nearest would be half an ulp);
  that is the same order as the bf16 rounding of activations under autocast.

These helpers are exact on little-endian machines (every CPU torch runs on
here); they are used by ``ipex_train.optimize`` and the checkpoint functions.
"""
import sys

import torch

TRAIL = "trail"  # the optimizer-state key (and table buffer name) of the low halves
TRAIL_DTYPE = torch.int16

if sys.byteorder != "little":  # pragma: no cover - x86/ARM are little-endian
    raise ImportError("ipex_train's split-bf16 layout assumes a little-endian CPU")


def split(w: torch.Tensor):
    """Splits an fp32 tensor into (top: bfloat16, trail: int16) of the same shape.

    Both are new tensors with `w`'s memory layout (contiguous for a contiguous
    `w`, channels_last for a channels_last one; elementwise ops keep dense strides).
    """
    if w.dtype != torch.float32:
        raise TypeError(f"split expects a float32 tensor, got {w.dtype}")
    bits = w.detach().view(torch.int32)
    top = (bits >> 16).to(torch.int16).view(torch.bfloat16)
    trail = (bits & 0xFFFF).to(TRAIL_DTYPE)  # int32 -> int16 keeps the low 16 bits
    return top, trail


def join(top: torch.Tensor, trail: torch.Tensor) -> torch.Tensor:
    """The fp32 tensor whose bits are (top, trail): the inverse of :func:`split`.
    A new tensor with `top`'s memory layout."""
    if top.dtype != torch.bfloat16:
        raise TypeError(f"join expects a bfloat16 top half, got {top.dtype}")
    if trail.dtype != TRAIL_DTYPE:
        raise TypeError(f"join expects an int16 trail, got {trail.dtype}")
    if top.shape != trail.shape:
        raise ValueError(f"join: top has shape {tuple(top.shape)} but trail has {tuple(trail.shape)}")
    hi = top.detach().view(torch.int16).to(torch.int32) << 16
    return (hi | (trail.detach().to(torch.int32) & 0xFFFF)).view(torch.float32)


def write_split_(top: torch.Tensor, trail: torch.Tensor, w: torch.Tensor) -> None:
    """Stores fp32 values `w` into an existing (top, trail) pair, in place."""
    t, r = split(w.to(torch.float32))
    top.copy_(t)
    trail.copy_(r)
