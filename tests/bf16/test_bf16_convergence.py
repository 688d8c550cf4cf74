"""Split-bf16 training converges like fp32; plain bf16 weights do not.

Each model is trained three ways from the same initial weights on the same
full-batch data for the same number of steps: (1) fp32 weights, fp32 compute,
torch.optim; (2) ours: ipex_train.optimize(dtype=bfloat16) under bf16
autocast; (3) plain bf16 weights (model.to(bfloat16)) with torch.optim under
the same autocast. The final loss is evaluated in fp32 on each run's weights
(rebuilt fp32 masters for (2)). Small updates vanish when added to bf16
weights directly, so (3) stalls, while (2) accumulates them in fp32.
"""
import copy

import pytest
import torch
from torch import nn

import ipex_train
from bf16_helpers import TinyDLRM, mlp


def _train(base, data, loss_fn, kind, steps, make_opt):
    model = copy.deepcopy(base)
    if kind == "fp32":
        opt = make_opt(model.parameters())
    elif kind == "split":
        model, opt = ipex_train.optimize(model, make_opt(model.parameters()), dtype=torch.bfloat16)
    else:
        model = model.to(torch.bfloat16)
        opt = make_opt(model.parameters())
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind != "fp32"):
            out = model(*data[:-1])
        loss = loss_fn(out.float(), data[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if kind == "split":
        return ipex_train.fp32_state_dict(model, opt)
    return {k: v.float() for k, v in model.state_dict().items()}


def _fp32_loss(base, sd, data, loss_fn):
    m = copy.deepcopy(base)
    m.load_state_dict(sd)
    with torch.no_grad():
        return loss_fn(m(*data[:-1]), data[-1]).item()


def _compare(base, data, loss_fn, steps, make_opt, behind):
    losses = {k: _fp32_loss(base, _train(base, data, loss_fn, k, steps, make_opt), data, loss_fn)
              for k in ("fp32", "split", "bf16")}
    start = _fp32_loss(base, base.state_dict(), data, loss_fn)
    print(f"start {start:.5f} " + " ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    assert losses["fp32"] < 0.9 * start, "the fp32 run itself must learn"
    assert abs(losses["split"] / losses["fp32"] - 1) < 0.01, losses
    assert losses["bf16"] > behind * losses["fp32"], losses  # visibly behind
    return losses


@pytest.fixture(autouse=True)
def _one_thread(threads):
    threads(1)  # small matrices: one thread is fastest and avoids oversubscription


def test_mlp_split_bf16_matches_fp32_plain_bf16_falls_behind():
    torch.manual_seed(0)
    teacher = mlp([16, 32, 32, 1], seed=10)
    x = torch.randn(256, 16)
    y = teacher(x).detach() + 0.01 * torch.randn(256, 1)
    base = mlp([16, 32, 32, 1], seed=11)
    _compare(base, (x, y), nn.functional.mse_loss, 150,
             lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.9), behind=1.2)


def test_dlrm_like_split_bf16_matches_fp32_plain_bf16_falls_behind():
    g = torch.Generator().manual_seed(0)
    rows = (50, 80, 30)
    n = 512
    dense = torch.randn(n, 4, generator=g)
    sparse = [torch.randint(0, r, (n, 2), generator=g) for r in rows]
    teacher = TinyDLRM(rows, seed=20)
    with torch.no_grad():
        y = (teacher(dense, sparse) > 0).float()  # click labels the student can learn
    base = TinyDLRM(rows, seed=21)
    _compare(base, (dense, sparse, y), nn.functional.binary_cross_entropy_with_logits, 300,
             lambda ps: torch.optim.SGD(ps, lr=0.2), behind=1.1)
