"""FusedEmbeddingBag(Collection) against nn.EmbeddingBag(sparse=True) + torch
optimizers (a plain-PyTorch reference for row-wise Adagrad) over 20 steps."""
import copy
import re

import pytest
import torch
from torch import nn

import ipex_train
from ipex_train.sparse import FusedEmbeddingBag, FusedEmbeddingBagCollection, TableConfig

from _bags import RowWiseRef, random_bags

LR = {"sgd": 0.1, "adagrad": 0.05, "rowwise_adagrad": 0.05}


def _reference(table, optimizer, mode, padding_idx, include_last):
    rows, dim = table.weight.shape
    ref = nn.EmbeddingBag(rows, dim, mode=mode, sparse=True, padding_idx=padding_idx,
                          include_last_offset=include_last)
    with torch.no_grad():
        ref.weight.copy_(table.master_weight())
    eps = {"sgd": 0.0, "adagrad": 1e-10, "rowwise_adagrad": 1e-8}[optimizer]
    if optimizer == "sgd":
        opt = torch.optim.SGD(ref.parameters(), lr=LR[optimizer])
    elif optimizer == "adagrad":
        opt = torch.optim.Adagrad(ref.parameters(), lr=LR[optimizer], eps=eps)
    else:
        opt = RowWiseRef(ref.weight, LR[optimizer], eps)
    return ref, opt


CASES = [(o, m, x) for o in LR for m in ("sum", "mean") for x in ("plain", "psw", "padding")
         if not (m == "mean" and x == "psw")]


@pytest.mark.parametrize("optimizer,mode,extra", CASES)
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("include_last", [False, True])
def test_single_table_matches_torch(optimizer, mode, extra, idx_dtype, include_last):
    gen = torch.Generator().manual_seed(hash((optimizer, mode, extra)) % 1000)
    rows, dim, bags = 40, 7, 9
    padding = 3 if extra == "padding" else None
    torch.manual_seed(0)
    ours = FusedEmbeddingBag(rows, dim, mode=mode, optimizer=optimizer, lr=LR[optimizer],
                             padding_idx=padding, include_last_offset=include_last)
    ref, opt = _reference(ours.table(0), optimizer, mode, padding, include_last)
    for _ in range(20):
        idx, off = random_bags(rows, bags, gen, idx_dtype, include_last, padding=padding)
        psw = torch.randn(idx.shape, generator=gen) if extra == "psw" else None
        target = torch.randn(bags, dim, generator=gen)
        out = ours(idx, off, psw)
        (out * target).sum().backward()
        ref_out = ref(idx, off, psw)
        opt.zero_grad()
        (ref_out * target).sum().backward()
        opt.step()
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight, ref.weight.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", list(LR))
def test_collection_matches_torch(optimizer):
    gen = torch.Generator().manual_seed(1)
    shapes, bags = [(50, 4), (30, 9), (70, 16)], 11
    ours = FusedEmbeddingBagCollection(shapes, mode="sum", optimizer=optimizer, lr=LR[optimizer])
    refs = [_reference(ours.table(i), optimizer, "sum", None, False) for i in range(3)]
    for _ in range(20):
        batch = [random_bags(r, bags, gen) for r, _ in shapes]
        target = torch.randn(bags, sum(d for _, d in shapes), generator=gen)
        out = ours([b[0] for b in batch], [b[1] for b in batch])
        (out * target).sum().backward()
        ref_out = torch.cat([ref(*b) for (ref, _), b in zip(refs, batch)], 1)
        for _, opt in refs:
            opt.zero_grad()
        (ref_out * target).sum().backward()
        for _, opt in refs:
            opt.step()
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for i, (ref, _) in enumerate(refs):
        torch.testing.assert_close(ours.table(i).weight, ref.weight.detach(), rtol=1e-4, atol=1e-5)


def _train(module, steps, seed, rows, bags=256, max_len=30, split_inputs=False):
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for _ in range(steps):
        batch = [random_bags(rows, bags, gen, max_len=max_len) for _ in module.embedding_dims]
        out = module([b[0] for b in batch], [b[1] for b in batch])
        target = torch.randn(out.shape, generator=gen).to(out.dtype)
        (out * target).sum().backward()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("optimizer", list(LR))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_across_threads_and_isa(optimizer, dtype, threads):
    def run(n):
        threads(n)
        torch.manual_seed(0)
        m = FusedEmbeddingBagCollection([(500, 16), (300, 5)], mode="sum", optimizer=optimizer, dtype=dtype)
        outs = _train(m, 3, 0, 300)
        return outs, [m.table(i).master_weight().clone() for i in range(2)]

    base_out, base_w = run(1)
    for level in ipex_train.available_isas():
        with ipex_train.force_isa(level):
            for n in (1, 2):
                outs, ws = run(n)
                assert all(torch.equal(a, b) for a, b in zip(outs, base_out)), (level, n)
                assert all(torch.equal(a.view(torch.int32), b.view(torch.int32))
                           for a, b in zip(ws, base_w)), (level, n)


@pytest.mark.parametrize("optimizer", list(LR))
def test_bf16_split_update_equals_fp32(optimizer):
    """A bf16 table's master update is bit for bit the fp32 update with the same
    (bf16) gradient; its forward pools the bf16 weights and rounds to bf16."""
    torch.manual_seed(0)
    b16 = FusedEmbeddingBag(60, 24, mode="sum", optimizer=optimizer, dtype=torch.bfloat16, padding_idx=2)
    f32 = FusedEmbeddingBag(60, 24, mode="sum", optimizer=optimizer, dtype=torch.float32, padding_idx=2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        f32.table(0).set_master_weight(b16.table(0).master_weight())
        if optimizer != "sgd":
            f32.table(0).state_sum.copy_(b16.table(0).state_sum)
        idx, off = random_bags(60, 13, gen, padding=2)
        out = b16(idx, off)
        assert out.dtype == torch.bfloat16
        ref = nn.functional.embedding_bag(idx, b16.weight.float(), off, mode="sum", padding_idx=2)
        torch.testing.assert_close(out.float(), ref.bfloat16().float(), rtol=1e-2, atol=1e-2)
        g = torch.randn(out.shape, generator=gen).bfloat16()
        out.backward(g)
        f32(idx, off).backward(g.float())
        assert torch.equal(b16.table(0).master_weight(), f32.weight)


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


def test_bad_inputs_raise_and_leave_tables_unchanged():
    torch.manual_seed(0)
    m = FusedEmbeddingBagCollection([(10, 4), (20, 3)], mode="sum", optimizer="adagrad")
    good_i = [torch.tensor([1, 2, 3]), torch.tensor([0, 19])]
    good_o = [torch.tensor([0, 2]), torch.tensor([0, 1])]
    m(good_i, good_o).sum().backward()
    snap = _snapshot(m)
    bad = [
        (IndexError, "out of range", [torch.tensor([1, 10, 3]), good_i[1]], good_o),
        (IndexError, "out of range", [torch.tensor([1, -1, 3]), good_i[1]], good_o),
        (ValueError, "non-decreasing", good_i, [torch.tensor([0, 2]), torch.tensor([0, 3])]),
        (ValueError, "must be 0", good_i, [torch.tensor([1, 2]), good_o[1]]),
        (ValueError, "describes", good_i, [good_o[0], torch.tensor([0, 1, 1])]),
        (TypeError, "int32 or int64", [good_i[0].float(), good_i[1]], good_o),
        (TypeError, "int64 or int32", good_i, [good_o[0].float(), good_o[1]]),
        (ValueError, "expected 2 index", good_i[:1], good_o[:1]),
        (ValueError, "required", good_i, None),
    ]
    for exc, match, i, o in bad:
        with pytest.raises(exc, match=match):
            m(i, o).sum().backward()
        assert _unchanged(m, snap), match
    with pytest.raises(ValueError, match="per_sample_weights"):
        m(good_i, good_o, [torch.ones(3), torch.ones(3)])
    with pytest.raises(ValueError, match="include_last|ends at"):
        FusedEmbeddingBag(10, 4, include_last_offset=True)(torch.tensor([1, 2]), torch.tensor([0, 1]))
    # the backward op checks its own inputs too, before writing
    tabs = m._table_list()
    op = torch.ops.ipex_train.embedding_bags_backward_update_
    args = dict(weights=[t.weight for t in tabs], trails=[], state1=[t.state_sum for t in tabs],
                state2=[], indices=good_i, offsets=good_o, per_sample_weights=[],
                padding_idx=[-1, -1], include_last_offset=False, mean=False, rule="adagrad", lr=0.1,
                eps=1e-10, beta1=0.0, beta2=0.0, step_size=0.0, maximize=False)
    for key, val, match in [("grad_output", torch.ones(2, 6), "shape"),
                            ("grad_output", torch.ones(2, 7, dtype=torch.float64), "float32"),
                            ("state1", [tabs[0].state_sum], "state1"),
                            ("indices", [good_i[0], torch.tensor([0, 20])], "out of range")]:
        kw = dict(args, grad_output=torch.ones(2, 7))
        kw[key] = val
        with pytest.raises((ValueError, TypeError, IndexError), match=match):
            op(**kw)
        assert _unchanged(m, snap), key


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_of_range_ids_found_wherever_they_are(idx_dtype, dtype, isa_level, threads):
    """Row ids are range-checked inside the forward kernel and the backward's
    sort (no separate pass): the error names the first bad id of the first
    table that has one, in any bag block, on any ISA level and thread count,
    and nothing is written."""
    threads(2)
    m = FusedEmbeddingBagCollection([(50, 8), (30, 5)], mode="sum", optimizer="sgd", lr=0.1, dtype=dtype)
    snap = _snapshot(m)
    big = torch.iinfo(idx_dtype).max
    offs = torch.arange(0, 200, 2)  # 100 bags of 2: several blocks of 32 bags
    for bad0, bad1, want in [({150: 50, 170: -1}, {}, "indices[0][150] = 50"),
                             ({}, {3: 30, 199: big}, "indices[1][3] = 30"),
                             ({199: big}, {0: -5}, f"indices[0][199] = {big}")]:
        idx = [torch.randint(0, 30, (200,)).to(idx_dtype) for _ in range(2)]
        for t, bad in ((0, bad0), (1, bad1)):
            for pos, v in bad.items():
                idx[t][pos] = v
        with pytest.raises(IndexError, match=re.escape(want)):
            m(idx, [offs, offs])
        op = torch.ops.ipex_train.embedding_bags_backward_update_
        tabs = m._table_list()
        with pytest.raises(IndexError, match=re.escape(want)):
            op([t.weight for t in tabs], [t.trail for t in tabs] if dtype == torch.bfloat16 else [],
               [], [], torch.ones(100, 13, dtype=dtype), idx, [offs, offs], [], [-1, -1], False,
               False, "sgd", 0.1, 0.0, 0.0, 0.0, 0.0, False)
        assert _unchanged(m, snap), want
    # a table of width 0 (the modules refuse it; the ops take it) has nothing to
    # pool or update, but its ids are still checked
    w0 = torch.zeros(10, 0)
    with pytest.raises(IndexError, match=re.escape("indices[0][1] = 10")):
        torch.ops.ipex_train.embedding_bags_forward(
            [w0], [torch.tensor([1, 10]).to(idx_dtype)], [torch.tensor([0, 1])], [], [-1], False,
            False)
    with pytest.raises(IndexError, match=re.escape("indices[1] = 10")):
        torch.ops.ipex_train.sparse_add_(w0, None, torch.tensor([1, 10]).to(idx_dtype),
                                         torch.zeros(2, 0), 1.0)


def test_state_dict_round_trip_and_lr_schedule():
    torch.manual_seed(0)
    a = FusedEmbeddingBagCollection([(100, 8)], mode="sum", optimizer="rowwise_adagrad", lr=0.1,
                                    dtype=torch.bfloat16)
    assert set(a.state_dict()) == {"embedding_bags.t0.weight", "embedding_bags.t0.trail",
                                   "embedding_bags.t0.state_sum"}
    sched = torch.optim.lr_scheduler.StepLR(a.optimizer, step_size=1, gamma=0.5)
    _train(a, 2, 0, 100, bags=16, max_len=4)
    a.optimizer.step()  # a no-op: the update ran in backward; keeps the scheduler order
    sched.step()
    assert a.optimizer.param_groups[0]["lr"] == 0.05
    torch.manual_seed(1)
    b = FusedEmbeddingBagCollection([(100, 8)], mode="sum", optimizer="rowwise_adagrad", lr=0.1,
                                    dtype=torch.bfloat16)
    b.load_state_dict(a.state_dict())
    b.optimizer.load_state_dict(a.optimizer.state_dict())
    assert b.optimizer.param_groups[0]["lr"] == 0.05
    out_a, out_b = _train(a, 3, 5, 100, bags=16), _train(b, 3, 5, 100, bags=16)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # the rate in force at backward time is the one used: lr 0 freezes the table
    a.optimizer.param_groups[0]["lr"] = 0.0
    snap = _snapshot(a)
    _train(a, 1, 6, 100, bags=16)
    assert torch.equal(a.table(0).weight, snap["embedding_bags.t0.weight"])


@pytest.mark.parametrize("last", [False, True])
def test_per_sample_weight_grads_match_torch(last):
    torch.manual_seed(0)
    ours = FusedEmbeddingBag(30, 5, mode="sum", lr=0.1, padding_idx=4, include_last_offset=last)
    ref = nn.EmbeddingBag(30, 5, mode="sum", sparse=True, padding_idx=4, include_last_offset=last)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    idx, off = random_bags(30, 8, torch.Generator().manual_seed(0), padding=4)
    if last:
        off = torch.cat([off, torch.tensor([idx.numel()])])
    psw = torch.randn(idx.shape, requires_grad=True)
    psw_ref = psw.detach().clone().requires_grad_()
    target = torch.randn(8, 5)
    (ours(idx, off, psw) * target).sum().backward()
    (ref(idx, off, psw_ref) * target).sum().backward()
    torch.testing.assert_close(psw.grad, psw_ref.grad)


def test_backward_refuses_changed_inputs_and_a_second_run():
    """Indices and offsets are not autograd inputs (they ride along with the
    forward), so the module checks their version counters itself: an in-place
    change between forward and backward raises and the table stays as it was.
    A second backward through the same forward raises too (it would apply the
    update twice)."""
    torch.manual_seed(0)
    m = FusedEmbeddingBagCollection([(30, 4), (20, 3)], mode="sum", optimizer="sgd", lr=0.5)
    idx = [torch.tensor([1, 2, 3]), torch.tensor([0, 19])]
    off = [torch.tensor([0, 2]), torch.tensor([0, 1])]
    for t, which in ((0, "indices"), (1, "offsets")):
        snap = _snapshot(m)
        i, o = [x.clone() for x in idx], [x.clone() for x in off]
        out = m(i, o)
        (i if which == "indices" else o)[t].zero_()
        with pytest.raises(RuntimeError, match="modified in place"):
            out.sum().backward()
        assert _unchanged(m, snap), which
    out = m(idx, off)
    out.sum().backward(retain_graph=True)
    snap = _snapshot(m)
    with pytest.raises(RuntimeError, match="ran twice"):
        out.sum().backward()
    assert _unchanged(m, snap)


def test_2d_input_no_grad_and_module_behaviour():
    torch.manual_seed(0)
    m = FusedEmbeddingBag(20, 3, mode="mean")
    ref = nn.EmbeddingBag(20, 3, mode="mean")
    with torch.no_grad():
        ref.weight.copy_(m.weight)
    x = torch.randint(0, 20, (5, 4), dtype=torch.int32)
    torch.testing.assert_close(m(x), ref(x))
    assert list(m.parameters()) == []  # a dense optimizer never sees the table
    w = m.weight.clone()
    with torch.no_grad():
        m(x)
    assert torch.equal(m.weight, w)
    out = m(x)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.sum().backward()
    cp = copy.deepcopy(m)
    assert torch.equal(cp.weight, m.weight)
    # nn.EmbeddingBag's state_dict keys: a stock checkpoint loads directly
    assert set(m.state_dict()) == {"weight"}
    m.load_state_dict(ref.state_dict())
    assert torch.equal(m.weight, ref.weight.detach())
    ada = FusedEmbeddingBag(20, 3, optimizer="adagrad", dtype=torch.bfloat16)
    assert set(ada.state_dict()) == {"weight", "trail", "state_sum"}
    nested = nn.Sequential(ada)
    nested.load_state_dict({k: v.clone() for k, v in nested.state_dict().items()})


def test_opcheck():
    w = [torch.randn(10, 4), torch.randn(7, 3)]
    idx = [torch.tensor([1, 2, 9, 2]), torch.tensor([0, 6], dtype=torch.int32)]
    off = [torch.tensor([0, 1, 4]), torch.tensor([0, 0, 2], dtype=torch.int32)]
    fwd = torch.ops.ipex_train.embedding_bags_forward.default
    torch.library.opcheck(fwd, (w, idx, off, [], [-1, 6], True, False))
    torch.library.opcheck(fwd, ([t.bfloat16() for t in w], idx, [o[:-1] for o in off],
                                [torch.ones(4), torch.ones(2)], [-1, -1], False, False))
    bwd = torch.ops.ipex_train.embedding_bags_backward_update_.default
    torch.library.opcheck(bwd, (w, [], [torch.zeros(10), torch.zeros(7)], [], torch.randn(2, 7),
                                idx, off, [], [-1, -1], True, True, "rowwise_adagrad", 0.1, 1e-8,
                                0.0, 0.0, 0.0,
                                False))


def test_opcheck_advise_hugepages():
    t = torch.zeros(3 << 20, dtype=torch.uint8)
    torch.library.opcheck(torch.ops.ipex_train._advise_hugepages.default, (t,))
    torch.ops.ipex_train._advise_hugepages(torch.zeros(4))  # under 2 MiB: nothing to advise
    assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("mean, weighted", [(False, False), (True, False), (False, True)])
def test_forward_fp32_output_of_bf16_tables(mean, weighted):
    """out_dtype=float32 on bf16 tables: the fp32 sums of the bf16 rows,
    unrounded (the sharder pools row-wise partial sums so); the default
    output is their bf16 rounding."""
    torch.manual_seed(0)
    m = FusedEmbeddingBagCollection([(40, 19), (30, 8)], mode="mean" if mean else "sum",
                                    optimizer="sgd", dtype=torch.bfloat16,
                                    include_last_offset=True)
    # bags of 0..2 ids: a sum of two is the same in any order
    lengths = [torch.randint(0, 3, (37,)) for _ in range(2)]
    offs = [torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)]) for n in lengths]
    idx = [torch.randint(0, r, (int(o[-1]),)) for r, o in zip((40, 30), offs)]
    psw = [torch.rand(i.numel()) + 0.5 for i in idx] if weighted else []
    op = torch.ops.ipex_train.embedding_bags_forward
    args = (m._weights(), idx, offs, psw, m._padding, True, mean)
    out = op(*args, torch.float32)
    want = torch.cat([nn.functional.embedding_bag(
        i, t.weight.float(), o, mode="mean" if mean else "sum", include_last_offset=True,
        per_sample_weights=p) for i, o, t, p in zip(idx, offs, m._table_list(),
                                                    psw or [None, None])], 1)
    assert out.dtype == torch.float32
    # mean: x * (1/n) vs x / n; weighted: the kernel may fuse w * v + acc
    torch.testing.assert_close(out, want, rtol=2e-6, atol=0)
    if not (mean or weighted):
        assert torch.equal(out, want)
    assert torch.equal(op(*args), out.bfloat16())
    assert torch.equal(op(*args, torch.bfloat16), out.bfloat16())
    with pytest.raises(ValueError, match="out_dtype must be float32"):
        op(*args, torch.float16)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad"])
def test_fp32_output_of_bf16_tables_trains_with_the_fp32_gradient(optimizer):
    """forward(out_dtype=float32) on bf16 tables: the backward applies the fp32
    gradient as given; a bf16-representable one updates exactly as the bf16
    output's backward does with that gradient in bf16."""
    torch.manual_seed(0)
    a = FusedEmbeddingBagCollection([(40, 19), (30, 8)], mode="mean", optimizer=optimizer,
                                    lr=0.1, dtype=torch.bfloat16, include_last_offset=True)
    b = copy.deepcopy(a)
    before = [t.master_weight().clone() for t in a._table_list()]
    offs = [torch.tensor([0, 2, 2, 5]), torch.tensor([0, 1, 3, 4])]
    idx = [torch.tensor([1, 7, 7, 3, 39]), torch.tensor([0, 29, 5, 5])]
    g = torch.randn(3, 27).bfloat16()
    out = a(idx, offs, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    out.backward(g.float())
    b(idx, offs).backward(g)
    for ta, tb, w0 in zip(a._table_list(), b._table_list(), before):
        assert torch.equal(ta.master_weight(), tb.master_weight())
        assert not torch.equal(ta.master_weight(), w0)  # it trained
