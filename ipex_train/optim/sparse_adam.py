"""Lazy Adam for sparse gradients, a drop-in for torch.optim.SparseAdam."""
import torch

from ..sparse import functional as F

TRAIL = "trail"


class SparseAdam(torch.optim.Optimizer):
    """``torch.optim.SparseAdam`` in one native call per parameter.

    Only the rows present in a gradient update their moments and weights
    ("lazy" Adam); duplicate rows are summed first, as torch coalesces them.
    Same constructor, state (``step``, ``exp_avg``, ``exp_avg_sq``) and errors as
    torch's: dense gradients are rejected. Parameters are fp32, or split bf16
    (bfloat16 with an int16 ``"trail"`` in their state); moments are fp32.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            work = [p for p in group["params"] if p.grad is not None]
            for p in work:  # reject before anything is written
                if not p.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please "
                                       "consider Adam instead")
            beta1, beta2 = group["betas"]
            for p in work:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32)
                state["step"] += 1
                F.sparse_adam_(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                               group["lr"], beta1, beta2, group["eps"], group["maximize"],
                               state.get(TRAIL))
        return loss
