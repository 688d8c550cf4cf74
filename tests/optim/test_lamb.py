"""ipex_train.optim.Lamb against a plain-PyTorch LAMB written here."""
import itertools

import pytest
import torch

import ipex_train
from optim_testlib import assert_matches, cfg_id, problem, resume, run, step_together


class RefLamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019) in plain PyTorch ops, one tensor at a time."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 max_trust_ratio=10.0, bias_correction=True, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_trust_ratio=max_trust_ratio,
                                      bias_correction=bias_correction, maximize=maximize))

    @torch.no_grad()
    def step(self):
        for gr in self.param_groups:
            b1, b2 = gr["betas"]
            for p in gr["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if gr["maximize"] else p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                t, m, v = st["step"], st["m"], st["v"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if gr["bias_correction"] else (1.0, 1.0)
                r = (m / bc1) / ((v / bc2).sqrt() + gr["eps"])
                if gr["weight_decay"]:
                    r = r + gr["weight_decay"] * p
                wn, rn = p.double().norm().item(), r.double().norm().item()
                ratio = wn / rn if wn > 0 and rn > 0 else 1.0
                if gr["max_trust_ratio"] is not None:
                    ratio = min(ratio, gr["max_trust_ratio"])
                p.sub_(r * (gr["lr"] * ratio))


CONFIGS = [dict(lr=0.01, weight_decay=wd, max_trust_ratio=mtr, bias_correction=bc, maximize=mx)
           for wd, mtr, bc, mx in itertools.product([0.0, 0.01], [10.0, None], [True, False],
                                                    [False, True])]


@pytest.mark.parametrize("scale", [1.0, 50.0])  # 50: trust ratios beyond the clip
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_reference(cfg, scale, isa_level):
    params, grads = problem(0, scale=scale)
    params[1].zero_()  # a zero-norm param: trust ratio 1
    assert_matches(lambda ps: ipex_train.optim.Lamb(ps, **cfg), lambda ps: RefLamb(ps, **cfg),
                   params, grads, ref_key=("Lamb", cfg_id(cfg), scale), atol=1e-5 * scale)


def test_state_dict_round_trip():
    params, grads = problem(1, steps=20)
    cfg = dict(lr=0.01, weight_decay=0.01)
    ps, opt = run(lambda ps: ipex_train.optim.Lamb(ps, **cfg), params, grads[:10])
    qs, opt2 = resume(opt, lambda ps: ipex_train.optim.Lamb(ps, **cfg))
    step_together([(ps, opt), (qs, opt2)], grads[10:])
    for a, b in zip(ps, qs):
        assert torch.equal(a, b)
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_constructor_checks():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="differentiable"):
        ipex_train.optim.Lamb(p, differentiable=True)
    with pytest.raises(ValueError, match="max_trust_ratio"):
        ipex_train.optim.Lamb(p, max_trust_ratio=-1.0)
