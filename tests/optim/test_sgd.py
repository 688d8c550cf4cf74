"""ipex_train.optim.SGD against torch.optim.SGD."""
import copy
import itertools

import pytest
import torch

import ipex_train

SHAPES = [(0,), (1,), (7,), (33, 17), (1000,), (3, 5, 7), (40000,)]


def _problem(seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(50)]
    return params, grads


def _run(cls, params, grads, **kw):
    ps = [p.clone().requires_grad_() for p in params]
    opt = cls(ps, **kw)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g.clone()
        opt.step()
    return ps, opt


CONFIGS = [dict(lr=lr, momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
           for lr, m, d, wd, n, mx in itertools.product(
               [0.01], [0.0, 0.9], [0.0, 0.1], [0.0, 0.01], [False, True], [False, True])
           if not (n and (m == 0 or d != 0))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_matches_torch(cfg, isa_level):
    params, grads = _problem(0)
    ours, _ = _run(ipex_train.optim.SGD, params, grads, **cfg)
    ref, _ = _run(torch.optim.SGD, params, grads, **cfg)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_thread_count_and_isa_do_not_change_result(threads):
    params, grads = _problem(1)
    cfg = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    results = []
    for level in ipex_train.available_isas():
        for n in (1, 2):
            threads(n)
            with ipex_train.force_isa(level):
                ps, _ = _run(ipex_train.optim.SGD, params, grads, **cfg)
            results.append(ps)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


def test_state_dict_round_trips_with_torch():
    params, grads = _problem(2)
    cfg = dict(lr=0.1, momentum=0.9)
    ours, opt = _run(ipex_train.optim.SGD, params, grads[:10], **cfg)
    ref = [p.detach().clone().requires_grad_() for p in ours]
    topt = torch.optim.SGD(ref, **cfg)
    topt.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares tensors otherwise
    for step in grads[10:20]:
        for p, q, g in zip(ours, ref, step):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_bad_inputs_raise_before_writing():
    good = torch.randn(10, requires_grad=True)
    bad = torch.randn(10, 4).t().contiguous().t().requires_grad_()  # non-contiguous
    opt = ipex_train.optim.SGD([good, bad], lr=0.1)
    good.grad, bad.grad = torch.ones(10), torch.ones(10, 4)
    before = good.detach().clone()
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()
    assert torch.equal(good.detach(), before)

    with pytest.raises(TypeError, match="floating point"):
        ipex_train.optim.SGD([torch.zeros(3, dtype=torch.int64)], lr=0.1)
    with pytest.raises(ValueError, match="CPU"):
        ipex_train.optim.SGD([torch.zeros(3, device="meta")], lr=0.1)


def test_op_raises_on_wrong_shapes_directly():
    p, g = torch.zeros(4), torch.zeros(5)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape"):
        torch.ops.ipex_train.sgd_step_([p], [g], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False)
    with pytest.raises(TypeError, match=r"params\[0\] must be float32"):
        torch.ops.ipex_train.sgd_step_([p.double()], [g[:4]], [], [], 0.1, 0.0, 0.0, 0.0,
                                       False, False, False)


def test_opcheck():
    p, g, b = torch.randn(100), torch.randn(100), torch.randn(100)
    torch.library.opcheck(torch.ops.ipex_train.sgd_step_.default,
                          ([p], [g], [b], [], 0.1, 0.0, 0.9, 0.0, False, False, False))


def test_bad_grad_in_a_later_group_leaves_earlier_groups_unchanged():
    """All groups are checked before any is written."""
    a = torch.randn(8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    opt = ipex_train.optim.SGD([{"params": [a]}, {"params": [b], "momentum": 0.9}], lr=0.1)
    a.grad = torch.ones(8)
    b.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1), (8,))
    before = a.detach().clone()
    with pytest.raises(RuntimeError, match="momentum"):
        opt.step()
    assert torch.equal(a.detach(), before)
