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


def init_step_and_zeros(p, state, key):
    """State initialiser for _state_lists: 'step' as torch's float32 scalar
    tensor, every other key fp32 zeros of the param's shape."""
    if key == "step":
        return torch.tensor(0.0, dtype=torch.float32)
    return torch.zeros(p.shape, dtype=torch.float32)


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
        sparse = None
        for i, g in enumerate(grads):
            if g.layout is not torch.strided or not g.is_contiguous():
                if g.layout is torch.sparse_coo:
                    self._check_sparse(group, params[i], g)  # raises where unsupported
                    sparse = (sparse or []) + [params[i]]
                    continue
                grads[i] = self._dense_grad(params[i], g)
        if sparse:  # applied by _step through _step_sparse, after all checks
            self._sparse_params = sparse
            keep = [i for i, p in enumerate(params) if p.grad.layout is not torch.sparse_coo]
            params, grads = [params[i] for i in keep], [grads[i] for i in keep]
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
        # Gather (and so check) every group before the first write: a bad grad
        # in a later group must not leave earlier groups half-updated.
        gathered = []
        for group in self.param_groups:
            params, grads, trails = self._gather(group)
            gathered.append((group, params, grads, trails,
                             self.__dict__.pop("_sparse_params", None) or ()))
        for group, params, grads, trails, sparse in gathered:
            for p in sparse:
                self._step_sparse(group, p, p.grad, self.state[p])
            for ps, gs, ts in self._split_by_kind(params, grads, trails):
                if ps:
                    self._step_group(group, ps, gs, ts)
        return loss

    def _step_group(self, group, params, grads, trails):
        raise NotImplementedError

    def _check_sparse(self, group, p, grad):
        """Validates a sparse grad before anything is written; classes that take
        sparse grads (SGD, Adagrad) override this and _step_sparse."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                           f"(got layout {grad.layout})")

    def _step_sparse(self, group, p, grad, state):
        raise NotImplementedError


# torch's own hook-and-profiler wrapper around the update, for the slow path.
_hooked_step = torch.optim.Optimizer.profile_hook_step(FusedOptimizer._step)


# --- Checkpoints of split-bf16 optimizers -----------------------------------
# torch's Optimizer.load_state_dict casts every floating-point state tensor to
# its param's dtype. For a split-bf16 param that would turn the fp32 state
# (momentum, exp_avg, ...) into bf16 and the int16 trail into bf16 numbers,
# destroying the master weights. FusedOptimizer.load_state_dict keeps
# float state in fp32 and the trail in int16; it uses only torch's public
# load-state-dict hooks: the last pre-hook checks the trails and wraps each
# state tensor in a holder torch passes through uncast, the first post-hook
# unwraps it.


class _Uncast:
    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor


def _check_and_wrap_state(opt, state_dict):
    """Pre-hook: validates trails against our params, wraps state tensors."""
    who = type(opt).__name__
    saved = [pid for g in state_dict["param_groups"] for pid in g["params"]]
    ours = [p for g in opt.param_groups for p in g["params"]]
    if len(saved) != len(ours):
        return None  # torch raises its own clear error on the group sizes
    new_state = {}
    for idx, (pid, p) in enumerate(zip(saved, ours)):
        st = state_dict["state"].get(pid)
        if st is None:
            st = {}
        trail = st.get(TRAIL)
        if p.dtype == torch.bfloat16:
            if trail is None:
                raise ValueError(
                    f"{who}.load_state_dict: parameter {idx} (shape {tuple(p.shape)}) is split "
                    "bfloat16 but the state dict holds no 'trail' for it (saved from an fp32 "
                    "optimizer?); load fp32 weights with ipex_train.load_fp32_state_dict instead")
            if not isinstance(trail, torch.Tensor) or trail.dtype != torch.int16 \
                    or trail.shape != p.shape:
                got = (f"{trail.dtype} {tuple(trail.shape)}" if isinstance(trail, torch.Tensor)
                       else type(trail).__name__)
                raise ValueError(f"{who}.load_state_dict: the 'trail' of parameter {idx} must be "
                                 f"an int16 tensor of shape {tuple(p.shape)}, got {got}")
        elif trail is not None:
            raise ValueError(f"{who}.load_state_dict: parameter {idx} is {p.dtype} but the state "
                             "dict holds a split-bf16 'trail' for it")
    for pid, st in state_dict["state"].items():
        if isinstance(st, dict):
            st = {k: _Uncast(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        new_state[pid] = st
    out = dict(state_dict)
    out["state"] = new_state
    return out


def _unwrap_state(opt):
    """Post-hook: float state -> fp32 (contiguous), trail -> int16, 'step' as saved."""
    for st in opt.state.values():
        if not isinstance(st, dict):
            continue
        for k, v in list(st.items()):
            if not isinstance(v, _Uncast):
                continue
            t = v.tensor.to(device="cpu")
            if k != "step" and k != TRAIL and t.is_floating_point():
                t = t.to(torch.float32)
            st[k] = t.contiguous()


def _load_state_dict(self, state_dict):
    """torch's load_state_dict, except that float state stays fp32 and the
    split-bf16 ``"trail"`` stays int16 (see the note above). Raises
    ValueError before changing anything if a bf16 param's trail is missing or
    malformed."""
    pre = self.register_load_state_dict_pre_hook(_check_and_wrap_state)
    post = self.register_load_state_dict_post_hook(_unwrap_state, prepend=True)
    try:
        torch.optim.Optimizer.load_state_dict(self, state_dict)
    finally:
        pre.remove()
        post.remove()


FusedOptimizer.load_state_dict = _load_state_dict
