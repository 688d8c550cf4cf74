"""What a PyTorch user does with the fused embedding modules and the sparse
functions (issue 12): nn.EmbeddingBag's defaults, portable state dicts of bf16
tables, dtype conversion, the documented usage under warnings-as-errors,
arguments on other devices or of other types, in-place updates of tensors
autograd tracks."""
import inspect
import re
import warnings

import pytest
import torch
from torch import nn

import ipex_train
from ipex_train.sparse import (FusedEmbeddingBag, FusedEmbeddingBagCollection, embedding,
                               functional, rowwise_adagrad_, sparse_adagrad_, sparse_adam_,
                               sparse_add_)

from _bags import random_bags

BF16 = torch.bfloat16


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _sparse(rows, dim, device="cpu"):
    g = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]), torch.arange(3 * dim).float()
                                .view(3, dim), (rows, dim), check_invariants=True)
    return g.to(device)


# -- nn.EmbeddingBag's defaults ------------------------------------------------

def test_fused_embedding_bag_defaults_are_nn_embedding_bags():
    """Same call, same numbers: FusedEmbeddingBag(n, d)(input, offsets) pools as
    nn.EmbeddingBag(n, d) does (mean); the collection, which has no nn
    counterpart (TorchRec pools by sum), takes no default."""
    ours, ref = inspect.signature(FusedEmbeddingBag), inspect.signature(nn.EmbeddingBag)
    for name in ("mode", "padding_idx", "include_last_offset"):
        assert ours.parameters[name].default == ref.parameters[name].default, name
    torch.manual_seed(0)
    m, e = FusedEmbeddingBag(20, 3), nn.EmbeddingBag(20, 3)
    e.load_state_dict(m.state_dict())
    idx, off = random_bags(20, 7, torch.Generator().manual_seed(0))
    assert m.mode == e.mode == "mean"
    torch.testing.assert_close(m(idx, off), e(idx, off))
    with pytest.raises(TypeError, match="mode"):
        FusedEmbeddingBagCollection([(10, 4)])


# -- state dicts of bf16 tables ---------------------------------------------------

class _Model(nn.Module):
    def __init__(self, dtype, optimizer="adagrad"):
        super().__init__()
        self.dense = nn.Linear(6, 2)
        self.emb = FusedEmbeddingBag(30, 6, mode="sum", optimizer=optimizer, dtype=dtype)
        self.ebc = FusedEmbeddingBagCollection([(20, 5), (10, 3)], mode="sum", dtype=dtype,
                                               optimizer=optimizer)

    def forward(self, idx, off):
        return self.dense(self.emb(idx, off).float()).sum() + \
            self.ebc([idx % 20, idx % 10], [off, off]).float().sum()


def _trained(dtype, seed):
    torch.manual_seed(seed)
    m = _Model(dtype)
    m, opt = ipex_train.optimize(m, ipex_train.optim.SGD(m.parameters(), lr=0.1), dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(2):
        idx, off = random_bags(30, 8, gen)
        with torch.autocast("cpu", BF16, enabled=dtype == BF16):
            m(idx, off).backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def _masters(m):
    return [m.emb.table(0).master_weight()] + [m.ebc.table(i).master_weight() for i in (0, 1)]


def test_fp32_state_dict_of_bf16_tables_is_portable():
    """fp32 tables out, no trail; the same model with fp32 tables (or bf16 ones,
    exactly) loads it; the tables alone load into nn.EmbeddingBag."""
    m, opt = _trained(BF16, 0)
    assert any((t.trail != 0).any() for t in m.ebc._table_list())  # real low halves
    sd = ipex_train.fp32_state_dict(m, opt)
    assert not [k for k in sd if k.endswith("trail")]
    assert sd["emb.weight"].dtype == torch.float32
    want = _masters(m)
    for k, w in zip(("emb.weight", "ebc.embedding_bags.t0.weight",
                     "ebc.embedding_bags.t1.weight"), want):
        assert torch.equal(_bits(sd[k]), _bits(w)), k
    assert "trail" in "".join(m.state_dict())  # outside fp32_state_dict: the exact storage

    f32 = _Model(torch.float32)
    f32.load_state_dict(sd)  # strict
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(_masters(f32), want))
    e = nn.EmbeddingBag(30, 6, mode="sum")
    e.load_state_dict({"weight": sd["emb.weight"]})
    assert torch.equal(_bits(e.weight), _bits(want[0]))

    other, opt2 = _trained(BF16, 1)
    ipex_train.load_fp32_state_dict(other, opt2, sd)
    back = ipex_train.fp32_state_dict(other, opt2)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    other2, _ = _trained(BF16, 2)
    other2.load_state_dict(sd)  # a plain load splits the fp32 tables exactly too
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(_masters(other2), want))


@pytest.mark.parametrize("strict", [True, False])
def test_nn_embedding_bag_state_dict_into_bf16_table(strict):
    """An nn.EmbeddingBag (fp32) checkpoint becomes the exact master of a bf16
    table, top and trail; a bf16 weight alone gets a zero trail."""
    torch.manual_seed(0)
    e = nn.EmbeddingBag(30, 6)
    m = FusedEmbeddingBag(30, 6, dtype=BF16)
    assert (m.trail != 0).any()
    m.load_state_dict(e.state_dict(), strict=strict)
    assert torch.equal(_bits(m.table(0).master_weight()), _bits(e.weight))
    m.load_state_dict({"weight": e.weight.detach().bfloat16()}, strict=strict)
    assert torch.equal(m.trail, torch.zeros_like(m.trail))
    assert torch.equal(m.table(0).master_weight(), e.weight.detach().bfloat16().float())
    with pytest.raises(ValueError, match="trail"):
        m.load_state_dict({"weight": e.weight.detach(), "trail": m.trail.clone()}, strict=strict)


def test_state_dicts_load_across_storage():
    """fp32 <-> bf16 collections load each other's plain state dicts exactly."""
    torch.manual_seed(0)
    b16 = FusedEmbeddingBagCollection([(20, 5), (10, 3)], mode="sum", dtype=BF16)
    f32 = FusedEmbeddingBagCollection([(20, 5), (10, 3)], mode="sum")
    f32.load_state_dict(b16.state_dict())
    for i in range(2):
        assert torch.equal(_bits(f32.table(i).weight), _bits(b16.table(i).master_weight()))
    torch.manual_seed(1)
    f32 = FusedEmbeddingBagCollection([(20, 5), (10, 3)], mode="sum")
    b16.load_state_dict(f32.state_dict())
    for i in range(2):
        assert torch.equal(_bits(f32.table(i).weight), _bits(b16.table(i).master_weight()))


# -- dtype conversion ---------------------------------------------------------------

def test_dtype_conversion_is_exact_and_trains_like_built_storage():
    torch.manual_seed(0)
    m = FusedEmbeddingBagCollection([(30, 6), (20, 5)], mode="sum", optimizer="adagrad")
    w0 = [m.table(i).master_weight().clone() for i in range(2)]
    sums = [m.table(i).state_sum.clone() for i in range(2)]
    assert nn.Sequential(m).to(BF16)[0] is m
    assert m.dtype == BF16
    for i in range(2):
        t = m.table(i)
        assert t.weight.dtype == BF16 and t.trail.dtype == torch.int16
        assert torch.equal(_bits(t.master_weight()), _bits(w0[i]))
        assert torch.equal(t.state_sum, sums[i])  # fp32 state stays fp32
    assert set(m.state_dict()) >= {"embedding_bags.t0.trail", "embedding_bags.t1.trail"}
    gen = torch.Generator().manual_seed(1)
    idx, off = random_bags(20, 9, gen)
    assert m([idx, idx], [off, off]).dtype == BF16

    # converted and built-as-bf16 modules train bit for bit alike
    built = FusedEmbeddingBagCollection([(30, 6), (20, 5)], mode="sum", optimizer="adagrad",
                                        dtype=BF16)
    for i in range(2):
        built.table(i).set_master_weight(w0[i])
    for mod in (m, built):
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            idx, off = random_bags(20, 9, g)
            out = mod([idx, idx], [off, off])
            out.backward(torch.randn(out.shape, generator=g).to(BF16))
    for i in range(2):
        assert torch.equal(_bits(m.table(i).master_weight()), _bits(built.table(i).master_weight()))
    trained = [m.table(i).master_weight() for i in range(2)]
    m.float()
    assert m.dtype == torch.float32
    for i in range(2):
        assert m.table(i).trail is None and m.table(i).weight.dtype == torch.float32
        assert torch.equal(_bits(m.table(i).weight), _bits(trained[i]))

    one = FusedEmbeddingBag(10, 4).bfloat16()
    assert one.weight.dtype == BF16 and one.trail is not None
    assert one.optimizer.param_groups[0]["params"][0] is one.weight
    w = one.table(0).master_weight()
    for keep in (lambda x: x.cpu(), lambda x: x.to("cpu"), lambda x: x.share_memory(),
                 lambda x: x.requires_grad_(False), lambda x: x.to(torch.bfloat16)):
        keep(one)  # no dtype change: the storage stays split
        assert one.dtype == BF16 and torch.equal(_bits(one.table(0).master_weight()), _bits(w))


@pytest.mark.parametrize("convert", [lambda m: m.double(), lambda m: m.half(),
                                     lambda m: m.to(torch.float64), lambda m: m.to("meta")])
def test_other_dtypes_and_devices_are_refused(convert):
    torch.manual_seed(0)
    m = FusedEmbeddingBag(10, 4, dtype=BF16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises((TypeError, RuntimeError), match="float64|float16|meta"):
        convert(m)
    assert m.dtype == BF16
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    with pytest.raises(TypeError, match="alone"):
        m.table(0).float()


# -- the documented usage -------------------------------------------------------------

def _docstring_example():
    doc = embedding.__doc__
    block = doc.split("Typical use (DLRM: 26 tables)::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


def test_docstring_usage_runs_without_warnings():
    """The module docstring's example, as written, with warnings as errors (torch
    warns when a scheduler steps an optimizer whose step() never ran)."""
    torch.manual_seed(0)
    sizes = [40, 30, 20]
    gen = torch.Generator().manual_seed(0)

    def batch():
        bags = [random_bags(r, 8, gen) for r in sizes]
        return [b[0] for b in bags], [b[1] for b in bags], torch.randn(8, 1, generator=gen)

    top_mlp = nn.Linear(64 * len(sizes), 1)
    idx, off, target = batch()
    env = dict(torch=torch, FusedEmbeddingBagCollection=FusedEmbeddingBagCollection,
               table_sizes=sizes, top_mlp=top_mlp, model=top_mlp, indices=idx, offsets=off,
               loss_fn=nn.functional.mse_loss, batches=[batch() for _ in range(3)])
    code = _docstring_example()
    assert "ebc.optimizer.step()" in code
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, "embedding.py docstring", "exec"), env)
    assert env["ebc"].optimizer.param_groups[0]["lr"] == 0.05


# -- arguments of the wrong type or on another device ------------------------------------

def test_offsets_as_python_lists_are_refused_like_indices():
    m = FusedEmbeddingBag(10, 3, mode="sum")
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    for args, name in [((idx, [0, 1]), "offsets"), (([1, 2, 3], off), "input"),
                       ((idx, off, [1.0, 2.0, 3.0]), "per_sample_weights")]:
        with pytest.raises(TypeError, match=f"^{name} must be a Tensor, got list"):
            m(*args)
    c = FusedEmbeddingBagCollection([(10, 3), (5, 2)], mode="sum")
    with pytest.raises(TypeError, match=re.escape("offsets[1] must be a Tensor, got tuple")):
        c([idx, idx % 5], [off, (0, 1)])


def test_meta_arguments_raise_naming_them():
    """A meta tensor among CPU ones used to route the call to the do-nothing fake
    kernel: the weight stayed as it was, or the forward returned garbage."""
    w, acc, m1, m2 = torch.zeros(5, 3), torch.zeros(5), torch.zeros(5, 3), torch.zeros(5, 3)
    meta_g = _sparse(5, 3, "meta")
    cases = [
        ("grad", lambda: sparse_add_(w, meta_g)),
        ("trail", lambda: sparse_add_(w.bfloat16(), _sparse(5, 3),
                                      trail=torch.zeros(5, 3, dtype=torch.int16, device="meta"))),
        ("grad", lambda: rowwise_adagrad_(w, meta_g, acc, 0.1)),
        ("grad", lambda: rowwise_adagrad_(w, torch.ones(5, 3, device="meta"), acc, 0.1)),
        ("state_sum", lambda: rowwise_adagrad_(w, _sparse(5, 3), acc.to("meta"), 0.1)),
        ("state_sum", lambda: sparse_adagrad_(w, _sparse(5, 3), m1.to("meta"), 0.1)),
        ("exp_avg_sq", lambda: sparse_adam_(w, _sparse(5, 3), m1, m2.to("meta"), 1)),
        ("grad", lambda: sparse_add_(w.to("meta"), _sparse(5, 3))),
    ]
    for name, call in cases:
        with pytest.raises(RuntimeError, match=f"{name} is on (meta|cpu)"):
            call()
    assert not w.any() and not acc.any() and not m1.any() and not m2.any()
    # all on one device is fine (the meta kernel: shapes only)
    functional.sparse_add_(torch.zeros(5, 3, device="meta"), meta_g)

    torch.manual_seed(0)
    emb = FusedEmbeddingBag(10, 3, mode="sum")
    before = emb.weight.clone()
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    for args, name in [((idx.to("meta"), off.to("meta")), "input"),
                       ((idx, off.to("meta")), "offsets"),
                       ((idx, off, torch.ones(3, device="meta")), "per_sample_weights")]:
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(RuntimeError, match=f"{name} is on meta"):
                emb(*args)
    c = FusedEmbeddingBagCollection([(10, 3), (5, 2)], mode="sum")
    with pytest.raises(RuntimeError, match=re.escape("indices[1] is on meta")):
        c([idx, idx.to("meta") % 5], [off, off])
    assert torch.equal(emb.weight, before)


def test_checks_trace_under_torch_compile():
    """The device and autograd checks are plain Python on tensor metadata:
    torch.compile traces them (fullgraph) and the update still happens."""
    w, acc, g = torch.zeros(6, 3), torch.zeros(6), torch.randn(6, 3)
    ref_w, ref_acc = w.clone(), acc.clone()
    rowwise_adagrad_(ref_w, g, ref_acc, 0.1)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(w, g, acc):
        rowwise_adagrad_(w, g, acc, 0.1)
        return w

    step(w, g, acc)
    assert torch.equal(w, ref_w) and torch.equal(acc, ref_acc)


# -- in-place updates of tensors autograd tracks --------------------------------------------

def test_sparse_add_refuses_a_leaf_that_requires_grad_as_add_does():
    w = torch.zeros(5, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad") as torch_err:
        w.add_(1.0)
    for call in (lambda t: sparse_add_(t, _sparse(5, 3)),
                 lambda t: rowwise_adagrad_(t, _sparse(5, 3), torch.zeros(5), 0.1),
                 lambda t: sparse_adagrad_(t, _sparse(5, 3), torch.zeros(5, 3), 0.1)):
        with pytest.raises(RuntimeError, match=re.escape(str(torch_err.value))):
            call(w)
        with pytest.raises(RuntimeError, match="no derivative"):
            call(w * 2)  # tracked, not a leaf: the update would be lost to autograd
    assert not w.any()
    with torch.no_grad():  # as torch: allowed without grad mode
        sparse_add_(w, _sparse(5, 3), alpha=2.0)
        ref = torch.zeros(5, 3).add_(_sparse(5, 3), alpha=2.0)
    assert torch.equal(w.detach(), ref)
    plain = torch.zeros(5, 3)
    sparse_add_(plain, _sparse(5, 3))  # nothing tracks it: fine with grad mode on
    assert torch.equal(plain, ref / 2)
