"""ipex_train.optimize: model conversion, optimizer conversion, errors."""
import copy

import pytest
import torch
from torch import nn

import ipex_train
from ipex_train.optim._base import FusedOptimizer
from tests.bf16.bf16_helpers import OPTIMIZERS, make_optimizer, optimizer_cases


class Zoo(nn.Module):
    """One of each parameterized layer, a custom parameter, a tied weight, and a
    custom method (`inference`) instead of forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        self.bag = nn.EmbeddingBag(20, 8, mode="mean")
        self.conv = nn.Conv1d(8, 8, 3, padding=1, bias=False)  # BN follows
        self.lin = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.scale = nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def inference(self, ids):
        x = self.emb(ids) + self.bag(ids).unsqueeze(1)             # (B, L, 8)
        x = self.bn(self.conv(x.transpose(1, 2))).transpose(1, 2)
        x = self.ln(self.lin(x)) * self.scale
        return self.head(x)                                         # (B, L, 20)


def _ids(seed):
    return torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(seed))


def _loss(model, seed, autocast=True):
    ids = _ids(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model.inference(ids)
    return nn.functional.cross_entropy(out.float().reshape(-1, 20), ids.reshape(-1))


def test_bf16_converts_every_param_in_place():
    model = Zoo()
    params = dict(model.named_parameters())
    fp32 = {k: v.detach().clone() for k, v in params.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out, new = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    assert out is model and isinstance(new, ipex_train.optim.SGD) and new is not opt
    for k, p in model.named_parameters():
        assert p is params[k], "parameters are the same objects"
        # keep_batchnorm_fp32: every normalization layer (BatchNorm, LayerNorm) stays fp32
        want = torch.float32 if k.startswith(("bn.", "ln.")) else torch.bfloat16
        assert p.dtype == want, k
        assert ("trail" in new.state[p]) == (want == torch.bfloat16)
    assert model.head.weight is model.emb.weight
    assert model.steps.dtype == torch.int64 and model.bn.running_mean.dtype == torch.float32
    got = ipex_train.fp32_state_dict(model, new)
    for k, v in fp32.items():
        assert torch.equal(got[k], v), k
    # trains through the custom method, fp32 loop under autocast
    for s in range(3):
        loss = _loss(model, s)
        new.zero_grad()
        loss.backward()
        assert model.lin.weight.grad.dtype == torch.bfloat16
        new.step()
    assert not torch.equal(ipex_train.fp32_state_dict(model, new)["lin.weight"], fp32["lin.weight"])
    with pytest.raises(RuntimeError, match="converted by ipex_train.optimize"):
        opt.step()


def test_batchnorm_split_when_asked():
    model = Zoo()
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     dtype=torch.bfloat16, keep_batchnorm_fp32=False)
    assert model.bn.weight.dtype == torch.bfloat16 and "trail" in opt.state[model.bn.weight]
    assert model.bn.running_var.dtype == torch.bfloat16  # torch's CPU batch_norm needs this
    _loss(model, 0).backward()
    opt.step()


def test_model_alone_rounds_to_nearest():
    model = Zoo()
    w = model.lin.weight.detach().clone()
    out = ipex_train.optimize(model, dtype=torch.bfloat16)
    assert out is model
    assert torch.equal(model.lin.weight.detach(), w.to(torch.bfloat16))
    with torch.no_grad():
        _loss(model, 0)
    assert ipex_train.optimize(Zoo()).lin.weight.dtype == torch.float32


def test_frozen_params_are_rounded_and_have_no_trail():
    model = Zoo()
    w = model.conv.weight.detach().clone()
    model.conv.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    model, opt = ipex_train.optimize(model, torch.optim.SGD(trained, lr=0.1), dtype=torch.bfloat16)
    assert model.conv.weight.dtype == torch.bfloat16 and model.conv.weight not in opt.state
    assert torch.equal(model.conv.weight.detach(), w.to(torch.bfloat16))
    _loss(model, 0).backward()
    opt.step()


def _train_torch(model, opt, seeds, autocast=False):
    for s in seeds:
        opt.zero_grad()
        _loss(model, s, autocast).backward()
        opt.step()


@pytest.mark.parametrize("name,cfg", optimizer_cases())
def test_fp32_mode_carries_state_and_matches_torch(name, cfg):
    if OPTIMIZERS[name][0] is None:
        pytest.skip("no torch.optim peer")
    model = Zoo()
    opt = make_optimizer(name, model.parameters(), cfg)
    _train_torch(model, opt, range(3))
    ref_model = copy.deepcopy(model)
    ref_opt = make_optimizer(name, ref_model.parameters(), cfg)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    model, new = ipex_train.optimize(model, opt)
    assert isinstance(new, FusedOptimizer) and type(new).__name__ == name
    for p in model.parameters():
        assert p.dtype == torch.float32
        for k, v in opt.state[p].items():  # moved, not copied
            if isinstance(v, torch.Tensor) and k != "step":
                assert new.state[p][k] is v
    _train_torch(model, new, range(3, 6))
    _train_torch(ref_model, ref_opt, range(3, 6))
    for (k, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name,cfg", optimizer_cases())
def test_bf16_mode_carries_state(name, cfg):
    """Converting after some fp32 steps: the split run then equals our fp32 run bitwise."""
    model = Zoo()
    opt = make_optimizer(name, model.parameters(), cfg)
    _train_torch(model, opt, range(2))
    twin = copy.deepcopy(model)
    topt = make_optimizer(name, twin.parameters(), cfg)
    topt.load_state_dict(copy.deepcopy(opt.state_dict()))
    model, new = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    twin, tnew = ipex_train.optimize(twin, topt, dtype=torch.float32)
    for s in range(2, 5):  # same (bf16-model) gradients into both
        new.zero_grad()
        _loss(model, s).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.to(q.dtype) if p.grad is not None else None
        new.step()
        tnew.step()
    got = ipex_train.fp32_state_dict(model, new)
    for k, v in twin.named_parameters():  # (the twin ran no forward: buffers differ)
        assert torch.equal(got[k], v.detach()), k


def test_param_groups_and_hyperparameters_carry_over():
    model = Zoo()
    groups = [{"params": list(model.lin.parameters()), "lr": 0.5, "momentum": 0.8},
              {"params": [p for n, p in model.named_parameters() if not n.startswith("lin.")],
               "weight_decay": 1e-2, "my_key": "kept"}]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, fused=True)
    opt.param_groups[0]["initial_lr"] = 0.5  # as an LR scheduler adds
    model, new = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    g0, g1 = new.param_groups
    assert g0["lr"] == 0.5 and g0["momentum"] == 0.8 and g0["nesterov"] and g0["initial_lr"] == 0.5
    assert g1["lr"] == 0.1 and g1["momentum"] == 0.9 and g1["weight_decay"] == 1e-2
    assert g1["my_key"] == "kept"
    assert [p for p in g0["params"]] == list(model.lin.parameters())
    assert new.defaults["lr"] == 0.1 and new.defaults["nesterov"]
    new.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    assert new.param_groups[2]["momentum"] == 0.9


def test_reoptimizing_is_lossless():
    model = Zoo()
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                     dtype=torch.bfloat16)
    _train_torch(model, opt, range(2), autocast=True)
    before = ipex_train.fp32_state_dict(model, opt)
    model, opt2 = ipex_train.optimize(model, opt, dtype=torch.bfloat16)  # again: no change
    after = ipex_train.fp32_state_dict(model, opt2)
    assert all(torch.equal(before[k], after[k]) for k in before)
    model, opt3 = ipex_train.optimize(model, opt2, dtype=torch.float32)  # back to fp32, exactly
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all("trail" not in st for st in opt3.state.values())
    sd = model.state_dict()
    assert all(torch.equal(before[k], sd[k]) for k in before)
    _train_torch(model, opt3, range(2, 3))


def test_bad_inputs_raise_before_anything_changes():
    model = Zoo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.bfloat16"):
        ipex_train.optimize(model, opt, dtype=torch.float16)
    with pytest.raises(TypeError, match="dtype must be"):
        ipex_train.optimize(model, opt, dtype="bfloat16")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ipex_train.optimize([nn.Parameter(torch.zeros(2))], opt)
    stranger = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="param group 1, param 0 .* not a parameter of the model"):
        ipex_train.optimize(model, torch.optim.SGD([{"params": model.parameters()},
                                                    {"params": [stranger]}], lr=0.1),
                            dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="cannot convert a torch.optim.rmsprop.RMSprop"):
        ipex_train.optimize(model, torch.optim.RMSprop(model.parameters()), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="differentiable=True"):
        ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1, differentiable=True),
                            dtype=torch.bfloat16)
    model.scale.data = model.scale.data.double()
    with pytest.raises(TypeError, match="'scale' is torch.float64"):
        ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1), dtype=torch.bfloat16)
    model.scale.data = model.scale.data.float()
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    opt.step()  # the optimizer was not converted: it still works


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.SGD, dict(lr=0.1)),
                                         (torch.optim.Adagrad, dict(lr=0.1)),
                                         (torch.optim.SparseAdam, dict(lr=0.1))])
def test_sparse_gradients_in_bf16_mode_update_exactly(opt_cls, kw):
    """EmbeddingBag(sparse=True) in bf16-split mode: the sparse kernels update
    (top, trail) so the rebuilt fp32 weights equal an fp32 run bit for bit."""
    torch.manual_seed(0)
    ref = nn.EmbeddingBag(50, 8, mode="sum", sparse=True)
    model = nn.EmbeddingBag(50, 8, mode="sum", sparse=True)
    model.load_state_dict(ref.state_dict())
    ref, ref_opt = ipex_train.optimize(ref, opt_cls(ref.parameters(), **kw), dtype=torch.float32)
    model, opt = ipex_train.optimize(model, opt_cls(model.parameters(), **kw), dtype=torch.bfloat16)
    idx = torch.randint(0, 50, (20, 3))
    for step in range(5):
        out = model(idx[step::5])
        grad_out = torch.randn(out.shape)
        out.backward(grad_out.to(out.dtype))
        assert model.weight.grad.is_sparse
        # the fp32 run gets the very same (bf16-valued) gradient
        ref(idx[step::5]).backward(grad_out.bfloat16().float())
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    w = ipex_train.bf16_split.join(model.weight.detach(), opt.state[model.weight]["trail"])
    assert torch.equal(w, ref.weight.detach())


def test_torch_sparse_adam_converts_mid_training_and_keeps_matching():
    """A torch.optim.SparseAdam run is converted after 3 steps (state carried
    over) and then tracks an unconverted torch run."""
    torch.manual_seed(0)
    ref = nn.Embedding(40, 6, sparse=True)
    model = nn.Embedding(40, 6, sparse=True)
    model.load_state_dict(ref.state_dict())
    ref_opt = torch.optim.SparseAdam(ref.parameters(), lr=0.05)
    opt = torch.optim.SparseAdam(model.parameters(), lr=0.05)
    idx = torch.randint(0, 40, (8, 5))
    for step in range(8):
        if step == 3:
            model, opt = ipex_train.optimize(model, opt)
            assert isinstance(opt, ipex_train.optim.SparseAdam)
        for m, o in ((model, opt), (ref, ref_opt)):
            m(idx[step]).pow(2).sum().backward()
            o.step()
            o.zero_grad()
    # our SparseAdam rounds like torch's to ~1 ulp (not bitwise): tolerance as in tests/optim
    torch.testing.assert_close(model.weight, ref.weight, rtol=1e-5, atol=1e-5)


def test_sparse_gradients_with_unsupported_optimizer_raise_before_writing():
    model = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
    model, opt = ipex_train.optimize(model, torch.optim.Adam(model.parameters(), lr=0.1),
                                     dtype=torch.bfloat16)
    w = model.weight.detach().clone()
    model(torch.tensor([[1, 2]])).float().sum().backward()
    assert model.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(model.weight.detach(), w)


def test_conv_and_layernorm_model_trains_without_autocast_on_bf16_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.02),
                                     dtype=torch.bfloat16)
    x = torch.randn(5, 3, 6, 6).bfloat16()
    first = None
    for _ in range(5):
        loss = model(x).float().pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_torch_adam_with_decoupled_weight_decay_becomes_our_adamw():
    model = Zoo()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    model, new = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    assert type(new) is ipex_train.optim.AdamW
    assert new.param_groups[0]["weight_decay"] == 0.1
    _train_torch(model, new, range(2), autocast=True)
