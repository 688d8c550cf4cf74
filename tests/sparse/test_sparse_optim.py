"""Sparse gradients in ipex_train.optim: SGD and SparseAdam against torch,
RowWiseAdagrad against a plain-PyTorch reference; fp32 and split bf16."""
import pytest
import torch

import ipex_train
from ipex_train.sparse import join_split, split_fp32

ROWS, DIM = 300, 13


def _grads(steps, seed, nnz=700, rows=ROWS, dim=DIM):
    """Uncoalesced sparse grads with duplicates, as nn.Embedding(sparse=True) makes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, rows // 3, (1, nnz), generator=g) * 3  # only some rows touched
        # bf16-representable values: the split-bf16 runs get the same grads in bf16
        vals = torch.randn(nnz, dim, generator=g).bfloat16().float()
        out.append(torch.sparse_coo_tensor(idx, vals, (rows, dim),
                                           check_invariants=True))
    return out


def _train(cls, grads, split=False, w0=None, **kw):
    w0 = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(5)) if w0 is None else w0
    if split:
        top, trail = split_fp32(w0)
        p = torch.nn.Parameter(top)
        opt = cls([p], **kw)
        opt.state[p]["trail"] = trail
    else:
        p = torch.nn.Parameter(w0.clone())
        opt = cls([p], **kw)
    for g in grads:
        p.grad = g.to(p.dtype)
        opt.step()
    w = join_split(p.detach(), opt.state[p]["trail"]) if split else p.detach()
    return w, opt


SGD_CFGS = [dict(lr=0.1), dict(lr=0.05, maximize=True)]


@pytest.mark.parametrize("cfg", SGD_CFGS)
def test_sgd_sparse_matches_torch(cfg, isa_level):
    grads = _grads(20, 0)
    ours, _ = _train(ipex_train.optim.SGD, grads, **cfg)
    ref, _ = _train(torch.optim.SGD, grads, **cfg)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    split, _ = _train(ipex_train.optim.SGD, grads, split=True, **cfg)
    assert torch.equal(split, ours)


@pytest.mark.parametrize("cfg", [dict(momentum=0.9), dict(weight_decay=0.1)])
def test_sgd_sparse_rejects_what_torch_cannot_do(cfg):
    p = torch.nn.Parameter(torch.randn(ROWS, DIM))
    dense = torch.nn.Parameter(torch.randn(5))
    opt = ipex_train.optim.SGD([dense, p], lr=0.1, **cfg)
    dense.grad = torch.ones(5)
    p.grad = _grads(1, 0)[0]
    before = (p.detach().clone(), dense.detach().clone())
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(dense, before[1])


ADAM_CFGS = [dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, maximize=True)]


@pytest.mark.parametrize("cfg", ADAM_CFGS)
def test_sparse_adam_matches_torch(cfg, isa_level):
    grads = _grads(20, 1)
    ours, opt = _train(ipex_train.optim.SparseAdam, grads, **cfg)
    ref, ropt = _train(torch.optim.SparseAdam, grads, **cfg)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    p, rp = opt.param_groups[0]["params"][0], ropt.param_groups[0]["params"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        # duplicate rows are summed in another order than torch.coalesce: float tolerance
        torch.testing.assert_close(opt.state[p][key], ropt.state[rp][key], rtol=1e-4, atol=1e-5)
    assert opt.state[p]["step"] == 20
    split, _ = _train(ipex_train.optim.SparseAdam, grads, split=True, **cfg)
    assert torch.equal(split, ours)


def test_sparse_adam_rejects_dense():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ipex_train.optim.SparseAdam([p])
    p.grad = torch.ones(4, 3)
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()


def _rowwise_reference(w0, grads, lr, eps, dense):
    w, s = w0.clone(), torch.zeros(w0.shape[0])
    for g in grads:
        if dense:
            gv, rows = g, torch.arange(w.shape[0])
        else:
            g = g.coalesce()
            rows, gv = g.indices()[0], g.values()
        s[rows] += (gv * gv).mean(1)
        w[rows] -= (lr / (s[rows].sqrt() + eps))[:, None] * gv
    return w, s


@pytest.mark.parametrize("dense", [False, True])
def test_rowwise_adagrad_matches_reference(dense, isa_level):
    grads = _grads(20, 2)
    if dense:
        grads = [g.to_dense().bfloat16().float() for g in grads]  # exact in bf16 too
    w0 = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(5))
    ours, opt = _train(ipex_train.optim.RowWiseAdagrad, grads, w0=w0, lr=0.05, eps=1e-8)
    ref, ref_sum = _rowwise_reference(w0, grads, 0.05, 1e-8, dense)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    p = opt.param_groups[0]["params"][0]
    torch.testing.assert_close(opt.state[p]["sum"], ref_sum, rtol=1e-5, atol=1e-6)
    split, _ = _train(ipex_train.optim.RowWiseAdagrad, grads, split=True, w0=w0, lr=0.05, eps=1e-8)
    assert torch.equal(split, ours)


@pytest.mark.parametrize("cls,cfg", [(ipex_train.optim.SparseAdam, dict(lr=1e-2)),
                                     (ipex_train.optim.RowWiseAdagrad, dict(lr=0.1)),
                                     (ipex_train.optim.SGD, dict(lr=0.1))])
def test_bitwise_across_threads_and_isa(cls, cfg, threads):
    grads = _grads(3, 3, nnz=6000)
    threads(1)
    base, _ = _train(cls, grads, **cfg)
    for level in ipex_train.available_isas():
        with ipex_train.force_isa(level):
            for n in (1, 2):
                threads(n)
                got, _ = _train(cls, grads, **cfg)
                assert torch.equal(got, base), (level, n)


def test_row_update_bad_inputs_leave_state_unchanged():
    w, s = torch.randn(10, 4), torch.zeros(10)
    g = torch.sparse_coo_tensor(torch.tensor([[1, 10]]), torch.randn(2, 4), (10, 4),
                                check_invariants=False)
    with pytest.raises(IndexError, match="out of range"):
        ipex_train.sparse.rowwise_adagrad_(w.clone(), g, s, 0.1)
    assert torch.equal(s, torch.zeros(10))
    with pytest.raises(ValueError, match="state1"):
        ipex_train.sparse.rowwise_adagrad_(w, torch.randn(10, 4), torch.zeros(9), 0.1)
    with pytest.raises(TypeError, match="float32"):
        ipex_train.sparse.sparse_adagrad_(w, g, torch.zeros(10, 4, dtype=torch.float64), 0.1)


def _one(*h):
    return [[x] for x in h]


def test_opcheck_row_update():
    """Every rule, fp32 and split, sparse and dense grads. opcheck's schema test
    cannot read a sparse tensor's storage, so sparse grads skip that one test."""
    w = torch.randn(20, 5)
    top, trail = split_fp32(w)
    sp = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1, 19]]), torch.randn(4, 5), (20, 5))
    op = torch.ops.ipex_train.sparse_row_update_.default
    cases = [
        ([w], [], [torch.zeros(20)], [], "rowwise_adagrad", _one(0.1, 1e-8, 0.0, 0.0, 0.0, False)),
        ([w], [], [torch.zeros(20, 5)], [torch.zeros(20, 5)], "adam",
         _one(0.1, 1e-8, 0.9, 0.99, 0.05, False)),
        ([top], [trail], [torch.zeros(20, 5)], [], "adagrad", _one(0.1, 1e-10, 0.0, 0.0, 0.0, True)),
        ([w, top], [], [], [], "sgd", [[0.1, 0.2], [0.0] * 2, [0.0] * 2, [0.0] * 2, [0.0] * 2,
                                       [False, True]]),
    ]
    for params, trails, s1, s2, rule, hyper in cases:
        if params[-1] is top and not trails:
            params = [top, w]
            trails = [trail]
        for g in (sp, sp.to_dense()):
            utils = [u for u in ("test_schema", "test_autograd_registration", "test_faketensor",
                                 "test_aot_dispatch_dynamic") if g.layout is torch.strided or u != "test_schema"]
            grads = [(g if p.dtype == torch.float32 else g.bfloat16()) for p in params]
            torch.library.opcheck(op, (params, grads, trails, s1, s2, rule, *hyper),
                                  test_utils=utils)


def test_row_update_refuses_unknown_rule_and_list_lengths():
    w = torch.randn(4, 2)
    g = torch.randn(4, 2)
    op = torch.ops.ipex_train.sparse_row_update_
    with pytest.raises(ValueError, match="unknown update rule 'adamw'"):
        op([w], [g], [], [torch.zeros(4)], [], "adamw", *_one(0.1, 0.0, 0.0, 0.0, 0.0, False))
    with pytest.raises(ValueError, match="2 state1 tensors, expected 1"):
        op([w], [g], [], [torch.zeros(4)] * 2, [], "rowwise_adagrad",
           *_one(0.1, 0.0, 0.0, 0.0, 0.0, False))
    with pytest.raises(ValueError, match="one entry per param"):
        op([w], [g], [], [torch.zeros(4)], [], "rowwise_adagrad", [0.1, 0.2],
           *_one(0.0, 0.0, 0.0, 0.0, False))


ADAGRAD_CFGS = [dict(lr=0.1), dict(lr=0.05, lr_decay=0.01, eps=1e-8, initial_accumulator_value=0.1,
                                   maximize=True)]


@pytest.mark.parametrize("cfg", ADAGRAD_CFGS)
def test_adagrad_sparse_matches_torch(cfg, isa_level):
    grads = _grads(20, 4)
    ours, opt = _train(ipex_train.optim.Adagrad, grads, **cfg)
    ref, ropt = _train(torch.optim.Adagrad, grads, **cfg)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    p, rp = opt.param_groups[0]["params"][0], ropt.param_groups[0]["params"][0]
    # duplicate rows are summed in another order than torch.coalesce: float tolerance
    torch.testing.assert_close(opt.state[p]["sum"], ropt.state[rp]["sum"], rtol=1e-4, atol=1e-5)
    assert float(opt.state[p]["step"]) == 20
    split, _ = _train(ipex_train.optim.Adagrad, grads, split=True, **cfg)
    assert torch.equal(split, ours)


def test_adagrad_sparse_rejects_weight_decay():
    p = torch.nn.Parameter(torch.randn(ROWS, DIM))
    opt = ipex_train.optim.Adagrad([p], lr=0.1, weight_decay=0.1)
    p.grad = _grads(1, 0)[0]
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="weight_decay"):
        opt.step()
    assert torch.equal(p, before)
