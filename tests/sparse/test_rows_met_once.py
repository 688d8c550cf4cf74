"""Rows met once in a call are applied from the in-order pass, repeated rows
from the row buckets (native/ops/bucket_sort.h). Calls here span several
chunks of 8192 entries, so several lanes mark rows, with rows met once, rows
repeated inside a chunk, across chunks (also the last entries of one chunk
with the first of the next, which two lanes reach at once when a repeat is
missed: dropping the merge's seen-in-two-lanes term fails ~10 tests here and
in test_sparse_add / test_sparse_optim) and many times in a row, padding and
empty bags: every update rule must give the same bits at 1, 2 and 3 threads
and on every ISA level, and match its plain-PyTorch reference."""
import pytest
import torch
from torch import nn

import ipex_train
from ipex_train.sparse import (FusedEmbeddingBagCollection, TableConfig, join_split,
                               sparse_add_, split_fp32)
from ipex_train.sparse.functional import row_update_

from _bags import RowWiseRef

THREADS = (1, 2, 3)


def _rows(n, rows, gen):
    """n row ids of a table of `rows`: mostly met once, plus repeats."""
    idx = torch.randperm(rows, generator=gen)[:n]
    idx[5000:5300] = idx[100:400].clone()  # twice within the first chunk
    for start in range(8192 + 1000, n - 400, 8192):  # and in every other chunk
        idx[start:start + 100] = idx[200:300].clone()
    for end in range(8192, n - 200, 8192):  # last entries of a chunk, first of the next:
        idx[end:end + 100] = idx[end - 100:end].clone()  # two lanes would meet on them at once
    idx[-300:] = idx[200:500].clone()
    idx[9000:9010] = idx[9000].clone()  # one row 10 times in a row
    return idx


def _each_thread_count_and_level(run, threads):
    """run() at every thread count and ISA level; asserts the same bits as 1 thread."""
    threads(1)
    base = run()
    for level in ipex_train.available_isas():
        with ipex_train.force_isa(level):
            for n in THREADS:
                threads(n)
                got = run()
                for a, b in zip(got, base):
                    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), (level, n)
    return base


@pytest.mark.parametrize("dim", [16, 5])
@pytest.mark.parametrize("values_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [False, True])
def test_sparse_add(dim, values_dtype, split, threads):
    gen = torch.Generator().manual_seed(dim)
    rows, nnz = 200000, 45000
    idx = _rows(nnz, rows, gen)
    vals = torch.randn(nnz, dim, generator=gen).to(values_dtype)
    grad = torch.sparse_coo_tensor(idx[None], vals, (rows, dim))
    w0 = torch.randn(rows, dim, generator=gen)

    def run():
        if split:
            top, trail = split_fp32(w0)
            sparse_add_(top, grad, -0.7, trail=trail)
            return [join_split(top, trail)]
        return [sparse_add_(w0.clone(), grad, -0.7)]

    (got,) = _each_thread_count_and_level(run, threads)
    ref = w0.double().index_add_(0, idx, vals.double(), alpha=-0.7)
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=1e-5)


def _coalesced(idx, vals, rows):
    g = torch.sparse_coo_tensor(idx[None], vals, (rows, vals.shape[1])).coalesce()
    return g.indices()[0], g.values()


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_row_update_two_params(rule, threads):
    """One call over two params (one split bf16, one fp32, odd width)."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(100000, 16), (60000, 7)]
    grads = []
    for rows, dim in shapes:
        idx = _rows(40000, rows, gen)
        vals = torch.randn(idx.numel(), dim, generator=gen).bfloat16().float()
        grads.append(torch.sparse_coo_tensor(idx[None], vals, (rows, dim)))
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    lr, eps = 0.05, 1e-8

    def run():
        top, trail = split_fp32(w0[0])
        params = [top, w0[1].clone()]
        gs = [grads[0].to(torch.bfloat16), grads[1]]
        state1 = state2 = []
        if rule in ("adagrad", "adam"):
            state1 = [torch.full(s, 0.1) for s in shapes]
        if rule == "rowwise_adagrad":
            state1 = [torch.full(s[:1], 0.1) for s in shapes]
        if rule == "adam":
            state2 = [torch.full(s, 0.2) for s in shapes]
        row_update_(rule, params, gs, [trail], state1, state2, [lr] * 2, [eps] * 2, [0.9] * 2,
                    [0.99] * 2, [0.01] * 2, [False] * 2)
        return [join_split(top, trail), params[1]] + state1 + state2

    got = _each_thread_count_and_level(run, threads)
    for i in range(2):  # plain-PyTorch references
        rows, gv = _coalesced(grads[i]._indices()[0], grads[i]._values(), shapes[i][0])
        w = w0[i].clone()
        if rule == "sgd":
            w[rows] -= lr * gv
        elif rule == "rowwise_adagrad":
            s = torch.full(shapes[i][:1], 0.1)
            s[rows] += (gv * gv).mean(1)
            w[rows] -= (lr / (s[rows].sqrt() + eps))[:, None] * gv
            torch.testing.assert_close(got[2 + i], s, rtol=1e-5, atol=1e-6)
        elif rule == "adagrad":
            s = torch.full(shapes[i], 0.1)
            s[rows] += gv * gv
            w[rows] -= lr * gv / (s[rows].sqrt() + eps)
            torch.testing.assert_close(got[2 + i], s, rtol=1e-5, atol=1e-6)
        else:
            m, v = torch.full(shapes[i], 0.1), torch.full(shapes[i], 0.2)
            m[rows] += (gv - m[rows]) * 0.1
            v[rows] += (gv * gv - v[rows]) * 0.01
            w[rows] -= 0.01 * m[rows] / (v[rows].sqrt() + eps)
            torch.testing.assert_close(got[2 + i], m, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[i], w, rtol=1e-5, atol=1e-5)


def _bags(rows, bags, gen, padding):
    """Bags of 0-40 entries (every fifth empty) over _rows ids, padding every 7th."""
    lengths = torch.randint(0, 41, (bags,), generator=gen)
    lengths[::5] = 0
    idx = _rows(int(lengths.sum()), rows, gen)
    if padding is not None:
        idx[::7] = padding
    return idx, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("mode,extra", [("sum", "psw"), ("mean", "padding")])
def test_fused_step(optimizer, mode, extra, threads):
    """Two tables of ~32K entries per step (4 chunks each), fp32 and split bf16."""
    shapes, bags, lr = [(150000, 16), (100000, 5)], 2000, 0.05
    padding = 11 if extra == "padding" else None
    gen = torch.Generator().manual_seed(4)
    batch = [_bags(r, bags, gen, padding) for r, _ in shapes]
    assert all(b[0].numel() > 3 * 8192 for b in batch)
    psw = [torch.rand(b[0].shape, generator=gen) for b in batch] if extra == "psw" else None
    target = torch.randn(bags, sum(d for _, d in shapes), generator=gen)
    torch.manual_seed(0)
    init = FusedEmbeddingBagCollection(shapes, mode=mode, optimizer=optimizer, lr=lr)
    w0 = [init.table(i).master_weight().clone() for i in range(2)]

    def run(dtype):
        tables = [TableConfig(r, d, padding_idx=padding) for r, d in shapes]
        m = FusedEmbeddingBagCollection(tables, mode=mode, optimizer=optimizer, lr=lr, dtype=dtype)
        for i in range(2):
            m.table(i).set_master_weight(w0[i])
        for _ in range(2):
            out = m([b[0] for b in batch], [b[1] for b in batch], psw)
            (out.float() * target).sum().backward()
        return [out.float()] + [m.table(i).master_weight().clone() for i in range(2)]

    got = _each_thread_count_and_level(lambda: run(torch.float32), threads)
    _each_thread_count_and_level(lambda: run(torch.bfloat16), threads)
    # reference: nn.EmbeddingBag per table, the same two steps
    refs = []
    for i, (rows, dim) in enumerate(shapes):
        ref = nn.EmbeddingBag(rows, dim, mode=mode, sparse=True, padding_idx=padding)
        with torch.no_grad():
            ref.weight.copy_(w0[i])
        eps = {"sgd": 0.0, "adagrad": 1e-10, "rowwise_adagrad": 1e-8}[optimizer]
        opt = (torch.optim.SGD(ref.parameters(), lr=lr) if optimizer == "sgd" else
               torch.optim.Adagrad(ref.parameters(), lr=lr, eps=eps) if optimizer == "adagrad"
               else RowWiseRef(ref.weight, lr, eps))
        refs.append((ref, opt))
    for _ in range(2):
        outs = [ref(b[0], b[1], None if psw is None else psw[i])
                for i, ((ref, _), b) in enumerate(zip(refs, batch))]
        out = torch.cat(outs, 1)
        for _, opt in refs:
            opt.zero_grad()
        (out * target).sum().backward()
        for _, opt in refs:
            opt.step()
    torch.testing.assert_close(got[0], out.detach(), rtol=1e-5, atol=1e-5)
    for i, (ref, _) in enumerate(refs):
        torch.testing.assert_close(got[1 + i], ref.weight.detach(), rtol=1e-5, atol=1e-5)
