"""Checkpoints of split-bf16 training: optimizer state dicts keep trails and
fp32 state, fp32 state dicts are exact, resuming is bit-exact."""
import copy
import io

import pytest
import torch
from torch import nn

import ipex_train
from bf16_helpers import TinyDLRM, make_optimizer, mlp, optimizer_cases


def _batch(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, 4, generator=g)
    sparse = [torch.randint(0, r, (n, 3), generator=g) for r in (50, 80, 30)]
    y = torch.randint(0, 2, (n, 1), generator=g).float()
    return dense, sparse, y


def _train(model, opt, steps):
    for s in steps:
        dense, sparse, y = _batch(s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(dense, sparse)
        loss = nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fresh(name, cfg):
    model = TinyDLRM(seed=1)
    return ipex_train.optimize(model, make_optimizer(name, model.parameters(), cfg),
                               dtype=torch.bfloat16)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)


def _bits(sd):
    return {k: v.view(torch.int32) if v.dtype == torch.float32 else v for k, v in sd.items()}


def _assert_same(a, b):
    a, b = _bits(a), _bits(b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name,cfg", optimizer_cases()[1::2])
def test_resume_is_bit_exact(name, cfg):
    model, opt = _fresh(name, cfg)
    _train(model, opt, range(0, 4))
    ckpt = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
    _train(model, opt, range(4, 8))
    want = ipex_train.fp32_state_dict(model, opt)

    model2, opt2 = _fresh(name, cfg)  # a new process would start like this
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    for p in model2.parameters():
        st = opt2.state[p]
        assert st["trail"].dtype == torch.int16
        for k, v in st.items():
            if k not in ("trail", "step") and isinstance(v, torch.Tensor):
                assert v.dtype == torch.float32, k
    _train(model2, opt2, range(4, 8))
    _assert_same(ipex_train.fp32_state_dict(model2, opt2), want)


@pytest.mark.parametrize("name,cfg", optimizer_cases()[1::2])
def test_resume_from_fp32_state_dict_is_bit_exact(name, cfg):
    model, opt = _fresh(name, cfg)
    _train(model, opt, range(0, 3))
    ckpt = _roundtrip({"model": ipex_train.fp32_state_dict(model, opt), "opt": opt.state_dict()})
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())
    _train(model, opt, range(3, 6))
    want = ipex_train.fp32_state_dict(model, opt)

    model2, opt2 = _fresh(name, cfg)
    opt2.load_state_dict(ckpt["opt"])
    ipex_train.load_fp32_state_dict(model2, opt2, ckpt["model"])
    _train(model2, opt2, range(3, 6))
    _assert_same(ipex_train.fp32_state_dict(model2, opt2), want)


def test_fp32_state_dict_round_trip_exact():
    base = mlp([5, 7, 3], seed=0)
    with torch.no_grad():  # values whose low 16 bits are not zero
        for p in base.parameters():
            p.add_(torch.randn(p.shape) * 1e-3)
    want = copy.deepcopy(base.state_dict())
    model = copy.deepcopy(base)
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     dtype=torch.bfloat16)
    got = ipex_train.fp32_state_dict(model, opt)
    _assert_same(got, want)
    # load other fp32 weights, read them back exactly, and into a plain fp32 model
    other = mlp([5, 7, 3], seed=1).state_dict()
    ipex_train.load_fp32_state_dict(model, opt, other)
    _assert_same(ipex_train.fp32_state_dict(model, opt), other)
    plain = mlp([5, 7, 3], seed=2)
    plain.load_state_dict(ipex_train.fp32_state_dict(model, opt))
    _assert_same(plain.state_dict(), other)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_load_fp32_state_dict_checks_before_writing():
    model = mlp([5, 7, 3], seed=0)
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     dtype=torch.bfloat16)
    before = ipex_train.fp32_state_dict(model, opt)
    good = mlp([5, 7, 3], seed=1).state_dict()
    bad_shape = dict(good, **{"2.weight": torch.zeros(3, 8)})
    with pytest.raises(ValueError, match=r"'2.weight' has shape"):
        ipex_train.load_fp32_state_dict(model, opt, bad_shape)
    missing = {k: v for k, v in good.items() if k != "0.bias"}
    with pytest.raises(KeyError, match="0.bias"):
        ipex_train.load_fp32_state_dict(model, opt, missing)
    bad_dtype = dict(good, **{"0.bias": torch.zeros(7, dtype=torch.int64)})
    with pytest.raises(TypeError, match="floating point"):
        ipex_train.load_fp32_state_dict(model, opt, bad_dtype)
    _assert_same(ipex_train.fp32_state_dict(model, opt), before)


def test_optimizer_load_state_dict_rejects_checkpoints_without_trails():
    model = mlp([5, 7, 3], seed=0)
    fp32_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1,
                                                            momentum=0.9), dtype=torch.bfloat16)
    trails = [opt.state[p]["trail"].clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="no 'trail'"):
        opt.load_state_dict(fp32_opt.state_dict())
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    bad["state"][1]["trail"] = bad["state"][1]["trail"].to(torch.int32)
    with pytest.raises(ValueError, match="int16"):
        opt.load_state_dict(bad)
    for p, t in zip(model.parameters(), trails):  # nothing changed
        assert torch.equal(opt.state[p]["trail"], t)
    # and the other way round: a split checkpoint into an fp32 optimizer of ours
    plain = mlp([5, 7, 3], seed=0)
    ours32 = ipex_train.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="trail"):
        ours32.load_state_dict(sd)
