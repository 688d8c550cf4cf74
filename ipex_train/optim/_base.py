"""The base class of the fused optimizers.

Each optimizer is a real ``torch.optim.Optimizer`` subclass (param groups,
add_param_group, hooks, state_dict in torch's format); only ``step`` differs:
params with dense gradients go, per param group, to one native multi-tensor
kernel; params updated row by row (sparse gradients, row-wise rules) go, all
groups together, to one native row-update call. Every native call checks all
of its tensors before it writes; where a step needs several calls, all are
checked before the first one writes, so a refused step changes nothing.

Parameter storage: fp32, or split bf16 (see ``ipex_train.bf16_split``): a
bfloat16 param whose state holds an int16 ``TRAIL`` with its low 16 bits.
"""
import re

import torch
import torch.optim.optimizer as _optimizer

from ..bf16_checkpoint import record_trail_holder
from ..bf16_split import TRAIL, TRAIL_DTYPE
from ..sparse.functional import row_update_
from ._state_dict import SplitStateDict

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
    return torch.zeros_like(p, dtype=torch.float32)  # the param's memory layout


_PARAM_DTYPES = (torch.float32, torch.bfloat16)


def _check_param(p, who, where):
    if p.device.type != "cpu":
        raise ValueError(f"{who}: {where}: parameters must be on the CPU, got one on {p.device}")
    if p.dtype not in _PARAM_DTYPES:
        raise TypeError(f"{who}: {where} is {p.dtype}: parameters must be floating point, "
                        "float32 or bfloat16 (convert the model with .float(), or to split "
                        "bf16 with ipex_train.optimize)")
    if p.layout != torch.strided:
        raise ValueError(f"{who}: {where}: parameters must be dense tensors, got layout {p.layout}")


def group_index(opt, group):
    """Position of `group` in opt.param_groups, for error messages."""
    return next(i for i, g in enumerate(opt.param_groups) if g is group)


def where(opt, group, p):
    """'param group G, param I (shape S)', for error messages."""
    pi = next(i for i, q in enumerate(group["params"]) if q is p)
    return f"param group {group_index(opt, group)}, param {pi} (shape {tuple(p.shape)})"


_LIST_REF = re.compile(r"\b([a-z_0-9]+)\[(\d+)\]")
# The native ops' list names, as the user knows them.
_READABLE = {"params": "the parameter", "grads": "its grad", "trails": f"its {TRAIL!r}",
             "state_steps": "state 'step'", "exp_avgs": "state 'exp_avg'",
             "exp_avg_sqs": "state 'exp_avg_sq'", "max_exp_avg_sqs": "state 'max_exp_avg_sq'",
             "state_sums": "state 'sum'", "momentum_buffers": "state 'momentum_buffer'"}


def _native_error(opt, e, group_of, param_of, rename=_READABLE):
    """The native op's error `e`, naming the optimizer, param group, param and
    state key; group_of(i) / param_of(i) map the op's list index i."""
    msg = str(e)
    if msg.startswith("ipex_train."):
        msg = msg.split(": ", 1)[-1]
    m = _LIST_REF.search(msg)
    if not m:
        return type(e)(f"{type(opt).__name__}: {msg}")
    i = int(m.group(2))
    msg = _LIST_REF.sub(lambda x: rename.get(x.group(1), f"state {x.group(1)!r}"), msg)
    return type(e)(f"{type(opt).__name__}: {where(opt, group_of(i), param_of(i))}: {msg}")


class FusedOptimizer(SplitStateDict, torch.optim.Optimizer):
    """Base class. Subclasses implement ``_step_group(group, params, grads,
    trails, check_only)`` for dense grads and, to update params row by row,
    set ``_row_rule`` and implement ``_row_args`` / ``_row_done``."""

    _row_rule = None       # "sgd", "adagrad", "rowwise_adagrad", "adam": the row-update rule
    _row_state = ()        # its state keys, in the native op's order (state1, state2)
    _rows_only = False     # every param is updated row by row (dense grads too)

    _created = ()

    def add_param_group(self, param_group):
        """torch's add_param_group, refusing params we cannot update. A bf16
        param without a trail (e.g. one ``optimize`` rounded because it was
        frozen) gets a zero trail: its fp32 master is its bf16 value, exactly."""
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        try:
            for pi, p in enumerate(self.param_groups[-1]["params"]):
                _check_param(p, type(self).__name__, f"param group {gi}, param {pi}")
        except Exception:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise
        for p in self.param_groups[-1]["params"]:
            if p.dtype == torch.bfloat16:
                st = self.state[p]
                if st.get(TRAIL) is None:
                    st[TRAIL] = torch.zeros_like(p, dtype=TRAIL_DTYPE)
                record_trail_holder(self, p)

    # --- planning ------------------------------------------------------------

    def _gather(self, group, rows):
        """Dense-grad params of `group` with their grads and trails; params
        updated row by row are appended to `rows` as (group, param). Writes
        nothing."""
        params, grads = [], []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if self._rows_only or g.layout is torch.sparse_coo:
                self._check_row_policy(group, p, g)
                rows.append((group, p))
                continue
            if g.layout is not torch.strided:
                raise RuntimeError(f"{type(self).__name__} does not support gradients of "
                                   f"layout {g.layout}")
            params.append(p)
            grads.append(g if g.stride() == p.stride() else self._dense_grad(p, g))
        get = self.state.get
        trails = [(get(p) or _EMPTY).get(TRAIL) for p in params]
        if all(t is None for t in trails):
            trails = []
        return params, grads, trails

    def _dense_grad(self, p, g):
        """A copy of a grad laid out unlike its param, in the param's layout
        (the kernels need one layout; the grad is only read, so a copy is safe)."""
        if g.shape != p.shape:
            raise ValueError(f"{type(self).__name__}: grad of shape {tuple(g.shape)} for a param "
                             f"of shape {tuple(p.shape)}")
        return torch.empty_like(p, dtype=g.dtype).copy_(g)  # empty_like keeps dense strides

    def _state_of(self, p):
        """self.state[p], created (and recorded, see _step) where missing."""
        s = self.state.get(p)
        if s is None:
            s = self.state[p] = {}
            self._created.append((p, None))
        return s

    def _check_row_policy(self, group, p, grad):
        """What this optimizer refuses of a row-updated param regardless of its
        tensors (e.g. sparse grads with momentum); the native op checks the rest."""
        if self._row_rule is None:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                               f"(got layout {grad.layout})")

    def _state_lists(self, params, keys, init):
        """Per key, the list of state[p][key] over params; missing entries are
        created with init(p, state, key) and recorded, so that a refused step
        can remove them again."""
        st = self.state
        out = tuple([] for _ in keys)
        for p in params:
            s = st.get(p)
            if s is None:
                s = self._state_of(p)
            for k, lst in zip(keys, out):
                v = s.get(k)
                if v is None:
                    v = s[k] = init(p, s, k)
                    self._created.append((p, k))
                lst.append(v)
        return out

    @staticmethod
    def _split_by_kind(params, grads, trails):
        """Yields (params, grads, trails) sub-lists of one storage kind each."""
        if not trails or all(t is not None for t in trails):
            yield params, grads, trails
            return
        fp = [i for i, t in enumerate(trails) if t is None]
        sp = [i for i, t in enumerate(trails) if t is not None]
        yield [params[i] for i in fp], [grads[i] for i in fp], []
        yield [params[i] for i in sp], [grads[i] for i in sp], [trails[i] for i in sp]

    # --- the step ------------------------------------------------------------

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
        rows = []
        calls = [(group, ps, gs, ts) for group in self.param_groups
                 for ps, gs, ts in self._split_by_kind(*self._gather(group, rows)) if ps]
        self._created = []
        try:
            if len(calls) + bool(rows) > 1:  # check every call before the first one writes
                for call in calls:
                    self._run_group(*call, check_only=True)
            if rows:
                self._step_rows(rows)
            for call in calls:
                self._run_group(*call, check_only=False)
        except BaseException:
            for p, k in reversed(self._created):  # a refused step leaves the state as it was
                if k is None:
                    self.state.pop(p, None)
                else:
                    self.state[p].pop(k, None)
            raise
        finally:
            self._created = ()
        return loss

    def _run_group(self, group, params, grads, trails, check_only):
        try:
            self._step_group(group, params, grads, trails, check_only)
        except (ValueError, TypeError, IndexError) as e:
            raise _native_error(self, e, lambda i: group, lambda i: params[i]) from None

    def _step_group(self, group, params, grads, trails, check_only):
        raise NotImplementedError

    def _step_rows(self, rows):
        """One native row-update call for every (group, param) of `rows`."""
        state = self.state
        rows.sort(key=lambda gp: TRAIL not in state.get(gp[1], _EMPTY))  # split first (stable)
        cols = [[] for _ in range(8)]
        for group, p in rows:
            for c, v in zip(cols, self._row_args(group, p, self._state_of(p))):
                c.append(v)
        trails = [state[p][TRAIL] for _, p in rows if TRAIL in state[p]]
        s1 = cols[0] if len(self._row_state) > 0 else []
        s2 = cols[1] if len(self._row_state) > 1 else []
        try:
            row_update_(self._row_rule, [p for _, p in rows], [p.grad for _, p in rows], trails,
                        s1, s2, *cols[2:])
        except (ValueError, TypeError, IndexError, RuntimeError) as e:
            raise self._row_error(rows, e) from None
        for group, p in rows:
            self._row_done(group, p, state[p])

    def _row_error(self, rows, e):
        """The native op's error, naming the optimizer, group, param and state key."""
        rename = dict(_READABLE)
        rename.update({f"state{j + 1}": f"state {k!r}" for j, k in enumerate(self._row_state)})
        return _native_error(self, e, lambda i: rows[i][0], lambda i: rows[i][1], rename)

    def _row_args(self, group, p, state):
        """(state1, state2, lr, eps, beta1, beta2, step_size, maximize) of the
        row update of `p`; state it creates goes through _new_state."""
        raise NotImplementedError

    def _row_done(self, group, p, state):
        """After a successful row update (e.g. step counters)."""

    def _new_state(self, p, state, key, value):
        state[key] = value
        self._created.append((p, key))
        return value


# torch's own hook-and-profiler wrapper around the update, for the slow path.
_hooked_step = torch.optim.Optimizer.profile_hook_step(FusedOptimizer._step)


def check_dense(params, grads, trails, states=None, steps=()):
    """Checks what a dense multi-tensor step op would check, writing nothing:
    `states` {key: list aligned with params} (fp32, laid out as the params),
    `steps` float32 scalar tensors."""
    states = states or {}
    try:
        torch.ops.ipex_train.check_dense_params(params, grads, trails,
                                                [t for lst in states.values() for t in lst],
                                                list(steps))
    except (ValueError, TypeError) as e:  # state[j] -> its key, params[j % n]
        n, keys = max(len(params), 1), list(states)
        raise type(e)(re.sub(r"\bstate\[(\d+)\]",
                             lambda m: f"{keys[int(m.group(1)) // n]}[{int(m.group(1)) % n}]",
                             str(e))) from None
