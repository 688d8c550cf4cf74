"""Split-bf16 models on ordinary PyTorch paths (issue #12): loading fp32
weights, Transformers under autocast, progressive unfreezing, memory formats,
schedulers built before optimize, plain contiguous split results."""
import copy
import warnings

import pytest
import torch
from torch import nn

import ipex_train
from ipex_train import bf16_split


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _optimized(seed=0, cls=torch.optim.Adam):
    model = _mlp(seed)
    return ipex_train.optimize(model, cls(model.parameters(), lr=1e-2), dtype=torch.bfloat16)


def test_model_load_state_dict_of_fp32_weights_gives_the_exact_master():
    """Item 1: m.load_state_dict(fp32 sd) after optimize(bf16) makes the fp32
    values the master weights, bit for bit, found with or without the optimizer."""
    model, opt = _optimized()
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).sum().backward()
    opt.step()  # trails no longer zero
    sd = _mlp(1).state_dict()
    model.load_state_dict(sd)
    for got in (ipex_train.fp32_state_dict(model, opt), ipex_train.fp32_state_dict(model)):
        assert got.keys() == sd.keys()
        for k in sd:
            assert got[k].dtype == torch.float32 and torch.equal(_bits(got[k]), _bits(sd[k])), k


def test_load_fp32_state_dict_without_the_optimizer_is_exact():
    model, opt = _optimized()
    sd = _mlp(2).state_dict()
    ipex_train.load_fp32_state_dict(model, None, sd)
    got = ipex_train.fp32_state_dict(model)
    for k in sd:
        assert torch.equal(_bits(got[k]), _bits(sd[k])), k


def test_bf16_model_state_dict_with_optimizer_state_still_resumes_exactly():
    """bf16 values load as they are: model + optimizer state dicts resume exactly,
    in either order."""
    model, opt = _optimized()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 6)).sum().backward()
    opt.step()
    want = ipex_train.fp32_state_dict(model, opt)
    msd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for first_model in (True, False):
        m2, o2 = _optimized(seed=5)
        if first_model:
            m2.load_state_dict(msd)
            o2.load_state_dict(osd)
        else:
            o2.load_state_dict(osd)
            m2.load_state_dict(msd)
        got = ipex_train.fp32_state_dict(m2, o2)
        for k in want:
            assert torch.equal(_bits(got[k]), _bits(want[k])), k


def test_transformer_encoder_layer_trains_under_autocast_and_tracks_fp32():
    """Item 7: LayerNorm params stay fp32, so LayerNorm(x + f(x)) runs under
    autocast; the bf16 run tracks the fp32 run."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    ref = copy.deepcopy(layer)
    layer, opt = ipex_train.optimize(layer, torch.optim.AdamW(layer.parameters(), lr=1e-3),
                                     dtype=torch.bfloat16)
    assert layer.norm1.weight.dtype == torch.float32
    assert layer.linear1.weight.dtype == torch.bfloat16
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 7, 16, generator=g)
        target = torch.randn(4, 7, 16, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (layer(x).float() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_loss = (ref(x) - target).pow(2).mean()
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        assert abs(loss.item() - ref_loss.item()) <= 0.03 * ref_loss.item()
    master = ipex_train.fp32_state_dict(layer, opt)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(master[k], v, rtol=0.05, atol=0.02)


def test_add_param_group_after_optimize_gives_new_bf16_params_a_trail():
    """Item 8: progressive unfreezing. Params outside the optimizer were rounded
    to bf16; added later they get an exact (zero) trail and train."""
    model = _mlp(0)
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    model, opt = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    first = model[0].weight
    assert first.dtype == torch.bfloat16
    value = first.detach().float().clone()
    opt.add_param_group({"params": list(model[0].parameters()), "lr": 0.05})
    assert torch.equal(ipex_train.fp32_state_dict(model, opt)["0.weight"], value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 6)).sum().backward()
    opt.step()
    grad = first.grad.float()
    want = value - 0.05 * grad
    torch.testing.assert_close(ipex_train.fp32_state_dict(model)["0.weight"], want)


def test_scheduler_built_before_optimize_warns_and_drives_the_new_optimizer():
    """Item 11."""
    model = _mlp(0)
    old = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(old, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="scheduler was built on this optimizer before"):
        model, opt = ipex_train.optimize(model, old, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no misleading order warning either
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 6)).sum().backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("shape", [(1,), (1, 1), (3,), (2, 3)])
def test_split_results_are_plain_contiguous(shape):
    """Item 12: one-element params used to keep stride 2 (DDP's bucket warning)."""
    top, trail = bf16_split.split(torch.randn(shape))
    for t in (top, trail):
        assert t.is_contiguous() and t.stride() == torch.empty(shape).stride()
    model = nn.Linear(3, 1)  # bias of one element
    model, _ = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                   dtype=torch.bfloat16)
    assert model.bias.stride() == (1,) and model.bias.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimize_keeps_channels_last_and_steps_match_the_fp32_path(dtype):
    """Item 6: channels_last params train (fp32 and split bf16) and keep their format."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(conv)
    conv, opt = ipex_train.optimize(conv, torch.optim.Adam(conv.parameters(), lr=0.1,
                                                            amsgrad=True), dtype=dtype)
    ref, ref_opt = ipex_train.optimize(ref, torch.optim.Adam(ref.parameters(), lr=0.1,
                                                             amsgrad=True))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for step in range(3):
        g = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(step))
        conv.weight.grad = g.to(dtype).to(memory_format=torch.channels_last)
        ref.weight.grad = g.to(dtype).float().to(memory_format=torch.channels_last)
        conv.bias.grad = ref.bias.grad = None
        opt.step()
        ref_opt.step()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    master = ipex_train.fp32_state_dict(conv, opt)["weight"]
    assert torch.equal(_bits(master), _bits(ref.weight))
