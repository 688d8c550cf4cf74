"""DLRM model pieces: interaction, shapes, placement, batch slices, config checks."""
import pytest
import torch

from dlrm.config import Config, ConfigError, parse_args
from dlrm.model import DenseArch, interact
from dlrm.parallel import batch_splits, place_tables


def _interact_ref(x, emb):
    feats = [x] + [emb[:, f] for f in range(emb.shape[1])]
    n = len(feats)
    return torch.cat([x] + [(feats[i] * feats[j]).sum(1, keepdim=True)
                            for i in range(n) for j in range(i + 1, n)], 1)


@pytest.mark.parametrize("b,f,d", [(5, 3, 4), (1, 26, 8), (0, 2, 3), (7, 1, 5)])
def test_interact_matches_loop_forward_and_backward(b, f, d):
    torch.manual_seed(0)
    x = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(b, f, d, dtype=torch.float64, requires_grad=True)
    out = interact(x, emb)
    assert out.shape == (b, d + (f + 1) * f // 2)
    ref = _interact_ref(x, emb)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, emb), g)
    want = torch.autograd.grad(ref, (x, emb), g)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)
    if b:
        torch.autograd.gradcheck(interact, (x[:2].detach().requires_grad_(),
                                            emb[:2].detach().requires_grad_()))


@pytest.mark.parametrize("b", [0, 1, 7])
def test_dense_arch_shapes(b):
    m = DenseArch(13, 26, [16, 8], [32, 16, 1])
    assert m.top[0].in_features == 8 + 27 * 26 // 2
    out = m(torch.randn(b, 13), torch.randn(b, 26, 8))
    assert out.shape == (b,) and out.dtype == torch.float32


def test_dense_arch_bf16_storage_fp32_compute():
    torch.manual_seed(0)
    m = DenseArch(13, 26, [16, 8], [32, 1], compute_dtype=torch.float32).to(torch.bfloat16)
    dense, emb = torch.randn(4, 13), torch.randn(4, 26, 8)
    out = m(dense, emb)
    ref = DenseArch(13, 26, [16, 8], [32, 1])
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    torch.testing.assert_close(out, ref(dense, emb))
    out.sum().backward()
    assert m.top[0].weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_place_tables_balanced_and_complete(world):
    rows = Config(max_rows=100_000).table_sizes()
    owned = place_tables(rows, world)
    assert sorted(t for ts in owned for t in ts) == list(range(26))
    loads = [sum(rows[t] for t in ts) for ts in owned]
    assert max(loads) - min(loads) <= max(rows)  # greedy bound


@pytest.mark.parametrize("b,w", [(10, 3), (9, 3), (1, 1), (2048, 2)])
def test_batch_splits(b, w):
    s = batch_splits(b, w)
    assert sum(s) == b and len(s) == w and max(s) - min(s) <= 1


@pytest.mark.parametrize("argv,match", [
    (["--bottom-mlp", "512-256-32"], "--bottom-mlp must end in --embedding-dim"),
    (["--top-mlp", "512-2"], "--top-mlp must end in 1"),
    (["--top-mlp", "512-x-1"], "--top-mlp: expected sizes"),
    (["--dtype", "fp16"], "--dtype: must be one of"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--data", "criteo-tsv"], "needs --train-file"),
    (["--data", "criteo-tsv", "--train-file", "/nonexistent.tsv"], "no such file"),
    (["--resume"], "need --checkpoint-dir"),
    (["--table-rows", "5,5"], "need 26 tables"),
    (["--embeddings", "torch", "--emb-optimizer", "rowwise_adagrad"], "rowwise_adagrad needs the fused"),
])
def test_bad_configs_are_named(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv).check()


def test_batch_smaller_than_world():
    with pytest.raises(ConfigError, match="smaller than the world size"):
        parse_args(["--batch-size", "2"]).check(world_size=3)


def test_main_reports_config_error(capsys):
    from dlrm.train import main

    assert main(["--embedding-dim", "0"]) == 2
    assert "--embedding-dim must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["torch", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_local_tables_pool_and_init_independent_of_placement(kind, dtype):
    from dlrm.embeddings import LocalTables, initial_table

    rows = [5, 3, 9]
    sparse = torch.tensor([[4, 0, 8], [1, 2, 0]])
    tabs = LocalTables([2, 0], rows, 4, kind=kind, optimizer="sgd", lr=0.1, dtype=dtype, seed=1)
    out = tabs(sparse)
    assert out.shape == (2, 8) and out.dtype == dtype
    ref = torch.cat([initial_table(9, 4, 1, 2)[sparse[:, 2]], initial_table(5, 4, 1, 0)[sparse[:, 0]]], 1)
    if kind == "fused" and dtype == torch.bfloat16:  # split storage: the top half is truncated
        ref = (ref.view(torch.int32) & -65536).view(torch.float32)
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), atol=0, rtol=0)
    empty = LocalTables([], rows, 4, kind=kind, optimizer="sgd", lr=0.1, dtype=dtype, seed=1)
    e = empty(sparse)
    assert e.shape == (2, 0) and e.dtype == dtype
