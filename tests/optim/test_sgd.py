"""ipex_train.optim.SGD against torch.optim.SGD."""
import itertools

import pytest
import torch

import ipex_train
from optim_testlib import assert_matches, cfg_id, problem, resume, run, step_together

CONFIGS = [dict(lr=lr, momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
           for lr, m, d, wd, n, mx in itertools.product(
               [0.01], [0.0, 0.9], [0.0, 0.1], [0.0, 0.01], [False, True], [False, True])
           if not (n and (m == 0 or d != 0))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_torch(cfg, isa_level):
    assert_matches(lambda ps: ipex_train.optim.SGD(ps, **cfg),
                   lambda ps: torch.optim.SGD(ps, **cfg), *problem(0, skip=False),
                   ref_key=("SGD", cfg_id(cfg)))


# Thread count and ISA independence: tests/optim/test_fused_ops.py (every optimizer).


def test_state_dict_round_trips_with_torch():
    params, grads = problem(2, skip=False)
    cfg = dict(lr=0.1, momentum=0.9)
    ours, opt = run(lambda ps: ipex_train.optim.SGD(ps, **cfg), params, grads[:10])
    ref, topt = resume(opt, lambda ps: torch.optim.SGD(ps, **cfg))
    step_together([(ours, opt), (ref, topt)], grads[10:20])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_bad_inputs_raise_before_writing():
    good = torch.randn(10, requires_grad=True)
    bad = torch.randn(10, 8)[:, ::2].requires_grad_()  # not dense (any dense layout is fine)
    opt = ipex_train.optim.SGD([good, bad], lr=0.1)
    good.grad, bad.grad = torch.ones(10), torch.ones(10, 4)
    before = good.detach().clone()
    with pytest.raises(ValueError, match="must be dense"):
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


@pytest.mark.parametrize("groups", ["one", "two"])
def test_bad_dense_param_leaves_sparse_params_unchanged(groups):
    """Sparse grads are checked in Python and applied after the multi-tensor
    call, so a dense param the native op refuses stops the step before any
    write, also when the sparse param comes first."""
    emb = torch.nn.Embedding(10, 3, sparse=True)
    bad = torch.randn(6, 8)[:, ::2].requires_grad_()  # not dense
    ps = [emb.weight, bad]
    opt = ipex_train.optim.SGD([{"params": ps}] if groups == "one" else
                               [{"params": [p]} for p in ps], lr=0.1)
    emb(torch.tensor([1, 2, 1])).sum().backward()
    bad.grad = torch.ones(6, 4)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match="must be dense"):
        opt.step()
    for p, b in zip(ps, before):
        assert torch.equal(p.detach(), b)
