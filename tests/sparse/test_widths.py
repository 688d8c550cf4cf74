"""Row widths the embedding kernels are compiled for as constants (16, 32, 64,
128) against the generic-width code.

Every update but row-wise Adagrad's is elementwise in the columns, and so is
pooling: a width-W table must therefore end bit for bit equal to the first W
columns of a width-(W + 1) table (which runs the generic code) fed the same
values. Row-wise Adagrad reduces over the row, so it is checked against a
plain-PyTorch reference instead. Each runs at every ISA level and thread count.
"""
import pytest
import torch

from ipex_train.sparse import FusedEmbeddingBag, functional, join_split, split_fp32

from _bags import RowWiseRef, random_bags

WIDTHS = [16, 32, 64, 128]
ROWS, BAGS = 90, 40


def _batch(gen):
    return random_bags(ROWS, BAGS, gen, max_len=8)


def _twins(width, optimizer, dtype):
    """(width-W module, width-(W+1) module) with the same first W columns."""
    torch.manual_seed(width)
    a = FusedEmbeddingBag(ROWS, width, mode="sum", optimizer=optimizer, lr=0.05, dtype=dtype)
    b = FusedEmbeddingBag(ROWS, width + 1, mode="sum", optimizer=optimizer, lr=0.05, dtype=dtype)
    extra = torch.randn(ROWS, 1)
    b.table(0).set_master_weight(torch.cat([a.table(0).master_weight(), extra], 1))
    if optimizer == "adagrad":
        a.table(0).state_sum.uniform_(0.0, 2.0)
        b.table(0).state_sum[:, :width] = a.table(0).state_sum
    return a, b


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fused_module_equals_generic_width(width, optimizer, dtype, n_threads, isa_level, threads):
    threads(n_threads)
    a, b = _twins(width, optimizer, dtype)
    gen = torch.Generator().manual_seed(width + 1)
    for _ in range(4):
        idx, off = _batch(gen)
        psw = torch.randn(idx.shape, generator=gen)
        out_a, out_b = a(idx, off, psw), b(idx, off, psw)
        assert torch.equal(out_a, out_b[:, :width])
        g = torch.randn(out_b.shape, generator=gen).to(out_b.dtype)
        out_a.backward(g[:, :width])
        out_b.backward(g)
    wa, wb = a.table(0).master_weight(), b.table(0).master_weight()
    assert torch.equal(wa.view(torch.int32), wb[:, :width].contiguous().view(torch.int32))
    if optimizer == "adagrad":
        assert torch.equal(a.table(0).state_sum, b.table(0).state_sum[:, :width])


def _sparse_grad(width, gen, steps=3):
    grads = []
    for _ in range(steps):
        idx = torch.randint(0, ROWS // 2, (1, 300), generator=gen) * 2
        vals = torch.randn(300, width + 1, generator=gen).bfloat16().float()
        grads.append((idx, vals))
    return grads


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rule", ["add", "adagrad", "adam"])
@pytest.mark.parametrize("split", [False, True])
def test_sparse_updates_equal_generic_width(width, rule, split, isa_level, threads):
    threads(2)
    gen = torch.Generator().manual_seed(width)
    w0 = torch.randn(ROWS, width + 1, generator=gen)
    s0 = torch.rand(ROWS, width + 1, generator=gen)
    results = []
    for cols in (width, width + 1):
        w = w0[:, :cols].contiguous()
        s1, s2 = s0[:, :cols].contiguous(), torch.zeros(ROWS, cols)
        if split:
            p, trail = split_fp32(w)
        else:
            p, trail = w, None
        for step, (idx, vals) in enumerate(_sparse_grad(width, torch.Generator().manual_seed(2)), 1):
            g = torch.sparse_coo_tensor(idx, vals[:, :cols].contiguous(), (ROWS, cols))
            if rule == "add":
                functional.sparse_add_(p, g, -0.3, trail=trail)
            elif rule == "adagrad":
                functional.sparse_adagrad_(p, g, s1, lr=0.1, trail=trail)
            else:
                functional.sparse_adam_(p, g, s1, s2, step, lr=0.01, trail=trail)
        results.append((join_split(p, trail) if split else p, s1, s2))
    (wa, s1a, s2a), (wb, s1b, s2b) = results
    assert torch.equal(wa.view(torch.int32), wb[:, :width].contiguous().view(torch.int32))
    if rule != "add":
        assert torch.equal(s1a, s1b[:, :width]) and torch.equal(s2a, s2b[:, :width])


@pytest.mark.parametrize("width", WIDTHS)
def test_rowwise_adagrad_at_compiled_widths(width, isa_level, threads):
    """The fused row-wise Adagrad backward against a plain-PyTorch reference, and bit
    for bit the same at 1 and 2 threads."""
    results = []
    for n in (1, 2):
        threads(n)
        torch.manual_seed(width)
        m = FusedEmbeddingBag(ROWS, width, mode="sum", optimizer="rowwise_adagrad", lr=0.05)
        ref = torch.nn.EmbeddingBag(ROWS, width, mode="sum", sparse=True)
        with torch.no_grad():
            ref.weight.copy_(m.table(0).master_weight())
        opt = RowWiseRef(ref.weight, 0.05, 1e-8)
        gen = torch.Generator().manual_seed(3)
        for _ in range(4):
            idx, off = _batch(gen)
            out = m(idx, off)
            g = torch.randn(out.shape, generator=gen)
            out.backward(g)
            opt.zero_grad()
            ref(idx, off).backward(g)
            opt.step()
        torch.testing.assert_close(m.weight, ref.weight.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.table(0).state_sum, opt.sum, rtol=1e-5, atol=1e-6)
        results.append(m.weight.clone())
    assert torch.equal(results[0], results[1])
