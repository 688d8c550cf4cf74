"""Shared machinery of the fused optimizers.

Each optimizer is a real ``torch.optim.Optimizer`` subclass (param groups,
add_param_group, hooks, state_dict in torch's format); only ``step`` differs:
per param group it gathers the params that have a gradient and hands them to
one native multi-tensor kernel.

Parameter storage: fp32, or split bf16 (see ``ipex_train.optimize``): a
bfloat16 param whose state holds an int16 ``"trail"`` with its low 16 bits.
"""
import torch
import torch.optim.optimizer as _optimizer

TRAIL = "trail"
_EMPTY = {}


def float_of(x):
    """A hyperparameter as a Python float (accepts 1-element tensors, as torch does)."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def check_hyper(who, *, lr, eps, weight_decay, differentiable, betas=None):
    """torch.optim's constructor checks, with its messages."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if betas is not None:
        for i, b in enumerate(betas):
            if isinstance(b, torch.Tensor) and b.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
    if differentiable:
        raise ValueError(f"ipex_train.optim.{who}: differentiable=True is not supported "
                         "(the update runs in a native kernel outside autograd)")


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

        Raises before anything is written if a grad is unusable (the native op
        checks everything else: shapes, dtypes, devices, contiguity). Returns
        (params, grads, trails); trails is [] when no param is split.
        """
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        for i, g in enumerate(grads):
            if g.layout is not torch.strided or not g.is_contiguous():
                grads[i] = self._dense_grad(params[i], g)
        get = self.state.get
        trails = [(get(p) or _EMPTY).get(TRAIL) for p in params]
        if all(t is None for t in trails):
            return params, grads, []
        # Mixed groups run as two kernel calls; subclasses see one kind at a time.
        return params, grads, trails

    def _dense_grad(self, p, g):
        """A contiguous copy of a strided grad (read only, so a copy is safe)."""
        who = type(self).__name__
        if g.is_sparse or g.layout is not torch.strided:
            raise RuntimeError(f"{who} does not support sparse gradients (got layout {g.layout})")
        if g.shape != p.shape:
            raise ValueError(f"{who}: grad of shape {tuple(g.shape)} for a param of shape {tuple(p.shape)}")
        return g.contiguous()

    def _state_lists(self, params, keys, init):
        """Per key, the list of state[p][key] over params; missing entries are
        created with init(p, state, key). One pass, no per-param Python beyond
        the dict lookups."""
        st = self.state
        out = tuple([] for _ in keys)
        for p in params:
            s = st[p]
            for k, lst in zip(keys, out):
                v = s.get(k)
                if v is None:
                    v = s[k] = init(p, s, k)
                lst.append(v)
        return out

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

    def step(self, closure=None):
        """One update of every param group; returns closure() if given.

        Runs the step pre/post hooks and the profiler range as torch's own
        wrapper does, but skips that wrapper (~15 us per step) when no hook is
        registered and no profiler runs: per-step Python time matters for
        small models.
        """
        if (_optimizer._global_optimizer_pre_hooks or _optimizer._global_optimizer_post_hooks
                or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or torch._C._autograd._profiler_enabled()):
            return _hooked_step(self, closure)
        return self._step(closure)

    step.hooked = True  # tells torch.optim.Optimizer not to wrap it again

    @torch.no_grad()
    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, trails = self._gather(group)
            for ps, gs, ts in self._split_by_kind(params, grads, trails):
                if ps:
                    self._step_group(group, ps, gs, ts)
        return loss

    def _step_group(self, group, params, grads, trails):
        raise NotImplementedError


# torch's own hook-and-profiler wrapper around the update, for the slow path.
_hooked_step = torch.optim.Optimizer.profile_hook_step(FusedOptimizer._step)
