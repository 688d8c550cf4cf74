"""Lazy Adam for sparse gradients, a drop-in for torch.optim.SparseAdam."""
import torch

from ._base import float_of
from ._row_update import RowUpdateOptimizer
from ..sparse.functional import adam_step_size


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

    _row_rule = "adam"
    _row_state = ("exp_avg", "exp_avg_sq")

    def _row_args(self, group, p, state):
        if "step" not in state:
            self._new_state(p, state, "step", 0)
            for key in self._row_state:
                self._new_state(p, state, key, torch.zeros(p.shape, dtype=torch.float32))
        lr = float_of(group["lr"])
        beta1, beta2 = (float_of(b) for b in group["betas"])
        return (state["exp_avg"], state["exp_avg_sq"], lr, float(group["eps"]), beta1, beta2,
                adam_step_size(lr, beta1, beta2, state["step"] + 1), bool(group["maximize"]))

    def _row_done(self, group, p, state):
        state["step"] += 1
