"""Shared helpers of the optimizer tests: random problems, step runners,
comparisons with references, state_dict resumption and the thread/ISA sweep."""
import copy

import torch

import ipex_train
from ipex_train.bf16_split import join as join_split, split  # noqa: F401  (for the tests)

# Odd sizes: empty, scalar-like, below/around vector widths, multi-dim, and one
# tensor over two kernel chunks (32768 elements) so threads split it.
SHAPES = [(0,), (1,), (7,), (33, 17), (1000,), (3, 5, 7), (40000,)]


def problem(seed, steps=50, scale=1.0, skip=True):
    """Random params and `steps` rounds of grads. With `skip`, param 2 has no
    grad on every 7th step and param 3 gets its first grad at step 5, so the
    per-param step counts differ (torch skips params whose grad is None)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) * scale for s in SHAPES]
    grads = []
    for t in range(steps):
        row = [torch.randn(s, generator=g) for s in SHAPES]
        if skip:
            if t % 7 == 3:
                row[2] = None
            if t < 5:
                row[3] = None
        grads.append(row)
    return params, grads


def run(make_opt, params, grads, closure=False):
    """Clones params, builds the optimizer with make_opt(params) and steps
    through the grads; returns (params, optimizer)."""
    ps = [p.clone().requires_grad_() for p in params]
    opt = make_opt(ps)
    step_together([(ps, opt)], grads, closure)
    return ps, opt


def step_together(runs, grads, closure=False):
    """Steps every (params, optimizer) of `runs` through the same rows of grads
    (None: no grad for that param on that step)."""
    for row in grads:
        for ps, opt in runs:
            for p, g in zip(ps, row):
                p.grad = None if g is None else g.clone()
            if closure:
                opt.step(lambda: torch.tensor(0.0))
            else:
                opt.step()


def run_like_training(make_opt, params, grads, first, add_at, extra_group, step_size):
    """A training loop over copies of params: make_opt(params[:first]) with a
    StepLR(step_size, gamma=0.5), zero_grad, grads set, step(closure) (losses
    recorded), sched.step(); at step `add_at` the other params join as a new
    group (extra_group: its hyperparameters). Returns (params, losses)."""
    ps = [p.clone().requires_grad_() for p in params]
    opt = make_opt(ps[:first])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=0.5)
    losses = []
    for t, row in enumerate(grads):
        if t == add_at:
            opt.add_param_group(dict(extra_group, params=ps[first:]))
        opt.zero_grad()
        for p, g in zip(ps, row):
            if g is not None:
                p.grad = g.clone()
        losses.append(opt.step(lambda: torch.tensor(float(t))))
        sched.step()
    return ps, losses


def assert_training_matches(make_ours, make_ref, params, grads, rtol=1e-5, atol=1e-6, **loop):
    """run_like_training(**loop) gives the same losses and close params with
    our optimizer and with the reference."""
    ours, ol = run_like_training(make_ours, params, grads, **loop)
    ref, rl = run_like_training(make_ref, params, grads, **loop)
    assert ol == rl
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


_REFERENCES = {}


def reference(key, make_ref, params, grads):
    """The params after run(make_ref, params, grads), computed once per `key`:
    a reference does not depend on the ISA level or thread count a test forces."""
    if key not in _REFERENCES:
        _REFERENCES[key] = [p.detach() for p in run(make_ref, params, grads)[0]]
    return _REFERENCES[key]


def assert_matches(make_ours, make_ref, params, grads, ref_key=None, rtol=1e-5, atol=1e-6):
    """Our optimizer and a reference, stepped through the same grads from the
    same params, end with params equal within (rtol, atol). With `ref_key`
    the reference run is shared by every test that names the same key."""
    ours, _ = run(make_ours, params, grads)
    ref = (run(make_ref, params, grads)[0] if ref_key is None
           else reference(ref_key, make_ref, params, grads))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def resume(opt, make_opt):
    """(params, optimizer): make_opt over copies of opt's params, loaded with a
    deep copy of opt.state_dict() (torch's load shares tensors otherwise)."""
    ps = [p.detach().clone().requires_grad_() for g in opt.param_groups for p in g["params"]]
    new = make_opt(ps)
    new.load_state_dict(copy.deepcopy(opt.state_dict()))
    return ps, new


def assert_same_across_threads_and_isas(make_opt, params, grads, threads):
    """Params and state after run(make_opt, ...) are bit for bit the same for
    1 and 2 threads at every ISA level this CPU has (`threads`: the fixture)."""
    results = []
    for level in ipex_train.available_isas():
        for n in (1, 2):
            threads(n)
            with ipex_train.force_isa(level):
                ps, opt = run(make_opt, params, grads)
            results.append((ps, opt.state_dict()["state"]))
    for ps, st in results[1:]:
        for a, b in zip(results[0][0], ps):
            assert torch.equal(a, b)
        assert st.keys() == results[0][1].keys()
        for k, d in st.items():
            for key, v in d.items():
                assert torch.equal(v, results[0][1][k][key]), (k, key)


def cfg_id(cfg):
    return "-".join(f"{k}{v}" for k, v in cfg.items())


def bits_equal(a, b):
    """Bitwise equality (NaN-safe)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))
