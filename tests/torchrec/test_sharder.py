"""ipex_train.torchrec.sharders() under DistributedModelParallel, 2 and 3 ranks.

Each launch starts real processes on 127.0.0.1 running sharder_worker.py
over one backend; every rank runs several cases in one process group and
checks, after every step, each local shard and the dense weights against an
unsharded single-process run (see sharder_worker.py for the exactness rules).
Case syntax: sharding:optimizer:dtype:weighted[:flags].
"""
import sys
from pathlib import Path

import pytest
import torch

import ipex_train.torchrec as itr
from tests._procs import run_ranks
from tests.distributed._ccl import need_ccl

pytestmark = pytest.mark.torchrec
WORKER = Path(__file__).with_name("sharder_worker.py")
TIMEOUT_S = 300  # one launch; a few cases each, ~30 s on an idle 2-core machine

LAUNCHES = {
    # table-wise at 2 ranks is bit-exact (fp32 and bf16 masters)
    "2-ccl": (2, "ccl", ["table_wise:sgd:fp32:0:ckpt",
                         "table_wise:rowwise_adagrad:bf16:1:single",
                         "row_wise:adagrad:fp32:0:pipeline",
                         "row_wise:sgd:bf16:1:ckpt",
                         "table_wise:adagrad:fp32:0:fused"]),
    # row-wise bf16 masters as exact as fp32's (fp32 partial sums, one rounding)
    "2-ccl-rw-bf16": (2, "ccl", ["row_wise:adagrad:bf16:0", "row_wise:rowwise_adagrad:bf16:0",
                                 "row_wise:rowwise_adagrad:bf16:1:pipeline"]),
    # column-wise (8-wide tables in two 4-column shards): bit-exact at 2 ranks
    "2-ccl-cw": (2, "ccl", ["column_wise:sgd:fp32:0:ckpt", "column_wise:adagrad:bf16:1:pipeline"]),
    "3-ccl": (3, "ccl", ["table_wise:adagrad:fp32:1:ckpt", "row_wise:sgd:fp32:0:fused,single",
                         "row_wise:rowwise_adagrad:fp32:1:pipeline", "row_wise:sgd:bf16:1",
                         "column_wise:adagrad:fp32:0"]),
}
# gloo: checkpoints saved at 2 ranks (torch.distributed.checkpoint) load at 3
# ranks under another plan (a dcpload case reads the dcpsave case of the same
# optimizer:dtype:weighted): TorchRec's resharding path, fp32 and bf16 masters,
# Adagrad sums; table-wise -> row-wise and column-wise, column-wise -> table-wise
SAVE = (2, "gloo", ["row_wise:rowwise_adagrad:fp32:1", "refusals",
                    "column_wise:sgd:bf16:0:dcpsave", "table_wise:adagrad:fp32:0:dcpsave",
                    "table_wise:adagrad:bf16:0:ckpt"])
LOAD = (3, "gloo", ["row_wise:sgd:bf16:0", "table_wise:rowwise_adagrad:fp32:1",
                    "row_wise:adagrad:fp32:0:dcpload", "column_wise:adagrad:fp32:0:dcpload",
                    "table_wise:sgd:bf16:0:dcpload"])

# the same over ccl, column-wise <-> row-wise: at 3 ranks some rank holds no
# shard of a 2-shard column-wise table, whose ShardedTensor.device torch 2.13
# answered with CUDA for any backend but gloo ("Torch not compiled with CUDA
# enabled" inside dcp.load; ipex_train/distributed/_sharded_tensor.py)
SAVE_CCL = (2, "ccl", ["column_wise:adagrad:fp32:0:dcpsave", "row_wise:sgd:bf16:1:dcpsave"])
LOAD_CCL = (3, "ccl", ["row_wise:adagrad:fp32:0:dcpload", "column_wise:sgd:bf16:1:dcpload"])


def _run(world, backend, cases, ckpt_dir=""):
    if backend == "ccl":
        need_ccl()
    return run_ranks([sys.executable, WORKER, backend, *cases], world, TIMEOUT_S,
                     OMP_NUM_THREADS=1, SHARDER_CKPT_DIR=ckpt_dir)


def check(results, world, backend, cases):
    for rank, r in enumerate(results):
        out = r.stdout
        assert r.returncode == 0, f"rank {rank} failed ({world} ranks, {backend}):\n{out[-5000:]}"
        for case in cases:
            if case == "refusals":
                assert f"rank {rank}/{world} {backend} refusals: ok" in out, out[-3000:]
            else:
                assert f"rank {rank}/{world} {backend} {case}: 3 steps match" in out, out[-3000:]


@pytest.mark.multiproc
@pytest.mark.ccl
@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_sharded_training_matches_unsharded(launch):
    world, backend, cases = LAUNCHES[launch]
    check(_run(world, backend, cases), world, backend, cases)


@pytest.mark.multiproc
def test_gloo_and_checkpoint_across_world_sizes(tmp_path):
    check(_run(*SAVE, ckpt_dir=tmp_path), *SAVE)
    check(_run(*LOAD, ckpt_dir=tmp_path), *LOAD)


@pytest.mark.multiproc
@pytest.mark.ccl
def test_ccl_checkpoint_across_world_sizes(tmp_path):
    check(_run(*SAVE_CCL, ckpt_dir=tmp_path), *SAVE_CCL)
    check(_run(*LOAD_CCL, ckpt_dir=tmp_path), *LOAD_CCL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="adam"), "optimizer adam is not supported"),
    (dict(dtype=torch.float16), "dtype must be"),
    (dict(fused_params={"weight_decay": 0.1}), "weight_decay"),
])
def test_sharder_rejects_what_the_kernels_do_not_run(kwargs, match):
    with pytest.raises(ValueError, match=match):
        itr.sharders(**kwargs)


def test_sharder_takes_fbgemm_fused_params():
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    s = itr.sharders(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                                   "learning_rate": 0.3})[0]
    assert s.fused_params["optimizer"] == EmbOptimType.EXACT_ROWWISE_ADAGRAD
    # column-wise shards would change row-wise Adagrad (one sum per row over all columns)
    assert s.sharding_types("cpu") == ["table_wise", "row_wise"]
    assert itr.sharders()[0].sharding_types("cpu") == ["table_wise", "row_wise", "column_wise"]
    assert s.compute_kernels("row_wise", "cpu") == ["fused"]
