"""All fused optimizer ops: thread/ISA independence, split-bf16 storage,
input validation and torch.library.opcheck."""
import pytest
import torch

import ipex_train
from optim_testlib import (SHAPES, assert_same_across_threads_and_isas, bits_equal,
                           join_split, problem, split)

ops = torch.ops.ipex_train

# name -> (number of fp32 state lists, call(params, grads, states, steps, trails))
OPS = {
    "sgd": (1, lambda P, G, S, T, R: ops.sgd_step_(P, G, S[0], R, 0.1, 0.01, 0.9, 0.1, False,
                                                     False, False)),
    "sgd_nesterov_max": (1, lambda P, G, S, T, R: ops.sgd_step_(P, G, S[0], R, 0.1, 0.0, 0.9, 0.0,
                                                                  True, True, False)),
    "adam": (3, lambda P, G, S, T, R: ops.adam_step_(P, G, S[0], S[1], S[2], T, R, 0.01, 0.9,
                                                       0.999, 1e-8, 0.01, True, False, False)),
    "adamw_max": (2, lambda P, G, S, T, R: ops.adam_step_(P, G, S[0], S[1], [], T, R, 0.01, 0.8,
                                                            0.99, 1e-8, 0.1, False, True, True)),
    "adagrad": (1, lambda P, G, S, T, R: ops.adagrad_step_(P, G, S[0], T, R, 0.05, 0.01, 0.01,
                                                             1e-10, False)),
    "lamb": (2, lambda P, G, S, T, R: ops.lamb_step_(P, G, S[0], S[1], T, R, 0.01, 0.9, 0.999,
                                                       1e-6, 0.01, 10.0, True, False)),
    "lamb_noclip_max": (2, lambda P, G, S, T, R: ops.lamb_step_(P, G, S[0], S[1], T, R, 0.01, 0.9,
                                                                  0.999, 1e-6, 0.0, None, False,
                                                                  True)),
}

MAKERS = {
    "SGD": lambda ps: ipex_train.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                           weight_decay=1e-3),
    "Adam": lambda ps: ipex_train.optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": lambda ps: ipex_train.optim.AdamW(ps, lr=0.01),
    "Adagrad": lambda ps: ipex_train.optim.Adagrad(ps, lr=0.05, lr_decay=0.01),
    "Lamb": lambda ps: ipex_train.optim.Lamb(ps, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_thread_count_and_isa_do_not_change_result(name, threads):
    assert_same_across_threads_and_isas(MAKERS[name], *problem(1, steps=10), threads)


def _inputs(seed, shapes=SHAPES, nstate=1, grad_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    P = [torch.randn(s, generator=g) for s in shapes]
    G = [torch.randn(s, generator=g).to(grad_dtype) for s in shapes]
    S = [[torch.rand(s, generator=g) for s in shapes] for _ in range(nstate)]
    T = [torch.tensor(float(i % 3 + 1)) for i in range(len(shapes))]
    return P, G, S, T


def _clone(x):
    return [_clone(v) for v in x] if isinstance(x, list) else x.clone()


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(OPS))
def test_split_bf16_storage_matches_fp32_bitwise(name, grad_dtype, isa_level):
    """(bf16 top, int16 trail) joined after the op == the fp32 op's result, bit for bit."""
    nstate, call = OPS[name]
    P, G, S, T = _inputs(7, nstate=nstate, grad_dtype=grad_dtype)
    Pf, Sf, Tf = _clone(P), _clone(S), _clone(T)
    call(Pf, G, Sf, Tf, [])
    tops, trails = zip(*[split(p) for p in P])
    tops, trails = list(tops), list(trails)
    Ss, Ts = _clone(S), _clone(T)
    call(tops, G, Ss, Ts, trails)
    for i, (a, t, r) in enumerate(zip(Pf, tops, trails)):
        assert bits_equal(join_split(t, r), a), i
    for la, lb in zip(Sf, Ss):
        for a, b in zip(la, lb):
            assert bits_equal(a, b)
    assert [t.item() for t in Tf] == [t.item() for t in Ts]
    if name != "sgd" and not name.startswith("sgd"):
        assert [t.item() for t in Tf] == [t.item() + 1 for t in T]


def _corruptions(nstate):
    """(description, expected exception, function that breaks index 1 of (P, G, S, T))."""
    def noncontig_param(P, G, S, T):  # not dense (any dense layout is accepted)
        P[1] = torch.randn(6, 16)[:, ::2]
        G[1], T[1] = torch.randn(6, 8), T[1]
        for s in S:
            s[1] = torch.rand(6, 8)

    def int_param(P, G, S, T):
        P[1] = torch.zeros(P[1].shape, dtype=torch.int32)

    def grad_shape(P, G, S, T):
        G[1] = torch.randn(P[1].numel() + 1)

    def state_shape(P, G, S, T):
        S[-1][1] = torch.rand(P[1].numel() + 1)

    def state_dtype(P, G, S, T):
        S[0][1] = S[0][1].double()

    def step_dtype(P, G, S, T):
        T[1] = torch.tensor(1, dtype=torch.int64)

    def noncontig_grad(P, G, S, T):
        G[1] = torch.randn(P[1].numel() * 2)[::2]

    return [("must be dense", ValueError, noncontig_param), ("float32", TypeError, int_param),
            (r"grads\[1\] has shape", ValueError, grad_shape), ("has shape", ValueError, state_shape),
            ("float32", TypeError, state_dtype), ("state_steps", TypeError, step_dtype),
            ("strides", ValueError, noncontig_grad)]


@pytest.mark.parametrize("name", list(OPS))
def test_bad_input_raises_before_writing(name):
    nstate, call = OPS[name]
    for match, exc, corrupt in _corruptions(nstate):
        if "step" in match and name.startswith("sgd"):
            continue
        P, G, S, T = _inputs(3, shapes=[(5,), (9,)], nstate=nstate)
        corrupt(P, G, S, T)
        before = _clone([P[0]] + [s[0] for s in S] + [T[0]])
        with pytest.raises(exc, match=match):
            call(P, G, S, T, [])
        after = [P[0]] + [s[0] for s in S] + [T[0]]
        for a, b in zip(before, after):
            assert torch.equal(a, b), f"{name}: written before the error ({match})"


def test_bad_hyperparameters_raise():
    P, G, S, T = _inputs(3, shapes=[(5,)], nstate=2)
    with pytest.raises(ValueError, match="beta1"):
        ops.adam_step_(P, G, S[0], S[1], [], T, [], 0.01, 1.5, 0.999, 1e-8, 0.0, False, False,
                       False)
    with pytest.raises(ValueError, match="max_trust_ratio"):
        ops.lamb_step_(P, G, S[0], S[1], T, [], 0.01, 0.9, 0.999, 1e-6, 0.0, -1.0, True, False)
    assert T[0].item() == 1.0


@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name):
    nstate, call = OPS[name]
    P, G, S, T = _inputs(11, shapes=[(100,), (3, 7)], nstate=nstate)
    captured = {}

    class Spy:
        def __getattr__(self, op):
            def f(*args):
                captured["op"] = getattr(torch.ops.ipex_train, op).default
                captured["args"] = args
            return f

    global ops
    real, ops = ops, Spy()
    try:
        call(P, G, S, T, [])
    finally:
        ops = real
    torch.library.opcheck(captured["op"], captured["args"])


def test_step_hooks_and_profiler_range_still_run():
    p = torch.zeros(3, requires_grad=True)
    opt = ipex_train.optim.Adam([p], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    p.grad = torch.ones(3)
    opt.step()
    assert calls == ["pre", "post"] and p.detach().lt(0).all()
    with torch.profiler.profile() as prof:
        opt.step()
    assert any("Optimizer.step#Adam.step" in e.name for e in prof.events())


def test_check_dense_params_opcheck_and_errors():
    P, G, _, _ = _inputs(5, shapes=[(4,), (2, 3)], nstate=0)
    S = [torch.zeros(p.shape) for p in P] * 2
    steps = [torch.tensor(0.0) for _ in P]
    torch.library.opcheck(torch.ops.ipex_train.check_dense_params.default, (P, G, [], [], []))
    torch.library.opcheck(torch.ops.ipex_train.check_dense_params.default, (P, G, [], S, steps))
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        torch.ops.ipex_train.check_dense_params(P, [G[0], torch.zeros(5)], [], [], [])
    with pytest.raises(ValueError, match=r"state\[1\] has shape"):
        torch.ops.ipex_train.check_dense_params(P, G, [], S[:3] + [torch.zeros(5)], [])
    with pytest.raises(TypeError, match=r"state_steps\[0\] must be float32"):
        torch.ops.ipex_train.check_dense_params(P, G, [], [], [torch.tensor(0.0).double()] * 2)
    with pytest.raises(ValueError, match="3 state tensors for 2 params"):
        torch.ops.ipex_train.check_dense_params(P, G, [], S[:3], [])


_MULTI_CALL_OPTIMIZERS = {
    "sgd": lambda groups: ipex_train.optim.SGD(groups, lr=0.1),
    "sgd_momentum": lambda groups: ipex_train.optim.SGD(groups, lr=0.1, momentum=0.9),
    "adam": lambda groups: ipex_train.optim.Adam(groups, lr=0.1),
    "adamw": lambda groups: ipex_train.optim.AdamW(groups, lr=0.1),
    "adagrad": lambda groups: ipex_train.optim.Adagrad(groups, lr=0.1),
    "lamb": lambda groups: ipex_train.optim.Lamb(groups, lr=0.1),
}


def _bad_params():
    noncontig = torch.randn(6, 8)[:, ::2].requires_grad_()  # not dense
    noncontig.grad = torch.randn(6, 4)
    resized = torch.randn(5).requires_grad_()
    resized.grad = torch.randn(5)
    resized.data = torch.randn(3)  # the grad no longer fits
    return [("the parameter must be dense", noncontig), ("its grad has shape", resized)]


@pytest.mark.parametrize("name", list(_MULTI_CALL_OPTIMIZERS))
def test_bad_param_in_a_later_group_writes_nothing(name):
    """Several param groups are several native calls: a bad param in the last
    group must raise before the first group is written (state included)."""
    for match, bad in _bad_params():
        good = [torch.randn(7, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
        for p in good:
            p.grad = torch.randn(p.shape)
        opt = _MULTI_CALL_OPTIMIZERS[name]([{"params": good}, {"params": [bad]}])
        for fresh in (True, False):
            if not fresh:  # a second round with state in place for the good params
                opt = _MULTI_CALL_OPTIMIZERS[name]([{"params": good}])
                opt.step()
                opt.add_param_group({"params": [bad]})
            before = _clone(good) + [_clone(list(opt.state[p].values())) for p in good]
            with pytest.raises(ValueError, match=f"param group 1, param 0 .*: {match}"):
                opt.step()
            after = list(good) + [list(opt.state[p].values()) for p in good]
            for b, a in zip(before, after):
                if isinstance(b, list):
                    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(b, a)), name
                else:
                    assert torch.equal(b, a), f"{name}: group 0 written before the error ({match})"


def test_sgd_momentum_split_call_writes_nothing_on_error():
    """SGD with momentum runs params with and without a buffer as two calls."""
    a, b = torch.randn(6, requires_grad=True), torch.randn(5, requires_grad=True)
    a.grad, b.grad = torch.randn(6), torch.randn(5)
    opt = ipex_train.optim.SGD([a], lr=0.1, momentum=0.9)
    opt.step()  # a has a buffer now
    opt.param_groups[0]["params"].append(b)  # b joins the group without one
    b.data = torch.randn(4)  # and its grad no longer fits
    before = _clone([a, opt.state[a]["momentum_buffer"]])
    with pytest.raises(ValueError, match="param 1 .*its grad has shape"):
        opt.step()
    assert torch.equal(before[0], a) and torch.equal(before[1], opt.state[a]["momentum_buffer"])
