"""End-to-end DLRM training: learning, world sizes, checkpoints, bf16 vs fp32."""
import pytest
import torch

from tests.dlrm._run import run_inprocess, run_ranks

EMB = dict(embeddings="fused", emb_optimizer="rowwise_adagrad")


def test_short_training_learns():
    m = run_inprocess(steps=60, eval_every=30, **EMB)
    assert m["evals"][-1]["auc"] > 0.6
    assert m["evals"][-1]["auc"] > m["evals"][0]["auc"] - 0.01
    losses = [m["losses"][s] for s in sorted(m["losses"])]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert m["throughput"] > 0


def test_bf16_split_matches_fp32_auc():
    kw = dict(steps=80, eval_batches=8, **EMB)
    bf16 = run_inprocess(dtype="bf16", **kw)["evals"][-1]["auc"]
    fp32 = run_inprocess(dtype="fp32", **kw)["evals"][-1]["auc"]
    assert fp32 > 0.7
    assert abs(bf16 - fp32) < 0.005, (bf16, fp32)


@pytest.mark.parametrize("dtype,optimizer", [("fp32", "sgd"), ("bf16", "adagrad")])
def test_checkpoint_resume_is_exact(tmp_path, dtype, optimizer):
    ck = str(tmp_path / "ck")
    kw = dict(dtype=dtype, optimizer=optimizer, checkpoint_dir=ck, **EMB)
    whole = run_inprocess(steps=6, **dict(EMB, dtype=dtype, optimizer=optimizer))
    run_inprocess(steps=3, checkpoint_every=3, **kw)
    resumed = run_inprocess(steps=6, resume=True, **kw)
    assert sorted(resumed["losses"]) == [4, 5, 6]
    for s in (4, 5, 6):
        assert resumed["losses"][s] == whole["losses"][s], s
    assert resumed["evals"][-1] == whole["evals"][-1]


def test_resume_at_other_world_size_is_refused(tmp_path):
    ck = tmp_path / "ck"
    run_inprocess(steps=2, checkpoint_every=2, checkpoint_dir=str(ck), **EMB)
    state = torch.load(ck / "step_2" / "rank0.pt", weights_only=False)
    state["world_size"] = 2
    torch.save(state, ck / "step_2" / "rank0.pt")
    with pytest.raises(ValueError, match="world size 2, this run has 1"):
        run_inprocess(steps=4, resume=True, checkpoint_dir=str(ck), **EMB)


@pytest.mark.multiproc
@pytest.mark.parametrize("world,backend", [
    pytest.param(2, "ccl", marks=pytest.mark.ccl), (3, "gloo")])
def test_world_sizes_give_same_losses(tmp_path, world, backend):
    if backend == "ccl":
        from tests.distributed._ccl import need_ccl
        need_ccl()
    kw = dict(steps=5, dtype="fp32", **EMB)
    one = run_inprocess(**kw)
    many = run_ranks(world, tmp_path, backend=backend, **kw)
    assert many["world_size"] == world
    for s in range(1, 6):
        assert abs(one["losses"][s] - many["losses"][str(s)]) < 1e-5, s
    assert abs(one["evals"][-1]["auc"] - many["evals"][-1]["auc"]) < 1e-4


def test_trains_on_criteo_tsv_with_bad_lines(tmp_path, capfd):
    from tests.dlrm.test_data import _line

    path = tmp_path / "day_0.tsv"
    lines = [_line(str(i % 2)) for i in range(40)]
    lines[6] = "1\tnot\tenough\n"
    path.write_text("".join(lines))
    m = run_inprocess(steps=3, data="criteo-tsv", train_file=str(path), batch_size=16,
                      eval_batches=1, **EMB)
    assert sorted(m["losses"]) == [1, 2, 3]
    assert f"{path}:7: malformed line (expected 40 tab-separated fields, got 3); skipped" \
        in capfd.readouterr().err
    from dlrm.data import BadLine

    with pytest.raises(BadLine, match="day_0.tsv:7:"):
        run_inprocess(steps=3, data="criteo-tsv", train_file=str(path), batch_size=16,
                      eval_batches=1, bad_lines="fail", **EMB)
