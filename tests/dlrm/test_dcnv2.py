"""DLRM-DCNv2 (--model dcnv2) and multi-hot bags (--multi-hot): the cross
network and the bags against plain-PyTorch references, the schedule, the
model defaults, and short training runs (learning, world sizes, resume)."""
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dlrm.config import (MODEL_DEFAULTS, MULTI_HOT_SIZES, Config, ConfigError, model_config,
                         parse_args)
from dlrm.data import CriteoTSV, SyntheticCriteo, bag_columns, multi_hot
from dlrm.dcn import DCNDenseArch, LowRankCross
from dlrm.schedule import lr_factor
from tests.dlrm._run import run_inprocess, run_ranks

ROWS = Config(max_rows=5000).table_sizes()


# ---- cross network --------------------------------------------------------
def _cross_ref(x0, V, W, c):
    """x_{l+1} = x0 * (W_l (V_l x_l) + c_l) + x_l, one sample at a time, matrix-vector."""
    out = []
    for s in range(x0.shape[0]):
        x = x0[s]
        for v, w, b in zip(V, W, c):
            x = x0[s] * (w @ (v @ x) + b) + x
        out.append(x)
    return torch.stack(out) if out else x0.clone()


@pytest.mark.parametrize("b,n,layers,rank", [(5, 12, 3, 4), (1, 7, 1, 7), (0, 6, 2, 3), (9, 30, 2, 1)])
def test_cross_matches_reference_forward_and_backward(b, n, layers, rank):
    torch.manual_seed(0)
    net = LowRankCross(n, layers, rank).double()
    with torch.no_grad():
        for c in net.bias:  # nonzero biases, so they are exercised
            c.normal_()
    x0 = torch.randn(b, n, dtype=torch.float64, requires_grad=True)
    out = net(x0)
    params = [*net.V_kernels, *net.W_kernels, *net.bias]
    ref = _cross_ref(x0, net.V_kernels, net.W_kernels, net.bias)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x0] + params, g, allow_unused=True)
    want = torch.autograd.grad(ref, [x0] + params, g, allow_unused=True)
    for a, r in zip(got, want):
        if r is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2 ** -5)])
def test_cross_fused_path_matches_reference(dtype, tol):
    """fp32 and bf16 compute run ipex_train's one-node cross network (native
    epilogues, oneDNN GEMMs): forward and every gradient against the float64
    matrix-vector reference, relative to each tensor's largest value."""
    torch.manual_seed(0)
    net = LowRankCross(40, 3, 8)
    with torch.no_grad():
        for c in net.bias:
            c.normal_()
    x0 = torch.randn(70, 40, requires_grad=True)
    out = net(x0, dtype)
    assert type(out.grad_fn).__name__ == "_LowRankCrossBackward"
    params = [*net.V_kernels, *net.W_kernels, *net.bias]
    x64 = x0.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    ref = _cross_ref(x64, p64[:3], p64[3:6], p64[6:])
    g = torch.randn(70, 40, dtype=torch.float64)
    got = torch.autograd.grad(out, [x0] + params, g.to(dtype))
    want = torch.autograd.grad(ref, [x64] + p64, g)
    for a, r in zip([out] + list(got), [ref] + list(want)):
        assert a.dtype in (dtype, torch.float32)
        err = (a.double() - r).abs().max().item()
        assert err <= tol * r.abs().max().item(), (err, r.abs().max().item())


def test_cross_init_like_torchrec():
    torch.manual_seed(0)
    net = LowRankCross(3456, 3, 512)
    assert [tuple(p.shape) for p in net.V_kernels] == [(512, 3456)] * 3
    assert [tuple(p.shape) for p in net.W_kernels] == [(3456, 512)] * 3
    assert all(not c.any() for c in net.bias)
    std = (2.0 / (3456 + 512)) ** 0.5  # Xavier normal
    assert abs(net.V_kernels[0].std().item() / std - 1) < 0.01


def test_dcn_dense_arch_shapes_and_bf16_storage():
    torch.manual_seed(0)
    m = DCNDenseArch(13, 26, [16, 8], [32, 16, 1], cross_layers=2, cross_rank=5)
    assert m.top[0].in_features == 27 * 8
    for b in (0, 3):
        out = m(torch.randn(b, 13), torch.randn(b, 26, 8))
        assert out.shape == (b,) and out.dtype == torch.float32
    dense, emb = torch.randn(4, 13), torch.randn(4, 26, 8)
    bf = DCNDenseArch(13, 26, [16, 8], [32, 1], 2, 5, compute_dtype=torch.float32)
    bf = bf.to(torch.bfloat16)
    ref = DCNDenseArch(13, 26, [16, 8], [32, 1], 2, 5)
    ref.load_state_dict({k: v.float() for k, v in bf.state_dict().items()})
    out = bf(dense, emb)
    torch.testing.assert_close(out, ref(dense, emb))
    out.sum().backward()
    assert bf.cross.V_kernels[0].grad.dtype == torch.bfloat16


# ---- multi-hot bags -------------------------------------------------------
M64 = (1 << 64) - 1


def _multi_hot_ref(ids, t, n, k):
    """One bag by the documented rule, in Python integers (splitmix64 finaliser,
    bounded Zipf offsets): [id, (id + d_1) % n, ...]."""
    from dlrm.data import MULTI_HOT_ZIPF as s

    bag = [ids]
    for j in range(1, k):
        if n == 1:
            bag.append(ids)
            continue
        x = ((ids * 1024 + j) * 64 + t + 0x9E3779B97F4A7C15) & M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
        u = ((x ^ (x >> 31)) >> 11) / 2.0 ** 53
        m = n - 1
        xx = (1.0 + u * ((m + 1.0) ** (1 - s) - 1.0)) ** (1 / (1 - s))
        d = min(max(int(xx) - 1, 0), m - 1) + 1
        bag.append((ids + d) % n)
    return bag


def test_multi_hot_matches_reference_and_is_deterministic():
    src = SyntheticCriteo(ROWS, 64, seed=2)
    one = src.batch(0).sparse
    bags = multi_hot(one, ROWS, MULTI_HOT_SIZES)
    assert bags.shape == (64, sum(MULTI_HOT_SIZES)) and bags.dtype == torch.int64
    assert torch.equal(bags, multi_hot(one.clone(), ROWS, MULTI_HOT_SIZES))
    cols = bag_columns(MULTI_HOT_SIZES)
    for t, ((a, b), n) in enumerate(zip(cols, ROWS)):
        assert torch.equal(bags[:, a], one[:, t])  # the bag starts with the one-hot id
        assert ((bags[:, a:b] >= 0) & (bags[:, a:b] < n)).all()
        for s in range(0, 64, 7):
            assert bags[s, a:b].tolist() == _multi_hot_ref(int(one[s, t]), t, n, b - a), (t, s)
    assert torch.equal(multi_hot(one, ROWS, [1] * 26), one)


def test_multi_hot_skew_and_spread():
    ids = torch.arange(2000).repeat(26, 1).t().contiguous()
    rows = [100_000] * 26
    bags = multi_hot(ids, rows, MULTI_HOT_SIZES)
    a, b = bag_columns(MULTI_HOT_SIZES)[20]  # the 100-lookup feature
    d = (bags[:, a + 1:b] - bags[:, a:a + 1]) % 100_000
    assert (d >= 1).all()
    assert (d <= 10).float().mean() > 0.3    # mostly near the id ...
    assert (d > 1000).float().mean() > 0.05  # ... with a long tail
    assert len(bags[:, a:b].unique()) > 20_000


def test_synthetic_multi_hot_layout_and_signal():
    src = SyntheticCriteo(ROWS, 2048, seed=1, bag_sizes=MULTI_HOT_SIZES)
    b = src.batch(0)
    one = SyntheticCriteo(ROWS, 2048, seed=1).batch(0)
    assert torch.equal(b.sparse, multi_hot(one.sparse, ROWS, MULTI_HOT_SIZES))
    assert torch.equal(b.dense, one.dense)
    assert 0.1 < b.labels.mean() < 0.5
    auc = roc_auc_score(b.labels.numpy(), src.true_logit(b.dense, b.sparse).numpy())
    assert auc > 0.75


def test_tsv_multi_hot_expands_each_line(tmp_path):
    from tests.dlrm.test_data import _line

    path = tmp_path / "day.tsv"
    path.write_text(_line() + _line("0"))
    (one,) = CriteoTSV(str(path), ROWS, batch_size=4).one_pass()
    (hot,) = CriteoTSV(str(path), ROWS, batch_size=4, bag_sizes=MULTI_HOT_SIZES).one_pass()
    assert torch.equal(hot.sparse, multi_hot(one.sparse, ROWS, MULTI_HOT_SIZES))
    assert torch.equal(hot.dense, one.dense) and torch.equal(hot.labels, one.labels)


@pytest.mark.parametrize("kind", ["torch", "fused"])
def test_local_tables_sum_multi_hot_bags(kind):
    from dlrm.embeddings import LocalTables, initial_table

    rows, sizes = [5, 3, 9], [2, 1, 4]
    g = torch.Generator().manual_seed(0)
    sparse = torch.cat([torch.randint(0, n, (6, k), generator=g) for n, k in zip(rows, sizes)], 1)
    tabs = LocalTables([2, 0], rows, 4, kind=kind, optimizer="sgd", lr=0.1,
                       dtype=torch.float32, seed=1, bag_sizes=sizes)
    out = tabs(sparse)
    ref = torch.cat([initial_table(9, 4, 1, 2)[sparse[:, 3:7]].sum(1),
                     initial_table(5, 4, 1, 0)[sparse[:, 0:2]].sum(1)], 1)
    torch.testing.assert_close(out, ref)


# ---- schedule and flags ---------------------------------------------------
def test_lr_factor():
    assert [lr_factor(s, 4) for s in (1, 2, 4, 5, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    f = [lr_factor(s, 2, 10, 4) for s in range(1, 17)]
    assert f[:10] == [0.5] + [1.0] * 9
    assert f[10:] == [(3 / 4) ** 2, (2 / 4) ** 2, (1 / 4) ** 2, 0.0, 0.0, 0.0]
    assert lr_factor(7) == 1.0


def test_dcnv2_defaults_apply_unless_given():
    cfg = parse_args(["--model", "dcnv2"]).check()
    for k, v in MODEL_DEFAULTS["dcnv2"].items():
        assert getattr(cfg, k) == v, k
    assert cfg.mlp_sizes() == ([512, 256, 128], [1024, 1024, 512, 256, 1])
    cfg = parse_args(["--model", "dcnv2", "--embedding-dim", "16", "--bottom-mlp", "32-16",
                      "--lr", "0.5", "--max-rows=77"]).check()
    assert (cfg.embedding_dim, cfg.lr, cfg.max_rows, cfg.optimizer) == (16, 0.5, 77, "adagrad")
    assert parse_args([]).embedding_dim == 64 and parse_args([]).model == "dlrm"
    assert model_config("dcnv2", lr=0.3).lr == 0.3
    assert model_config("dcnv2", multi_hot=True).bag_sizes() == list(MULTI_HOT_SIZES)


@pytest.mark.parametrize("argv,match", [
    (["--model", "dcn"], "--model: must be one of"),
    (["--model", "dcnv2", "--cross-rank", "0"], "--cross-rank must be positive"),
    (["--lr-decay-start", "5"], "go together"),
    (["--lr-warmup-steps", "10", "--lr-decay-start", "5", "--lr-decay-steps", "3"], "inside the warmup"),
])
def test_bad_dcnv2_flags_are_named(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv).check()


# ---- training -------------------------------------------------------------
# Tiny DCNv2: the default flags' shape scaled down so that each run takes seconds.
DCN = dict(model="dcnv2", multi_hot=True, embedding_dim=8, bottom_mlp="32-8", top_mlp="32-16-1",
           cross_layers=3, cross_rank=16, optimizer="adagrad", emb_optimizer="rowwise_adagrad",
           lr=0.02, emb_lr=0.05)


def test_dcnv2_multi_hot_learns():
    m = run_inprocess(steps=40, eval_every=20, lr_warmup_steps=5, **DCN)
    assert m["evals"][-1]["auc"] > 0.7, m["evals"]
    losses = [m["losses"][s] for s in sorted(m["losses"])]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_dcnv2_resume_is_exact_with_schedule(tmp_path, capsys):
    kw = dict(DCN, dtype="bf16", lr_warmup_steps=4, lr_decay_start=4, lr_decay_steps=4)
    ck = str(tmp_path / "ck")
    whole = run_inprocess(steps=6, **kw)
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=ck, **kw)
    capsys.readouterr()
    resumed = run_inprocess(steps=6, resume=True, checkpoint_dir=ck, **kw)
    assert "replaces the checkpoint's" not in capsys.readouterr().out  # base lrs saved
    assert sorted(resumed["losses"]) == [4, 5, 6]
    for s in (4, 5, 6):
        assert resumed["losses"][s] == whole["losses"][s], s
    assert resumed["evals"][-1] == whole["evals"][-1]


@pytest.mark.multiproc
@pytest.mark.ccl
def test_dcnv2_world_size_2_same_losses(tmp_path):
    from tests.distributed._ccl import need_ccl

    need_ccl()
    kw = dict(DCN, steps=5, dtype="fp32", lr_warmup_steps=2)
    one = run_inprocess(**kw)
    two = run_ranks(2, tmp_path, backend="ccl", **kw)
    assert two["world_size"] == 2
    for s in range(1, 6):
        assert abs(one["losses"][s] - two["losses"][str(s)]) < 1e-5, s
    assert abs(one["evals"][-1]["auc"] - two["evals"][-1]["auc"]) < 1e-4
