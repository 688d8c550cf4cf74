"""ipex_train.optim.Adam / AdamW against torch.optim.Adam / AdamW."""
import copy
import itertools

import pytest
import torch

import ipex_train
from optim_testlib import cfg_id, problem, run

CONFIGS = [dict(lr=lr, betas=b, weight_decay=wd, amsgrad=ams, maximize=mx)
           for lr, b, wd, ams, mx in itertools.product(
               [0.01], [(0.9, 0.999), (0.2, 0.5)], [0.0, 0.1], [False, True], [False, True])]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_torch(cls, cfg, isa_level):
    params, grads = problem(0)
    ours, _ = run(lambda ps: getattr(ipex_train.optim, cls)(ps, **cfg), params, grads)
    ref, _ = run(lambda ps: getattr(torch.optim, cls)(ps, **cfg), params, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_flag_matches_adamw():
    params, grads = problem(3, steps=10)
    cfg = dict(lr=0.01, weight_decay=0.1)
    ours, _ = run(lambda ps: ipex_train.optim.Adam(ps, decoupled_weight_decay=True, **cfg),
                  params, grads)
    ref, _ = run(lambda ps: torch.optim.AdamW(ps, **cfg), params, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trips_with_torch():
    params, grads = problem(2, steps=20)
    cfg = dict(lr=0.05, amsgrad=True, weight_decay=0.01)
    # torch -> ours
    tps, topt = run(lambda ps: torch.optim.Adam(ps, **cfg), params, grads[:10])
    ops = [p.detach().clone().requires_grad_() for p in tps]
    opt = ipex_train.optim.Adam(ops, **cfg)
    opt.load_state_dict(copy.deepcopy(topt.state_dict()))
    for row in grads[10:]:
        for p, q, g in zip(tps, ops, row):
            p.grad = q.grad = None if g is None else g.clone()
        topt.step()
        opt.step()
    for a, b in zip(ops, tps):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sd["state"].keys() == tsd["state"].keys()
    for k in sd["state"]:
        assert sd["state"][k].keys() == tsd["state"][k].keys()
        assert sd["state"][k]["step"].dtype == torch.float32
        assert sd["state"][k]["step"].item() == tsd["state"][k]["step"].item()
    # ours -> torch
    topt2 = torch.optim.Adam([p.detach().clone().requires_grad_() for p in ops], **cfg)
    topt2.load_state_dict(copy.deepcopy(sd))
    for k in sd["state"]:
        for key, v in sd["state"][k].items():
            torch.testing.assert_close(topt2.state_dict()["state"][k][key], v)


def test_lr_scheduler_closure_add_param_group():
    params, grads = problem(4, steps=12)

    def drive(mod):
        ps = [p.clone().requires_grad_() for p in params]
        opt = mod.Adam(ps[:4], lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        losses = []
        for t, row in enumerate(grads):
            if t == 5:
                opt.add_param_group(dict(params=ps[4:], lr=0.02, amsgrad=True))
            opt.zero_grad()
            for p, g in zip(ps, row):
                if g is not None:
                    p.grad = g.clone()
            losses.append(opt.step(lambda: torch.tensor(float(t))))
            sched.step()
        return ps, losses

    ours, ol = drive(ipex_train.optim)
    ref, rl = drive(torch.optim)
    assert ol == rl
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tensor_lr():
    params, grads = problem(5, steps=5, skip=False)
    ours, _ = run(lambda ps: ipex_train.optim.AdamW(ps, lr=torch.tensor(0.01)), params, grads)
    ref, _ = run(lambda ps: torch.optim.AdamW(ps, lr=0.01), params, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_constructor_checks():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="differentiable"):
        ipex_train.optim.Adam(p, differentiable=True)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        ipex_train.optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        ipex_train.optim.AdamW(p, lr=-1.0)
    ipex_train.optim.Adam(p, foreach=True, fused=True, capturable=True)  # accepted, ignored
