"""One rank of the 2-rank DistributedModelParallel check (run by test_dmp.py).

Each rank builds the same small model (an EmbeddingBagCollection feeding a
Linear), shards the tables table-wise with FBGEMM's fused EXACT_SGD kernel
through TorchRec's planner, trains a few steps on its own slice of a global
batch, and compares every local shard and the dense weights with a
single-process reference that trains an unsharded copy on the global batch
with dense gradients and torch.optim.SGD.

Gradient semantics being checked: DDP averages dense gradients over ranks,
and TorchRec's all-to-all backward divides embedding gradients by the world
size too (comm_ops' gradient division), so the reference trains on the mean
of the ranks' losses.

Usage (env RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT set):
    python dmp_worker.py BACKEND
Exits non-zero (with a traceback) on any mismatch.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import torchrec
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType

from _worker_data import LR, STEPS, batch, table_specs

TABLES = table_specs(t1_dim=4)


class Model(nn.Module):
    """EBC -> concatenated pooled embeddings -> Linear -> one logit."""

    def __init__(self, device):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d,
                                       feature_names=list(fs), pooling=p)
                    for n, r, d, fs, p in TABLES], device=device)
        self.keys = None
        self.lin = nn.Linear(sum(t[2] * len(t[3]) for t in TABLES), 1, device=device)

    def forward(self, kjt):
        kt = self.ebc(kjt)
        # sharded EBCs may order the keys differently: fix the order here
        d = kt.to_dict()
        return self.lin(torch.cat([d[k] for k in sorted(d)], dim=1)).squeeze(1)


def loss_fn(logits, labels):
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def copy_into_shards(dmp, reference):
    """Copies the reference's weights into the sharded model's local shards."""
    ref = reference.state_dict()
    for key, value in dmp.state_dict().items():
        src = ref[key.removeprefix("module.")]
        if hasattr(value, "local_shards"):
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                r, c = shard.metadata.shard_sizes
                shard.tensor.copy_(src[r0:r0 + r, c0:c0 + c])
        else:
            value.copy_(src)


def compare_shards(dmp, reference, what):
    ref = reference.state_dict()
    checked = 0
    for key, value in dmp.state_dict().items():
        src = ref[key.removeprefix("module.")]
        pieces = ([(s.tensor, s.metadata) for s in value.local_shards()]
                  if hasattr(value, "local_shards") else [(value, None)])
        for tensor, meta in pieces:
            want = src
            if meta is not None:
                (r0, c0), (r, c) = meta.shard_offsets, meta.shard_sizes
                want = src[r0:r0 + r, c0:c0 + c]
            torch.testing.assert_close(tensor, want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{what}: {key}: {m}")
            checked += 1
    assert checked > 0, "no local weights were compared"


def main():
    backend = sys.argv[1]
    if backend == "ccl":
        import ipex_train.distributed  # noqa: F401  (registers "ccl")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend, rank=rank, world_size=world)
    assert dist.get_backend() == backend, dist.get_backend()
    torch.manual_seed(0)
    reference = Model(torch.device("cpu"))
    model = Model(torch.device("meta"))

    constraints = {n: ParameterConstraints(
        sharding_types=[ShardingType.TABLE_WISE.value],
        compute_kernels=[EmbeddingComputeKernel.FUSED.value]) for n, *_ in TABLES}
    sharder = EmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    placed = {name: p.ranks for name, p in plan.plan["ebc"].items()}
    assert all(p.sharding_type == ShardingType.TABLE_WISE.value
               for p in plan.plan["ebc"].values()), plan
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan,
                                   sharders=[sharder])
    copy_into_shards(dmp, reference)
    compare_shards(dmp, reference, "after copy")

    dense = [p for n, p in dmp.named_parameters() if "ebc" not in n]
    dense_opt = torch.optim.SGD(dense, lr=LR)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR)
    for step in range(STEPS):
        kjt, labels = batch(step, rank)
        loss = loss_fn(dmp(kjt), labels)
        dense_opt.zero_grad()
        loss.backward()  # embedding shards update here (fused EXACT_SGD)
        dense_opt.step()

        # reference: the mean of every rank's loss on the unsharded model
        ref_opt.zero_grad()
        losses = [loss_fn(reference(k), y) for k, y in
                  (batch(step, r) for r in range(world))]
        torch.testing.assert_close(loss.detach(), losses[rank].detach(),
                                   rtol=1e-5, atol=1e-6)
        (sum(losses) / world).backward()
        ref_opt.step()
        compare_shards(dmp, reference, f"step {step}")
    print(f"rank {rank}/{world} {backend}: {STEPS} steps match; placement {placed}",
          flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
