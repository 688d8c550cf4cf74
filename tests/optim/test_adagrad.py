"""ipex_train.optim.Adagrad against torch.optim.Adagrad."""
import itertools

import pytest
import torch

import ipex_train
from optim_testlib import assert_matches, cfg_id, problem, resume, run, step_together

CONFIGS = [dict(lr=0.05, lr_decay=d, weight_decay=wd, initial_accumulator_value=a, maximize=mx)
           for d, wd, a, mx in itertools.product([0.0, 0.01], [0.0, 0.1], [0.0, 0.1],
                                                 [False, True])]


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_torch(cfg, isa_level):
    assert_matches(lambda ps: ipex_train.optim.Adagrad(ps, **cfg),
                   lambda ps: torch.optim.Adagrad(ps, **cfg), *problem(0),
                   ref_key=("Adagrad", cfg_id(cfg)))


def test_state_created_like_torch_and_round_trips():
    params, grads = problem(2, steps=20)
    cfg = dict(lr=0.1, initial_accumulator_value=0.5, lr_decay=0.01)
    fresh = ipex_train.optim.Adagrad([p.clone().requires_grad_() for p in params], **cfg)
    tfresh = torch.optim.Adagrad([p.clone().requires_grad_() for p in params], **cfg)
    a, b = fresh.state_dict(), tfresh.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for key in ("step", "sum"):
            assert torch.equal(a["state"][k][key], b["state"][k][key])
    tps, topt = run(lambda ps: torch.optim.Adagrad(ps, **cfg), params, grads[:10])
    ops, opt = resume(topt, lambda ps: ipex_train.optim.Adagrad(ps, **cfg))
    step_together([(tps, topt), (ops, opt)], grads[10:])
    for x, y in zip(ops, tps):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    _, back = resume(opt, lambda ps: torch.optim.Adagrad(ps, **cfg))
    for k, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            assert torch.equal(back.state_dict()["state"][k][key], v)


def test_sparse_grad_follows_torch_sparse_adagrad():
    # sparse grads go to ipex_train.sparse's rule; tests/sparse/test_sparse_optim.py covers more
    emb = torch.nn.Embedding(10, 3, sparse=True)
    ref = torch.nn.Embedding(10, 3, sparse=True)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    for m, opt in ((emb, ipex_train.optim.Adagrad(emb.parameters())),
                   (ref, torch.optim.Adagrad(ref.parameters()))):
        for _ in range(3):
            m(torch.tensor([1, 2, 1])).sum().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(emb.weight, ref.weight)


def test_sparse_grad_raises_clearly_where_unsupported():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ipex_train.optim.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_constructor_checks():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="differentiable"):
        ipex_train.optim.Adagrad(p, differentiable=True)
    with pytest.raises(ValueError, match="lr_decay"):
        ipex_train.optim.Adagrad(p, lr_decay=-1)
