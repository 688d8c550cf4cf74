"""ipex_train.sparse.sparse_add_ against index_add_ in fp64; bitwise determinism."""
import pytest
import torch

import ipex_train
from ipex_train.sparse import join_split, sparse_add_, split_fp32

SIZES = [(1, 1, 0), (1, 1, 5), (7, 3, 1), (50, 7, 300), (300, 16, 5000), (2000, 33, 9000)]


def _embedding_grad(rows, dim, nnz, seed, dtype=torch.float32):
    """A sparse grad exactly as nn.EmbeddingBag(sparse=True) makes it (uncoalesced)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
    idx = torch.randint(0, rows, (nnz,), generator=g)
    idx[: nnz // 4] = idx[nnz // 2: nnz // 2 + nnz // 4]  # plenty of duplicates
    cuts = torch.sort(torch.randint(0, nnz + 1, (max(1, nnz // 8),), generator=g)).values
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), cuts])
    out = emb(idx, offsets)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    grad = emb.weight.grad
    assert grad.is_sparse and (nnz < 2 or not grad.is_coalesced())
    if dtype != torch.float32:
        grad = torch.sparse_coo_tensor(grad._indices(), grad._values().to(dtype), grad.shape,
                                       check_invariants=True)
    return grad


@pytest.mark.parametrize("rows,dim,nnz", SIZES)
@pytest.mark.parametrize("alpha", [1.0, -0.3])
def test_matches_fp64_index_add(rows, dim, nnz, alpha, isa_level):
    grad = _embedding_grad(rows, dim, nnz, seed=rows + nnz)
    w = torch.randn(rows, dim, generator=torch.Generator().manual_seed(1))
    ref = w.double().index_add_(0, grad._indices()[0], grad._values().double(), alpha=alpha)
    assert sparse_add_(w, grad, alpha) is w
    torch.testing.assert_close(w, ref.float(), rtol=1e-6, atol=1e-5)


def _run(rows, dim, nnz, n_threads, threads, split=False, values_dtype=torch.float32):
    threads(n_threads)
    grad = _embedding_grad(rows, dim, nnz, seed=7, dtype=values_dtype)
    w = torch.randn(rows, dim, generator=torch.Generator().manual_seed(2))
    if split:
        top, trail = split_fp32(w)
        sparse_add_(top, grad, -0.7, trail=trail)
        return join_split(top, trail)
    return sparse_add_(w, grad, -0.7)


@pytest.mark.parametrize("rows,dim,nnz", SIZES[2:])
@pytest.mark.parametrize("values_dtype", [torch.float32, torch.bfloat16])
def test_bitwise_across_threads_isa_and_storage(rows, dim, nnz, values_dtype, threads):
    base = _run(rows, dim, nnz, 1, threads, values_dtype=values_dtype)
    for level in ipex_train.available_isas():
        with ipex_train.force_isa(level):
            for n in (1, 2, 3):
                for split in (False, True):
                    got = _run(rows, dim, nnz, n, threads, split, values_dtype)
                    assert torch.equal(got.view(torch.int32), base.view(torch.int32)), (level, n, split)


def test_bf16_values_match_upcast():
    grad = _embedding_grad(100, 9, 700, seed=3, dtype=torch.bfloat16)
    up = torch.sparse_coo_tensor(grad._indices(), grad._values().float(), grad.shape)
    a, b = torch.ones(100, 9), torch.ones(100, 9)
    sparse_add_(a, grad, 0.5)
    sparse_add_(b, up, 0.5)
    assert torch.equal(a, b)


def test_1d_and_3d_weights():
    for shape in [(40,), (40, 3, 5)]:
        w = torch.randn(shape)
        idx = torch.tensor([[3, 0, 3, 39]])
        vals = torch.randn((4,) + shape[1:])
        grad = torch.sparse_coo_tensor(idx, vals, shape)
        ref = w.double().index_add_(0, idx[0], vals.double(), alpha=2.0).float()
        torch.testing.assert_close(sparse_add_(w, grad, 2.0), ref)


def _bad(weight, grad, trail=None, exc=(ValueError, TypeError, IndexError, RuntimeError), match=None):
    before = weight.clone()
    before_t = None if trail is None else trail.clone()
    with pytest.raises(exc, match=match):
        sparse_add_(weight, grad, 1.0, trail=trail)
    assert torch.equal(weight, before)
    if trail is not None:
        assert torch.equal(trail, before_t)


def test_bad_inputs_leave_weight_unchanged():
    w = torch.randn(10, 4)
    vals = torch.randn(3, 4)
    grad = lambda idx, v=vals, shape=(10, 4): torch.sparse_coo_tensor(  # noqa: E731
        torch.tensor([idx]), v, shape, check_invariants=False)
    _bad(w, grad([1, 2, 10]), exc=IndexError, match="out of range")
    _bad(w, grad([1, -1, 2]), exc=IndexError, match="out of range")
    _bad(w, grad([1, 2, 3], shape=(11, 4)), match="shape")
    _bad(w, torch.randn(10, 4), exc=TypeError, match="sparse COO")
    _bad(w, grad([1, 2, 3], vals.double()), exc=TypeError, match="float32 or bfloat16")
    _bad(w, torch.randn(10, 4).to_sparse(2), match="one sparse dimension")
    top, trail = split_fp32(w)
    _bad(top, grad([0, 1, 2]), trail=trail.float(), exc=TypeError, match="int16")
    _bad(top, grad([0, 1, 2]), exc=TypeError, match="trail")
    _bad(top, grad([0, 1, 11]), trail=trail, exc=IndexError)
    _bad(w.t(), grad([0, 1, 2], torch.randn(3, 10), (4, 10)), match="contiguous")


def test_opcheck():
    w = torch.randn(20, 5)
    idx = torch.tensor([1, 4, 1, 19])
    vals = torch.randn(4, 5)
    torch.library.opcheck(torch.ops.ipex_train.sparse_add_.default, (w, None, idx, vals, 0.5))
    top, trail = split_fp32(w)
    torch.library.opcheck(torch.ops.ipex_train.sparse_add_.default,
                          (top, trail, idx.int(), vals.bfloat16(), -1.0))


def test_more_entries_than_the_kept_sort_buffer():
    """Above 4M entries the sort uses a buffer of the call's own (freed with it)
    instead of the one kept per thread; both paths give the reference result,
    also when they alternate."""
    g = torch.Generator().manual_seed(11)
    rows = 1000
    for nnz in (1000, (1 << 22) + 5, 3000):
        idx = torch.randint(0, rows, (1, nnz), generator=g)
        vals = torch.randn(nnz, 1, generator=g)
        grad = torch.sparse_coo_tensor(idx, vals, (rows, 1))
        w = torch.zeros(rows, 1)
        ref = torch.zeros(rows, 1, dtype=torch.float64).index_add_(0, idx[0], vals.double())
        sparse_add_(w, grad, 1.0)
        torch.testing.assert_close(w, ref.float(), rtol=1e-5, atol=1e-3)
