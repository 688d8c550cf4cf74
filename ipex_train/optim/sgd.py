"""Fused SGD, a drop-in for torch.optim.SGD."""
import torch

from ._base import _EMPTY, FusedOptimizer, check_dense, float_of


class SGD(FusedOptimizer):
    """SGD with momentum, as ``torch.optim.SGD``, in one native multi-tensor kernel.

    Same constructor and semantics as torch's (``foreach``/``fused`` are
    accepted and ignored: this optimizer is always fused). Works on fp32 params
    and on split-bf16 params made by ``ipex_train.optimize``.
    State per param, as torch's: ``momentum_buffer`` (fp32) when momentum != 0.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if differentiable:
            raise ValueError("ipex_train.optim.SGD: differentiable=True is not supported")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group, params, grads, trails, check_only):
        momentum = float(group["momentum"])
        st = self.state
        bufs = [] if momentum == 0.0 else [st.get(p, _EMPTY).get("momentum_buffer") for p in params]
        have = [i for i, b in enumerate(bufs) if b is not None]
        if check_only or len(have) != len(bufs):  # buffers to check, or two calls below
            check_dense(params, grads, trails)
            if have:
                check_dense([params[i] for i in have], [grads[i] for i in have],
                            [trails[i] for i in have] if trails else [],
                            {"momentum_buffer": [bufs[i] for i in have]})
            if check_only:
                return
        hyper = (float_of(group["lr"]), float(group["weight_decay"]), momentum,
                 float(group["dampening"]), bool(group["nesterov"]), bool(group["maximize"]))
        if len(have) == len(bufs):
            torch.ops.ipex_train.sgd_step_(params, grads, bufs, trails, *hyper, False)
            return
        # Params without a buffer yet start it from their gradient (torch's rule):
        # they run as a separate call with first_step=True (all checked above).
        new = [i for i, b in enumerate(bufs) if b is None]
        for i in new:
            bufs[i] = torch.empty_like(params[i], dtype=torch.float32)
        for idx, first in ((have, False), (new, True)):
            if idx:
                torch.ops.ipex_train.sgd_step_(
                    [params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx],
                    [trails[i] for i in idx] if trails else [], *hyper, first)
        for i in new:  # stored once written: a refused step adds no state
            self._state_of(params[i])["momentum_buffer"] = bufs[i]

    # Sparse grads (nn.Embedding(sparse=True)): as torch, no momentum or weight decay.
    _row_rule = "sgd"

    def _check_row_policy(self, group, p, grad):
        if group["momentum"] != 0:
            raise RuntimeError("SGD: momentum is not supported with sparse gradients")
        if group["weight_decay"] != 0:
            raise RuntimeError("SGD: weight_decay is not supported with sparse gradients")

    def _row_args(self, group, p, state):
        return (None, None, float_of(group["lr"]), 0.0, 0.0, 0.0, 0.0, bool(group["maximize"]))
