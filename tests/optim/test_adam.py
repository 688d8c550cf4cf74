"""ipex_train.optim.Adam / AdamW against torch.optim.Adam / AdamW."""
import itertools

import pytest
import torch

import ipex_train
from optim_testlib import (assert_matches, assert_training_matches, cfg_id, problem,
                           resume, run, step_together)

CONFIGS = [dict(lr=lr, betas=b, weight_decay=wd, amsgrad=ams, maximize=mx)
           for lr, b, wd, ams, mx in itertools.product(
               [0.01], [(0.9, 0.999), (0.2, 0.5)], [0.0, 0.1], [False, True], [False, True])]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_torch(cls, cfg, isa_level):
    assert_matches(lambda ps: getattr(ipex_train.optim, cls)(ps, **cfg),
                   lambda ps: getattr(torch.optim, cls)(ps, **cfg), *problem(0),
                   ref_key=(cls, cfg_id(cfg)))


def test_decoupled_weight_decay_flag_matches_adamw():
    cfg = dict(lr=0.01, weight_decay=0.1)
    assert_matches(lambda ps: ipex_train.optim.Adam(ps, decoupled_weight_decay=True, **cfg),
                   lambda ps: torch.optim.AdamW(ps, **cfg), *problem(3, steps=10))


def test_state_dict_round_trips_with_torch():
    params, grads = problem(2, steps=20)
    cfg = dict(lr=0.05, amsgrad=True, weight_decay=0.01)
    # torch -> ours
    tps, topt = run(lambda ps: torch.optim.Adam(ps, **cfg), params, grads[:10])
    ops, opt = resume(topt, lambda ps: ipex_train.optim.Adam(ps, **cfg))
    step_together([(tps, topt), (ops, opt)], grads[10:])
    for a, b in zip(ops, tps):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sd["state"].keys() == tsd["state"].keys()
    for k in sd["state"]:
        assert sd["state"][k].keys() == tsd["state"][k].keys()
        assert sd["state"][k]["step"].dtype == torch.float32
        assert sd["state"][k]["step"].item() == tsd["state"][k]["step"].item()
    # ours -> torch
    _, topt2 = resume(opt, lambda ps: torch.optim.Adam(ps, **cfg))
    for k in sd["state"]:
        for key, v in sd["state"][k].items():
            torch.testing.assert_close(topt2.state_dict()["state"][k][key], v)


def test_lr_scheduler_closure_add_param_group():
    assert_training_matches(lambda ps: ipex_train.optim.Adam(ps, lr=0.1),
                            lambda ps: torch.optim.Adam(ps, lr=0.1), *problem(4, steps=12),
                            first=4, add_at=5, extra_group=dict(lr=0.02, amsgrad=True),
                            step_size=3)


def test_tensor_lr():
    assert_matches(lambda ps: ipex_train.optim.AdamW(ps, lr=torch.tensor(0.01)),
                   lambda ps: torch.optim.AdamW(ps, lr=0.01), *problem(5, steps=5, skip=False))


def test_constructor_checks():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="differentiable"):
        ipex_train.optim.Adam(p, differentiable=True)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        ipex_train.optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        ipex_train.optim.AdamW(p, lr=-1.0)
    ipex_train.optim.Adam(p, foreach=True, fused=True, capturable=True)  # accepted, ignored
