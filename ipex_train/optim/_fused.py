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
        try:
            for p in self.param_groups[-1]["params"]:
                _check_param(p, type(self).__name__)
        except Exception:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def _gather(self, group):
        """Params of `group` that have a gradient, with their grads and trails.

        Writes nothing; raises if a grad is unusable (the native op checks
        everything else: shapes, dtypes, devices, contiguity). Returns the plan
        for _step: (params, grads, trails, singles): params for _step_group
        (trails is [] when none is split) and, already checked in full, the
        params that _step_sparse updates one by one (those with sparse grads).
        """
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        sparse = None
        for i, g in enumerate(grads):
            if g.layout is not torch.strided or not g.is_contiguous():
                if g.layout is torch.sparse_coo:
                    self._check_sparse(group, params[i], g)  # raises where unsupported
                    check_row_update(self, group, params[i], g)
                    sparse = (sparse or []) + [params[i]]
                    continue
                grads[i] = self._dense_grad(params[i], g)
        if sparse:
            keep = [i for i, p in enumerate(params) if p.grad.layout is not torch.sparse_coo]
            params, grads = [params[i] for i in keep], [grads[i] for i in keep]
        get = self.state.get
        trails = [(get(p) or _EMPTY).get(TRAIL) for p in params]
        if all(t is None for t in trails):
            trails = []
        # Mixed groups run as two kernel calls; subclasses see one kind at a time.
        return params, grads, trails, sparse or ()

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
        # Plan (and so check) every group before the first write: a bad grad
        # in a later group must not leave earlier groups half-updated.
        plans = [self._gather(group) for group in self.param_groups]
        # Each multi-tensor call checks its own inputs before it writes, and
        # the one-param updates were checked by _gather, so the multi-tensor
        # calls go first. Where there are several of them, all are checked
        # natively (check_dense_params, the ops' own checks) before the first
        # runs: a bad param in a later group must not follow a written one.
        calls = [(group, ps, gs, ts)
                 for group, (params, grads, trails, _) in zip(self.param_groups, plans)
                 for ps, gs, ts in self._split_by_kind(params, grads, trails) if ps]
        if len(calls) > 1:
            for group, ps, gs, ts in calls:
                try:
                    torch.ops.ipex_train.check_dense_params(ps, gs, ts)
                except (ValueError, TypeError) as e:
                    raise type(e)(f"{type(self).__name__}: param group "
                                  f"{_group_index(self, group)}: {e}") from None
        for group, ps, gs, ts in calls:
            self._step_group(group, ps, gs, ts)
        for group, (_, _, _, singles) in zip(self.param_groups, plans):
            for p in singles:
                self._step_sparse(group, p, p.grad, self.state[p])
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


# --- Optimizers that update one parameter per native call --------------------
# The multi-tensor ops check a whole group before writing; the sparse row-update
# op (ipex_train.sparse.functional) sees one parameter at a time. So every
# parameter of every group is checked here, in Python, against what that op
# would refuse, before the first one is written.

_GRAD_DTYPES = (torch.float32, torch.bfloat16)
_MAX_NNZ = 2 ** 31 - 1  # the row-update op counts entries in int32


def _group_index(opt, group):
    """Position of `group` in opt.param_groups, for error messages."""
    return next(i for i, g in enumerate(opt.param_groups) if g is group)


def _where(opt, group, p):
    """'param group G, param I (shape S)', for error messages."""
    pi = next(i for i, q in enumerate(group["params"]) if q is p)
    return f"param group {_group_index(opt, group)}, param {pi} (shape {tuple(p.shape)})"


class _Checker:
    """Raises errors that name the optimizer and the parameter."""
    __slots__ = ("opt", "group", "p")

    def __init__(self, opt, group, p):
        self.opt, self.group, self.p = opt, group, p

    def fail(self, exc, msg):
        raise exc(f"{type(self.opt).__name__}: {_where(self.opt, self.group, self.p)}: {msg}")

    def dense_cpu(self, t, what):
        if t.device.type != "cpu":
            self.fail(ValueError, f"{what} must be on the CPU, got {t.device}")
        if t.layout is not torch.strided:
            self.fail(ValueError, f"{what} must be a dense tensor, got {t.layout}")
        if not t.is_contiguous():
            self.fail(ValueError, f"{what} must be contiguous (a non-contiguous tensor would "
                                  "be updated through a copy)")

    def tensor(self, t, what, dtype, shape):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            self.fail(TypeError, f"{what} must be a {dtype} tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
        self.dense_cpu(t, what)
        if tuple(t.shape) != tuple(shape):
            self.fail(ValueError, f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_row_update(opt, group, p, grad, state_shapes=None, allow_dense=False):
    """Raises what the sparse row-update op would raise for this parameter,
    without writing anything: the param (contiguous CPU fp32 with at least one
    dimension, or bf16 with a matching int16 ``"trail"`` in its state), its
    ``grad`` (fp32 or bf16 of the param's shape; sparse COO with one sparse
    dimension and every row index in range or, with ``allow_dense``, dense)
    and the fp32 state tensors named in ``state_shapes`` ({key: shape}) that
    exist already (missing ones are created by the update)."""
    c = _Checker(opt, group, p)
    state = opt.state.get(p) or _EMPTY
    c.dense_cpu(p, "the parameter")
    if p.dim() < 1:
        c.fail(ValueError, "parameters need at least one dimension (rows)")
    trail = state.get(TRAIL)
    if trail is None and p.dtype != torch.float32:
        c.fail(TypeError, f"parameters must be float32, or bfloat16 with their int16 'trail' in "
                          f"the optimizer state (see ipex_train.optimize); got {p.dtype}")
    if trail is not None:
        if p.dtype != torch.bfloat16:
            c.fail(TypeError, f"the state holds a split-bf16 'trail' but the parameter is {p.dtype}")
        c.tensor(trail, "its 'trail'", torch.int16, p.shape)
    for key, shape in (state_shapes or _EMPTY).items():
        if state.get(key) is not None:
            c.tensor(state[key], f"state {key!r}", torch.float32, shape)
    if grad.device.type != "cpu":
        c.fail(ValueError, f"grad must be on the CPU, got {grad.device}")
    if grad.shape != p.shape:
        c.fail(ValueError, f"grad has shape {tuple(grad.shape)}, expected the param's")
    if grad.dtype not in _GRAD_DTYPES:
        c.fail(TypeError, f"grads must be float32 or bfloat16, got {grad.dtype}")
    if grad.layout is torch.sparse_coo:
        if grad.sparse_dim() != 1:
            c.fail(ValueError, "sparse grads need exactly one sparse dimension (rows), got "
                               f"sparse_dim={grad.sparse_dim()}; use grad.to_sparse(1)")
        rows = grad._indices()[0]
        if rows.numel() >= _MAX_NNZ:
            c.fail(ValueError, f"the sparse grad has {rows.numel()} entries, more than "
                               f"{_MAX_NNZ - 1}")
        if rows.numel():
            lo, hi = (int(x) for x in torch.aminmax(rows))
            if lo < 0 or hi >= p.shape[0]:
                c.fail(IndexError, f"sparse grad row index {lo if lo < 0 else hi} is out of "
                                   f"range for {p.shape[0]} rows")
    elif grad.layout is torch.strided:
        if not allow_dense:
            raise RuntimeError(f"{type(opt).__name__} does not support dense gradients, please "
                               f"consider Adam instead (got one for {_where(opt, group, p)})")
    else:
        c.fail(TypeError, f"unsupported gradient layout {grad.layout}")


class RowUpdateOptimizer(FusedOptimizer):
    """Base of optimizers that update each parameter in its own native call
    (the sparse row-update op): RowWiseAdagrad, SparseAdam.

    Subclasses set ``_allow_dense`` (dense grads accepted besides sparse COO),
    implement ``_state_shapes(p)`` ({state key: shape} of the fp32 state
    tensors) and ``_update(group, p, grad, state)``. Every parameter of every
    group is checked by ``check_row_update`` before the first update runs.
    """

    _allow_dense = False

    def _gather(self, group):
        singles = []
        for p in group["params"]:
            g = p.grad
            if g is not None:
                check_row_update(self, group, p, g, self._state_shapes(p), self._allow_dense)
                singles.append(p)
        return [], [], [], singles

    def _step_sparse(self, group, p, grad, state):
        self._update(group, p, grad, state)  # sparse or dense grad

    def _state_shapes(self, p):
        raise NotImplementedError

    def _update(self, group, p, grad, state):
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
