"""Shared machinery of the fused optimizers.

Each optimizer is a real ``torch.optim.Optimizer`` subclass (param groups,
add_param_group, hooks, state_dict in torch's format); only ``step`` differs:
per param group it gathers the params that have a gradient and hands them to
one native multi-tensor kernel.

Parameter storage: fp32, or split bf16 (see ``ipex_train.optimize``): a
bfloat16 param whose state holds an int16 ``"trail"`` with its low 16 bits.
"""
import torch

TRAIL = "trail"


def _check_param(p, who):
    if p.device.type != "cpu":
        raise ValueError(f"{who}: parameters must be on the CPU, got one on {p.device}")
    if not p.is_floating_point():
        raise TypeError(f"{who}: parameters must be floating point, got {p.dtype}")
    if p.layout != torch.strided:
        raise ValueError(f"{who}: parameters must be dense tensors, got layout {p.layout}")


class FusedOptimizer(torch.optim.Optimizer):
    """Base class: subclasses implement ``_step_group(group, params, grads, trails)``."""

    def __init__(self, params, defaults):
        for key in ("foreach", "fused", "capturable", "differentiable"):
            defaults.pop(key, None)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            _check_param(p, type(self).__name__)

    def _gather(self, group):
        """Params of `group` that have a gradient, with their grads and trails.

        Raises before anything is written if a param or grad is unusable.
        Returns (params, grads, trails); trails is [] when no param is split.
        """
        who = type(self).__name__
        params, grads, trails = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            if g.is_sparse:
                self._check_sparse(group, p, g)  # applied by _step_sparse after validation
                continue
            if g.shape != p.shape:
                raise ValueError(f"{who}: grad of shape {tuple(g.shape)} for a param of shape {tuple(p.shape)}")
            if not p.is_contiguous():
                raise ValueError(f"{who}: parameters must be contiguous (a non-contiguous param "
                                 "would be updated through a temporary copy)")
            if not g.is_contiguous():
                g = g.contiguous()
            params.append(p)
            grads.append(g)
            t = self.state[p].get(TRAIL) if p in self.state else None
            trails.append(t)
        kinds = {t is not None for t in trails}
        if len(kinds) > 1:
            # Mixed groups run as two kernel calls; subclasses see one kind at a time.
            return params, grads, trails
        return params, grads, (trails if True in kinds else [])

    @staticmethod
    def _split_by_kind(params, grads, trails):
        """Yields (params, grads, trails) sub-lists of one storage kind each."""
        if not trails or all(t is None for t in trails):
            yield params, grads, []
            return
        if all(t is not None for t in trails):
            yield params, grads, trails
            return
        fp = [i for i, t in enumerate(trails) if t is None]
        sp = [i for i, t in enumerate(trails) if t is not None]
        yield [params[i] for i in fp], [grads[i] for i in fp], []
        yield [params[i] for i in sp], [grads[i] for i in sp], [trails[i] for i in sp]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, trails = self._gather(group)
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._step_sparse(group, p, p.grad, self.state[p])
            for ps, gs, ts in self._split_by_kind(params, grads, trails):
                if ps:
                    self._step_group(group, ps, gs, ts)
        return loss

    def _step_group(self, group, params, grads, trails):
        raise NotImplementedError

    def _check_sparse(self, group, p, grad):
        """Validates a sparse grad (before any write); classes that take them override."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")

    def _step_sparse(self, group, p, grad, state):
        raise NotImplementedError
