"""Fused optimizers on ordinary PyTorch paths (issue #12): dtypes refused at
construction, torch's group keys, state checked before any write (and on
load), refused steps leaving the state dict as it was, any dense layout."""
import copy

import pytest
import torch
from torch import nn

import ipex_train

CLASSES = {
    "SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.1), "AdamW": dict(lr=0.1),
    "Adagrad": dict(lr=0.1), "Lamb": dict(lr=0.1), "RowWiseAdagrad": dict(lr=0.1),
    "SparseAdam": dict(lr=0.1),
}
TORCH_PEERS = ["SGD", "Adam", "AdamW", "Adagrad"]


def _make(name, params):
    return getattr(ipex_train.optim, name)(params, **CLASSES[name])


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_unsupported_float_dtypes_refused_at_construction(name, dtype):
    """Item 9: no late failure at step()."""
    model = nn.Linear(3, 2).to(dtype)
    with pytest.raises(TypeError, match=f"{name}: .*param group 0, param 0.*{dtype}"):
        _make(name, model.parameters())
    opt = _make(name, [nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(TypeError, match=str(dtype)):
        opt.add_param_group({"params": list(model.parameters())})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", TORCH_PEERS)
def test_param_groups_have_torchs_implementation_keys(name):
    """Item 15: code reading group["foreach"] etc. works as with torch.optim."""
    ours = _make(name, [nn.Parameter(torch.zeros(2))])
    peer = getattr(torch.optim, name)([nn.Parameter(torch.zeros(2))], **CLASSES[name])
    for key in ("foreach", "fused", "differentiable", "capturable", "maximize"):
        if key in peer.param_groups[0]:
            assert key in ours.param_groups[0], key
    assert ours.param_groups[0]["differentiable"] is False


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for g in opt.param_groups
                                             for p in g["params"]]


def _assert_unchanged(opt, snap):
    sd, ps = snap
    now = opt.state_dict()
    assert now["state"].keys() == sd["state"].keys()
    for k, st in sd["state"].items():
        assert now["state"][k].keys() == st.keys()
        for key, v in st.items():
            w = now["state"][k][key]
            assert (torch.equal(v, w) if torch.is_tensor(v) else v == w), (k, key)
    for a, b in zip(ps, [p for g in opt.param_groups for p in g["params"]]):
        assert torch.equal(a, b)


def _linear_and_embedding(rows):
    torch.manual_seed(0)
    return nn.ModuleDict({"lin": nn.Linear(4, 3), "emb": nn.Embedding(rows, 4, sparse=True)})


def _backward(m):
    x = m["emb"](torch.tensor([0, 2, 2, 4]))
    m["lin"](x).sum().backward()


def test_adagrad_load_state_dict_refuses_mismatched_shapes():
    """Item 18: a 6-row model's state does not load into a 5-row model."""
    src = _linear_and_embedding(6)
    src_opt = ipex_train.optim.Adagrad(src.parameters(), lr=0.1)
    _backward(src)
    src_opt.step()
    m = _linear_and_embedding(5)
    opt = ipex_train.optim.Adagrad(m.parameters(), lr=0.1)
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=r"Adagrad.load_state_dict: param group 0, param 2 "
                                         r"\(shape \(5, 4\)\): state 'sum' has shape \(6, 4\)"):
        opt.load_state_dict(src_opt.state_dict())
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("sparse_bad", [True, False], ids=["sparse-param", "dense-param"])
def test_adagrad_bad_state_found_before_any_write(sparse_bad):
    """Item 18: a state tensor of the wrong shape (set by hand) is found before
    the Linear's params or any step counter change; the error names the
    optimizer, group, param and state key."""
    m = _linear_and_embedding(5)
    opt = ipex_train.optim.Adagrad(m.parameters(), lr=0.1)
    bad = m["emb"].weight if sparse_bad else m["lin"].weight
    opt.state[bad]["sum"] = torch.zeros(bad.shape[0] + 1, bad.shape[1])
    _backward(m)
    snap = _snapshot(opt)
    where = "param 2 (shape (5, 4))" if sparse_bad else "param 0 (shape (3, 4))"
    with pytest.raises(ValueError, match=rf"Adagrad: param group 0, {re_escape(where)}: .*sum"):
        opt.step()
    _assert_unchanged(opt, snap)


def re_escape(s):
    import re
    return re.escape(s)


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("groups", [1, 2])
def test_refused_first_step_leaves_the_state_dict_as_it_was(name, groups):
    """Item 19: no fresh step=0 / zero moments / empty entries after a refused step."""
    torch.manual_seed(0)
    good, bad = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4, 3))
    opt = _make(name, [{"params": [good]}, {"params": [bad]}] if groups == 2 else [good, bad])
    sparse = name == "SparseAdam"
    mk = (lambda t: t.to_sparse(1)) if sparse else (lambda t: t)
    good.grad = mk(torch.randn(5, 3))
    bad.grad_dtype = None  # torch's switch for a grad unlike its param
    bad.grad = mk(torch.randn(4, 3)).double()
    snap = _snapshot(opt)
    with pytest.raises((TypeError, ValueError)):
        opt.step()
    _assert_unchanged(opt, snap)
    bad.grad = mk(torch.randn(4, 3))
    opt.step()  # and the optimizer still works
    assert not torch.equal(good.detach(), snap[1][0])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad"])
def test_channels_last_and_transposed_params_step_like_torch(name):
    """Item 6: any dense layout where param, grad and state share strides."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    t = nn.Parameter(torch.randn(6, 5).t())  # transposed: dense, not contiguous
    ref_conv, ref_t = copy.deepcopy(conv), copy.deepcopy(t)
    ours = _make(name, list(conv.parameters()) + [t]) if name != "SGD" else \
        ipex_train.optim.SGD(list(conv.parameters()) + [t], lr=0.1, momentum=0.9)
    peer = getattr(torch.optim, name)(list(ref_conv.parameters()) + [ref_t], **CLASSES[name])
    for step in range(3):
        for m, p in ((conv, t), (ref_conv, ref_t)):
            g = torch.Generator().manual_seed(step)
            m.weight.grad = torch.randn(m.weight.shape, generator=g).to(
                memory_format=torch.channels_last)
            m.bias.grad = torch.randn(m.bias.shape, generator=g)
            p.grad = torch.randn(6, 5, generator=g).t()
        ours.step()
        peer.step()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.weight, ref_conv.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t, ref_t, rtol=1e-6, atol=1e-6)


def test_non_dense_params_and_mismatched_grad_layouts():
    base = torch.randn(6, 8)
    p = nn.Parameter(base[:, ::2])  # overlapping-free but not dense
    opt = ipex_train.optim.Adam([p], lr=0.1)
    p.grad = torch.randn(6, 4)
    with pytest.raises(ValueError, match="dense"):
        opt.step()
    q = nn.Parameter(torch.randn(5, 3))
    ref = copy.deepcopy(q)
    opt, peer = ipex_train.optim.Adam([q], lr=0.1), torch.optim.Adam([ref], lr=0.1)
    g = torch.randn(3, 5).t()  # a grad laid out unlike its param is copied, not refused
    q.grad, ref.grad = g, g.clone()
    opt.step()
    peer.step()
    torch.testing.assert_close(q, ref, rtol=1e-6, atol=1e-6)
