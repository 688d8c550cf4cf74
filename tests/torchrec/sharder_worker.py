"""One rank of the ipex_train sharder checks (run by test_sharder.py).

For each case (sharding type, optimizer, dtype, weighting) the rank builds
the same small model (EmbeddingBagCollection -> Linear), plans it with
TorchRec's planner restricted to that sharding type, wraps it in
DistributedModelParallel with ipex_train.torchrec.sharders(), trains STEPS
steps on its own slice of a global batch, and after every step compares
every local shard (fp32 master values, Adagrad sums) and the dense weights
with an unsharded single-process reference: a FusedEBC with the same
settings trained on the whole global batch, the loss being the mean of the
ranks' losses (DDP averages dense gradients; TorchRec's all-to-all backward
divides embedding gradients by the world size).

Exactness: table-wise at 2 ranks runs the same arithmetic as the reference
(each row's gradient summed over the same bags in the same order, every
scaling a power of 2), so it must match bit for bit; row-wise pools partial
sums per shard and 3 ranks scale by 1/3 in another order, so those compare
within 1e-5 relative. The bf16 masters are held to the same rule (row-wise
at 3 ranks: within bf16 rounding, see tolerance()).

Extra checks (flags): "single" gives every table one feature (the kernel's
fast path: per-table views of the KJT); "pipeline" runs TrainPipelineSparseDist for a few steps
against the reference; "ckpt" saves the sharded state_dict and the fused
optimizer's, trains on, reloads and retrains, and must repeat the same
weights exactly; "fused" shards a model already passed through
fuse_embeddings.

Usage (env RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT set):
    python sharder_worker.py BACKEND CASE [CASE ...]
    CASE = sharding:optimizer:dtype:weighted[:flag,...], e.g. table_wise:sgd:fp32:0:ckpt
"""
import io
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.modules.embedding_configs import PoolingType
from torchrec.streamable import Pipelineable

import ipex_train.torchrec as itr

from _worker_data import BATCH, FEATURES, LR, STEPS, batch, table_specs

TABLES = table_specs(t1_dim=6)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


SHARED = True  # False ("single" flag): t3 reads only f3, every table one feature


def tables(weighted):
    # weighted lookups need SUM pooling
    return [EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d,
                               feature_names=list(fs) if SHARED else fs[:1],
                               pooling=PoolingType.SUM if weighted else p)
            for n, r, d, fs, p in TABLES]


def width():
    return sum(t.embedding_dim * len(t.feature_names) for t in tables(False))


class Model(nn.Module):
    """EBC -> pooled embeddings in sorted key order -> Linear -> one logit."""

    def __init__(self, ebc):
        super().__init__()
        self.ebc = ebc
        self.lin = nn.Linear(width(), 1)

    def forward(self, kjt):
        return self.head(self.ebc(kjt))

    def head(self, kt):
        return self.lin(sorted_values(kt)).squeeze(1)


@torch.fx.wrap
def sorted_values(kt):
    """The pooled values with keys in sorted order (sharded EBCs may order
    them otherwise); a leaf for the pipeline's fx tracer."""
    d = kt.to_dict()
    return torch.cat([d[k] for k in sorted(d)], dim=1)


def global_batch(step, world, weighted):
    """Every rank's KJT joined per key (rank 0's bags first) and the labels."""
    parts = [batch(step, r, weighted) for r in range(world)]
    values, lengths, weights = [], [], []
    for f in FEATURES:
        for kjt, _ in parts:
            jt = kjt[f]
            values.append(jt.values())
            lengths.append(jt.lengths())
            if weighted:
                weights.append(jt.weights())
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES, values=torch.cat(values), lengths=torch.cat(lengths),
        weights=torch.cat(weights) if weighted else None)
    return kjt, [y for _, y in parts]


def loss_fn(logits, labels):
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


class Reference:
    """The unsharded run: a FusedEBC + Linear on the global batch."""

    def __init__(self, opt, dtype, weighted, world):
        torch.manual_seed(0)
        self.model = Model(EmbeddingBagCollection(tables(weighted), is_weighted=weighted))
        self.model.ebc = itr.FusedEBC.from_ebc(self.model.ebc, optimizer=opt, lr=LR,
                                               dtype=dtype)
        self.opt = torch.optim.SGD(self.model.lin.parameters(), lr=LR)
        self.world, self.weighted, self.dtype = world, weighted, dtype

    def step(self, step):
        kjt, labels = global_batch(step, self.world, self.weighted)
        kt = self.model.ebc(kjt)
        rows = kt.values().split(BATCH)
        logits = [self.model.lin(torch.cat(
            [r.split(kt.length_per_key(), 1)[kt.keys().index(k)] for k in sorted(kt.keys())],
            1)).squeeze(1) for r in rows]
        losses = [loss_fn(x, y) for x, y in zip(logits, labels)]
        self.opt.zero_grad()
        (sum(losses) / self.world).backward()
        self.opt.step()
        return losses, logits

    def fresh_model(self):
        """A plain torchrec model with the reference's starting weights."""
        torch.manual_seed(0)
        return Model(EmbeddingBagCollection(tables(self.weighted), is_weighted=self.weighted))


def plan(model, sharders, sharding, world):
    # column-wise: shards of 4 columns, so the 8-wide tables split in two
    constraints = {t[0]: ParameterConstraints(
        sharding_types=[sharding], compute_kernels=["fused"],
        min_partition=4 if sharding == "column_wise" else None) for t in TABLES}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu"),
                                       constraints=constraints)
    p = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    ebc_plan = next(v for k, v in p.plan.items() if k.endswith("ebc"))
    assert all(ps.sharding_type == sharding for ps in ebc_plan.values()), p
    return p


class TrainModel(nn.Module):
    """What TrainPipelineSparseDist runs: batch -> (loss, logits)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, b):
        logits = self.model(b.kjt)
        return loss_fn(logits, b.labels), logits


def inner(dmp):
    """The Model inside a DMP (inside TrainModel for the pipeline)."""
    m = dmp.module
    return m.model if isinstance(m, TrainModel) else m


def shards_of(dmp):
    sharded = inner(dmp).ebc
    assert isinstance(sharded, itr.ShardedFusedEBC), type(sharded)
    return list(sharded.shards())


WORLD = 2


def tolerance(exact, dtype):
    """(rtol, atol): none when exact; else fp32 summation order (row-wise
    partial sums, the 1/3 scaling), for bf16 masters too at 2 ranks: row-wise
    bf16 shards pool fp32 partial sums, the total and its gradient are
    rounded to bf16 once, as the reference rounds its pooled sums and their
    gradient. At 3 ranks TorchRec scales that gradient by 1/3 after the
    rounding, the reference before it: bf16 rounding differences."""
    if exact:
        return 0, 0
    return (1e-5, 1e-6) if dtype == torch.float32 or WORLD & (WORLD - 1) == 0 else (2e-3, 2e-4)


def compare(dmp, ref, exact, what):
    rtol, atol = tolerance(exact, ref.dtype)
    want = {}
    for i, t in enumerate(ref.model.ebc.embedding_bag_configs()):
        g, pos, _ = ref.model.ebc._where[i]
        want[t.name] = ref.model.ebc.groups[g].table(pos)
    n = 0
    for cfg, tab in shards_of(dmp):
        (r0, c0), (r, c) = cfg.local_metadata.shard_offsets, cfg.local_metadata.shard_sizes
        src = want[cfg.name]
        torch.testing.assert_close(tab.master_weight(), src.master_weight()[r0:r0 + r, c0:c0 + c],
                                   rtol=rtol, atol=atol, msg=lambda m: f"{what} {cfg.name}: {m}")
        if src.state_sum is not None:
            s = src.state_sum[r0:r0 + r] if src.state_sum.dim() == 1 else \
                src.state_sum[r0:r0 + r, c0:c0 + c]
            torch.testing.assert_close(tab.state_sum, s, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{what} {cfg.name} state: {m}")
        n += 1
    for name, p in inner(dmp).lin.named_parameters():
        torch.testing.assert_close(p, getattr(ref.model.lin, name), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{what} lin.{name}: {m}")
    return n


def dense_optimizer(dmp):
    dense = list(itr.dense_parameters(dmp))  # not the shards' parameter views
    assert {id(p) for p in dense} == {id(p) for p in inner(dmp).lin.parameters()}, \
        [n for n, _ in dmp.named_parameters()]
    return torch.optim.SGD(dense, lr=LR)


def train(dmp, opt, ref, steps, rank, weighted, exact, what):
    for step in steps:
        kjt, labels = batch(step, rank, weighted)
        loss = loss_fn(dmp(kjt), labels)
        opt.zero_grad()
        loss.backward()  # the shards update here
        opt.step()
        ref_losses, _ = ref.step(step)
        rtol, atol = tolerance(exact, ref.dtype)
        torch.testing.assert_close(loss.detach(), ref_losses[rank].detach(), rtol=rtol, atol=atol)
        compare(dmp, ref, exact, f"{what} step {step}")


def run_case(case, rank, world, backend):
    sharding, opt, dtype, weighted, *flags = case.split(":")
    flags = set(flags[0].split(",")) if flags else set()
    dtype, weighted = DTYPES[dtype], weighted == "1"
    global SHARED, WORLD
    SHARED, WORLD = "single" not in flags, world
    exact = sharding in ("table_wise", "column_wise") and world == 2
    ref = Reference(opt, dtype, weighted, world)
    model = ref.fresh_model()
    if "fused" in flags:  # a fuse_embeddings model keeps its settings and weights
        model = itr.fuse_embeddings(model, optimizer=opt, lr=LR, dtype=dtype)
        sharders = itr.sharders()
    else:
        sharders = itr.sharders(optimizer=opt, lr=LR, dtype=dtype)
    if "pipeline" in flags:
        model = TrainModel(model)
    p = plan(model, sharders, sharding, world)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=p,
                                   sharders=sharders)
    n = compare(dmp, ref, True, f"{case} after sharding")
    dense = dense_optimizer(dmp)
    if "pipeline" in flags:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter
        kopt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                     lambda params: torch.optim.SGD(params, lr=LR))
        opt_all = CombinedOptimizer([dmp.fused_optimizer, kopt])
        pipe = TrainPipelineSparseDist(dmp, opt_all, torch.device("cpu"))
        data = iter([_Batch(*batch(s, rank, weighted)) for s in range(STEPS)])
        for step in range(STEPS):
            logits = pipe.progress(data)
            _, ref_logits = ref.step(step)
            torch.testing.assert_close(logits.detach(), ref_logits[rank].detach(),
                                       rtol=tolerance(exact, ref.dtype)[0],
                                       atol=tolerance(exact, ref.dtype)[1])
            compare(dmp, ref, exact, f"{case} pipeline step {step}")
    elif "dcpload" not in flags:
        train(dmp, dense, ref, range(STEPS), rank, weighted, exact, case)
    if "ckpt" in flags:
        check_checkpoint(dmp, dense, case, rank, weighted)
    if "dcpsave" in flags:
        import torch.distributed.checkpoint as dcp
        dcp.save(dcp_state(dmp, opt), checkpoint_id=dcp_dir(case))
    if "dcpload" in flags:
        check_reshard(dmp, case, opt, dtype, weighted)
    print(f"rank {rank}/{world} {backend} {case}: {STEPS} steps match on {n} shards",
          flush=True)


class _Batch(Pipelineable):
    """What TrainPipelineSparseDist moves around: a KJT and labels."""

    def __init__(self, kjt, labels):
        self.kjt, self.labels = kjt, labels

    def to(self, device, non_blocking=False):
        return _Batch(self.kjt.to(device, non_blocking=non_blocking),
                      self.labels.to(device, non_blocking=non_blocking))

    def record_stream(self, stream):
        self.kjt.record_stream(stream)
        self.labels.record_stream(stream)


def check_checkpoint(dmp, dense, case, rank, weighted):
    """save -> 2 more steps -> load -> the same 2 steps: identical weights."""
    def snapshot():
        return ([tab.master_weight().clone() for _, tab in shards_of(dmp)] +
                [tab.state_sum.clone() for _, tab in shards_of(dmp)
                 if tab.state_sum is not None] +
                [p.detach().clone() for p in inner(dmp).lin.parameters()])

    buf = io.BytesIO()
    torch.save({"model": dmp.state_dict(), "fused": dmp.fused_optimizer.state_dict(),
                "dense": dense.state_dict()}, buf)
    saved = snapshot()

    def more_steps():
        for step in (STEPS, STEPS + 1):
            kjt, labels = batch(step, rank, weighted)
            loss = loss_fn(dmp(kjt), labels)
            dense.zero_grad()
            loss.backward()
            dense.step()
        return snapshot()

    after = more_steps()
    assert any(not torch.equal(a, b) for a, b in zip(after, saved)), "training changed nothing"
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    dmp.load_state_dict(state["model"])
    dmp.fused_optimizer.load_state_dict(state["fused"])
    dense.load_state_dict(state["dense"])
    for a, b in zip(snapshot(), saved):
        assert torch.equal(a, b), f"{case}: load_state_dict did not restore the saved values"
    for a, b in zip(more_steps(), after):
        assert torch.equal(a, b), f"{case}: resumed training differs from the first run"


def dcp_dir(case):
    """A dcpsave case's checkpoint directory, found by the dcpload case of the
    same optimizer:dtype:weighted (any sharding type)."""
    return os.path.join(os.environ["SHARDER_CKPT_DIR"], "-".join(case.split(":")[1:4]))


def dcp_state(dmp, opt):
    """What the dcp cases save and load: the model and, with Adagrad, the fused
    optimizer's sums (SGD's fused state is empty: dcp.save writes no entry for
    it and dcp.load then fails with "Missing key in checkpoint state_dict")."""
    state = {"model": dmp.state_dict()}
    if opt != "sgd":
        state["fused"] = dmp.fused_optimizer.state_dict()
    return state


def check_reshard(dmp, case, opt, dtype, weighted):
    """Loads (torch.distributed.checkpoint) what a 2-rank run of the case with
    the same optimizer:dtype:weighted saved after STEPS steps (dcp_dir) into
    this run's shards (another world size and plan):
    every shard must then hold the 2-rank reference's values exactly."""
    import torch.distributed.checkpoint as dcp
    state = dcp_state(dmp, opt)
    dcp.load(state, checkpoint_id=dcp_dir(case))
    dmp.load_state_dict(state["model"])
    if "fused" in state:
        dmp.fused_optimizer.load_state_dict(state["fused"])
    ref = Reference(opt, dtype, weighted, 2)
    for step in range(STEPS):
        ref.step(step)
    compare(dmp, ref, True, f"{case} loaded from 2 ranks")


def check_refusals(rank, world, backend):
    """What the sharder does not do fails loudly, on every rank: a
    table-column-wise plan (made for TorchRec's own sharder), column-wise with
    row-wise Adagrad, two column shards of a table on one rank, and resharding."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    model = Reference("sgd", torch.float32, False, world).fresh_model()
    dp = plan(model, [EmbeddingBagCollectionSharder()], "table_column_wise", world)
    try:
        DistributedModelParallel(model, device=torch.device("cpu"), plan=dp,
                                 sharders=itr.sharders())
    except ValueError as e:
        assert "table_column_wise" in str(e) and "supported" in str(e), e
    else:
        raise AssertionError("a table-column-wise plan was accepted")
    assert "column_wise" not in itr.sharders(optimizer="rowwise_adagrad")[0].sharding_types("cpu")
    model = Reference("sgd", torch.float32, False, world).fresh_model()
    cw = plan(model, itr.sharders(), "column_wise", world)
    try:
        DistributedModelParallel(model, device=torch.device("cpu"), plan=cw,
                                 sharders=itr.sharders(optimizer="rowwise_adagrad"))
    except ValueError as e:
        assert "column_wise with rowwise_adagrad" in str(e), e
    else:
        raise AssertionError("a column-wise plan with row-wise Adagrad was accepted")
    # both column shards of t0 on rank 0 (explicit ranks; the planner spreads them)
    from torchrec.distributed.sharding_plan import (
        column_wise, construct_module_sharding_plan, table_wise)
    from torchrec.distributed.types import ShardingPlan
    model = Reference("sgd", torch.float32, False, world).fresh_model()
    per_table = {n: table_wise(rank=0, compute_kernel="fused") for n, *_ in TABLES[1:]}
    per_table["t0"] = column_wise(ranks=[0, 0], compute_kernel="fused")
    two = ShardingPlan({"ebc": construct_module_sharding_plan(
        model.ebc, per_table, sharder=itr.sharders()[0], world_size=world, device_type="cpu")})
    try:
        DistributedModelParallel(model, device=torch.device("cpu"), plan=two,
                                 sharders=itr.sharders())
    except ValueError as e:
        assert "'t0'" in str(e) and "several shards on one rank" in str(e), e
    else:
        raise AssertionError("a plan with two column shards of t0 on rank 0 was accepted")
    model = Reference("sgd", torch.float32, False, world).fresh_model()
    sharders = itr.sharders()
    dmp = DistributedModelParallel(model, device=torch.device("cpu"),
                                   plan=plan(model, sharders, "table_wise", world),
                                   sharders=sharders)
    try:
        dmp.module.ebc.update_shards({}, None, None)
    except NotImplementedError as e:
        assert "in-place resharding" in str(e), e
    else:
        raise AssertionError("update_shards did not refuse")
    print(f"rank {rank}/{world} {backend} refusals: ok", flush=True)


def main():
    backend, cases = sys.argv[1], sys.argv[2:]
    if backend == "ccl":
        import ipex_train.distributed  # noqa: F401  (registers "ccl")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend, rank=rank, world_size=world)
    assert dist.get_backend() == backend, dist.get_backend()
    for case in cases:
        if case == "refusals":
            check_refusals(rank, world, backend)
        else:
            run_case(case, rank, world, backend)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
