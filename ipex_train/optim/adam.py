"""Fused Adam and AdamW, drop-ins for torch.optim.Adam / torch.optim.AdamW."""
import torch

from ._base import FusedOptimizer, check_dense, check_hyper, float_of, init_step_and_zeros


class Adam(FusedOptimizer):
    """Adam, as ``torch.optim.Adam``, in one native multi-tensor kernel per group.

    Same constructor and semantics as torch's (``amsgrad``, ``maximize``,
    ``decoupled_weight_decay``); ``foreach``/``fused``/``capturable`` are
    accepted and ignored (this optimizer is always fused, on the CPU), and
    ``differentiable=True`` is refused. State per param, as torch's: ``step``
    (float32 scalar tensor), ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
    ``max_exp_avg_sq`` (fp32, also for split-bf16 params). Each param's own
    step count sets its bias correction, so params added or first given a
    gradient later still update as torch would.
    """

    _decoupled_default = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=None):
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        check_hyper(type(self).__name__, lr=lr, eps=eps, weight_decay=weight_decay, betas=betas,
                    differentiable=differentiable)
        betas = (float_of(betas[0]), float_of(betas[1]))
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("decoupled_weight_decay", self._decoupled_default)

    def _step_group(self, group, params, grads, trails, check_only):
        amsgrad = bool(group["amsgrad"])
        keys = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        lists = self._state_lists(params, keys, init_step_and_zeros)
        if check_only:
            return check_dense(params, grads, trails, dict(zip(keys[1:], lists[1:])), lists[0])
        beta1, beta2 = group["betas"]
        torch.ops.ipex_train.adam_step_(
            params, grads, lists[1], lists[2], lists[3] if amsgrad else [], lists[0], trails,
            float_of(group["lr"]), float_of(beta1), float_of(beta2), float(group["eps"]),
            float(group["weight_decay"]), amsgrad, bool(group["maximize"]),
            bool(group["decoupled_weight_decay"]))


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay
    (``w *= 1 - lr * weight_decay`` before the Adam update), default
    ``weight_decay=0.01``."""

    _decoupled_default = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True)
