"""Autograd version counters: every tensor our native ops write gets its
version bumped, as torch's in-place ops do (issue #12 item 2), so autograd
refuses a backward through a value an optimizer step or sparse_add_ changed."""
import pytest
import torch
from torch import nn

import ipex_train

DENSE = {
    "SGD": lambda ps: ipex_train.optim.SGD(ps, lr=0.1, momentum=0.9),
    "Adam": lambda ps: ipex_train.optim.Adam(ps, lr=0.1),
    "AdamW": lambda ps: ipex_train.optim.AdamW(ps, lr=0.1),
    "Adagrad": lambda ps: ipex_train.optim.Adagrad(ps, lr=0.1),
    "Lamb": lambda ps: ipex_train.optim.Lamb(ps, lr=0.1),
    "RowWiseAdagrad": lambda ps: ipex_train.optim.RowWiseAdagrad(ps, lr=0.1),
}


def _writing_ops():
    out = []
    for name in torch._C._dispatch_get_all_op_names():
        if not name.startswith("ipex_train::"):
            continue
        for schema in torch._C._jit_get_schemas_for_operator(name):
            if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
                out.append(name)
    return sorted(set(out))


def test_every_writing_op_bumps_versions():
    ops = _writing_ops()
    assert "ipex_train::sgd_step_" in ops and "ipex_train::sparse_add_" in ops
    missing = [op for op in ops
               if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "ADInplaceOrView")]
    assert not missing, f"ops that write tensors without bumping versions: {missing}"


@pytest.mark.parametrize("name", sorted(DENSE))
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_step_then_second_backward_raises_like_torch(name, bf16):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = DENSE[name](model.parameters())
    if bf16:
        model, opt = ipex_train.optimize(model, opt, dtype=torch.bfloat16)
    x = torch.randn(5, 4, requires_grad=True)  # so that mm saves the weight for x's grad
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = (model(x) ** 2).sum()
    y.backward(retain_graph=True)
    versions = [p._version for p in model.parameters()]
    state_versions = {k: v._version for p in model.parameters()
                      for k, v in opt.state[p].items() if torch.is_tensor(v)}
    opt.step()
    assert all(p._version > v for p, v in zip(model.parameters(), versions))
    for p in model.parameters():  # trails, moments, step tensors: all written
        for k, v in opt.state[p].items():
            if torch.is_tensor(v) and k in state_versions:
                assert v._version > state_versions[k], k
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("cls", ["SGD", "Adagrad", "SparseAdam", "RowWiseAdagrad"])
def test_sparse_grad_steps_bump_versions(cls):
    emb = nn.Embedding(10, 3, sparse=True)
    opt = getattr(ipex_train.optim, cls)(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2, 2])).sum().backward()
    v = emb.weight._version
    opt.step()
    assert emb.weight._version > v


def test_sparse_add_bumps_version_and_saved_views_refuse_backward():
    w = torch.randn(6, 3, requires_grad=True)
    base = w.detach()
    g = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.ones(2, 3), (6, 3))
    y = (base[1:3] * w[1:3]).sum()  # saves a view of base
    v = base._version
    ipex_train.sparse.sparse_add_(base, g, 0.5)
    assert base._version > v
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    v = base._version
    torch.ops.ipex_train.sparse_add_(base, None, torch.tensor([0]), torch.ones(1, 3), 1.0)
    assert base._version > v  # the raw op too


def test_refused_step_bumps_nothing():
    good, bad = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
    opt = ipex_train.optim.Adam([{"params": [good]}, {"params": [bad]}], lr=0.1)
    good.grad, bad.grad = torch.randn(4), torch.randn(4)
    opt.step()
    opt.state[bad]["exp_avg"] = torch.zeros(5)  # checked before anything is written
    v = good._version, bad._version
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert (good._version, bad._version) == v
