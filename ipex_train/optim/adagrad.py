"""Fused Adagrad, a drop-in for torch.optim.Adagrad (dense gradients)."""
import torch

from ._base import FusedOptimizer, check_dense, check_hyper, float_of


class Adagrad(FusedOptimizer):
    """Adagrad, as ``torch.optim.Adagrad``, in one native multi-tensor kernel per group.

    Same constructor and semantics as torch's (``lr_decay``, ``weight_decay``,
    ``initial_accumulator_value``, ``eps``, ``maximize``); ``foreach``/``fused``
    are accepted and ignored, ``differentiable=True`` is refused. As torch
    does, the state (``step`` float32 scalar tensor, ``sum`` fp32) is created
    in the constructor for every param. Sparse gradients (as
    ``nn.Embedding(sparse=True)`` makes them) follow torch's sparse Adagrad.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        check_hyper(type(self).__name__, lr=lr, eps=eps, weight_decay=weight_decay,
                    differentiable=differentiable)
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                for key in ("step", "sum"):
                    state[key] = self._init_state(p, state, key, group)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def _init_state(self, p, state, key, group=None):
        if key == "step":
            return torch.tensor(0.0, dtype=torch.float32)
        init = 0.0 if group is None else float(group["initial_accumulator_value"])
        return torch.full_like(p, init, dtype=torch.float32)

    def _step_group(self, group, params, grads, trails, check_only):
        steps, sums = self._state_lists(
            params, ("step", "sum"), lambda p, s, k: self._init_state(p, s, k, group))
        if check_only:
            return check_dense(params, grads, trails, {"sum": sums}, steps)
        torch.ops.ipex_train.adagrad_step_(
            params, grads, sums, steps, trails, float_of(group["lr"]), float(group["lr_decay"]),
            float(group["weight_decay"]), float(group["eps"]), bool(group["maximize"]))

    # Sparse grads (nn.Embedding(sparse=True)): torch's sparse Adagrad, touched
    # rows only: step += 1; clr = lr / (1 + (step - 1) * lr_decay);
    # sum += g^2, p -= clr * g / (sqrt(sum) + eps).
    _row_rule = "adagrad"
    _row_state = ("sum",)

    def _check_row_policy(self, group, p, grad):
        if group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _row_args(self, group, p, state):
        for key in ("step", "sum"):
            if key not in state:
                self._new_state(p, state, key, self._init_state(p, state, key, group))
        step = float(state["step"]) + 1
        clr = float_of(group["lr"]) / (1 + (step - 1) * group["lr_decay"])
        return (state["sum"], None, clr, float(group["eps"]), 0.0, 0.0, 0.0,
                bool(group["maximize"]))

    def _row_done(self, group, p, state):
        state["step"] += 1
