"""Fused SGD, a drop-in for torch.optim.SGD."""
import torch

from ._fused import FusedOptimizer, float_of
from ..sparse import optim_rules as _sparse


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

    def _step_group(self, group, params, grads, trails):
        momentum = float(group["momentum"])
        hyper = (float_of(group["lr"]), float(group["weight_decay"]), momentum,
                 float(group["dampening"]), bool(group["nesterov"]), bool(group["maximize"]))
        if momentum == 0.0:
            torch.ops.ipex_train.sgd_step_(params, grads, [], trails, *hyper, False)
            return
        # Params without a buffer yet start it from their gradient (torch's rule):
        # they run as a separate call with first_step=True.
        st = self.state
        bufs = [st[p].get("momentum_buffer") for p in params]
        if all(b is not None for b in bufs):
            torch.ops.ipex_train.sgd_step_(params, grads, bufs, trails, *hyper, False)
            return
        # Two calls: check all of it first, so the second cannot fail after the first wrote.
        torch.ops.ipex_train.check_dense_params(params, grads, trails)
        for first in (False, True):
            idx = [i for i, b in enumerate(bufs) if (b is None) == first]
            if not idx:
                continue
            if first:
                for i in idx:
                    bufs[i] = st[params[i]]["momentum_buffer"] = torch.empty(
                        params[i].shape, dtype=torch.float32)
            torch.ops.ipex_train.sgd_step_(
                [params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx],
                [trails[i] for i in idx] if trails else [], *hyper, first)

    # Sparse grads (nn.Embedding(sparse=True)): as torch, no momentum or weight decay.
    def _check_sparse(self, group, p, grad):
        _sparse.check_sgd(group, p, grad)

    def _step_sparse(self, group, p, grad, state):
        _sparse.step_sgd(group, p, grad, state.get("trail"))
