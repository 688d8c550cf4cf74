"""Lazy Adam for sparse gradients, a drop-in for torch.optim.SparseAdam."""
import torch

from ._fused import TRAIL, RowUpdateOptimizer, float_of
from ..sparse import functional as F


class SparseAdam(RowUpdateOptimizer):
    """``torch.optim.SparseAdam`` in one native call per parameter.

    Only the rows present in a gradient update their moments and weights
    ("lazy" Adam); duplicate rows are summed first, as torch coalesces them.
    Same constructor, state (``step`` int, ``exp_avg``, ``exp_avg_sq``) and
    errors as torch's: dense gradients are rejected. Parameters are fp32, or
    split bf16 (bfloat16 with an int16 ``"trail"`` in their state); moments are
    fp32. Every param of every group is checked before any is updated.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))

    def _state_shapes(self, p):
        return {"exp_avg": p.shape, "exp_avg_sq": p.shape}

    def _update(self, group, p, grad, state):
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        F.sparse_adam_(p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                       float_of(group["lr"]), beta1, beta2, group["eps"], group["maximize"],
                       state.get(TRAIL))
