"""Fused LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning")."""
import torch

from ._base import FusedOptimizer, check_dense, check_hyper, float_of, init_step_and_zeros


class Lamb(FusedOptimizer):
    """LAMB: Adam moments with a per-tensor trust ratio (layer-wise adaptive lr).

    Per param tensor, at step t::

        m = beta1 * m + (1 - beta1) * g          v = beta2 * v + (1 - beta2) * g^2
        m_hat = m / (1 - beta1^t)                v_hat = v / (1 - beta2^t)
        r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        ratio = ||w|| / ||r||  (1 if either norm is 0), clipped to max_trust_ratio
        w = w - lr * ratio * r

    ``bias_correction=False`` drops the hats; ``max_trust_ratio=None`` disables
    the clip. The norms are summed in fp64 in a fixed order, so the result does
    not depend on the thread count. State per param: ``step`` (float32 scalar
    tensor), ``exp_avg``, ``exp_avg_sq`` (fp32). One native call per group.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0,
                 max_trust_ratio=10.0, bias_correction=True, *, maximize=False, foreach=None,
                 differentiable=False, fused=None):
        check_hyper(type(self).__name__, lr=lr, eps=eps, weight_decay=weight_decay, betas=betas,
                    differentiable=differentiable)
        if max_trust_ratio is not None and not 0.0 <= max_trust_ratio:
            raise ValueError(f"Invalid max_trust_ratio value: {max_trust_ratio}")
        betas = (float_of(betas[0]), float_of(betas[1]))
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        max_trust_ratio=max_trust_ratio, bias_correction=bias_correction,
                        maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group, params, grads, trails, check_only):
        steps, ms, vs = self._state_lists(params, ("step", "exp_avg", "exp_avg_sq"),
                                          init_step_and_zeros)
        if check_only:
            return check_dense(params, grads, trails, {"exp_avg": ms, "exp_avg_sq": vs}, steps)
        beta1, beta2 = group["betas"]
        mtr = group["max_trust_ratio"]
        torch.ops.ipex_train.lamb_step_(
            params, grads, ms, vs, steps, trails, float_of(group["lr"]), float_of(beta1),
            float_of(beta2), float(group["eps"]), float(group["weight_decay"]),
            None if mtr is None else float(mtr), bool(group["bias_correction"]),
            bool(group["maximize"]))
