"""Hybrid parallelism: process group set-up, table placement, batch slicing and
the pooled-embedding exchange.

Tables are model-parallel (each rank owns whole tables and looks them up for
the *global* batch); the MLPs are data-parallel (each rank runs its slice of
the batch). ``all_to_all_single`` turns "my tables, all samples" into "all
tables, my samples":

    rank r before: [B,   |T_r| * D]  rows split by destination: B_0 | B_1 | ...
    rank r after:  [B_r, 26 * D]     columns from every owner, in table order

and its backward sends each sample's gradient back to the owner of the table.
"""
import os

import torch
import torch.distributed as dist

from .config import Config


def init_distributed(backend, timeout=Config.timeout):
    """Joins the job's process group, if launched as one; returns (rank, world_size).

    ``ipex_train.distributed.init_from_env`` reads torchrun's, MPI's or Slurm's
    variables; with none of them this is a single-process run without a group.
    `timeout`: seconds any collective may wait for the other ranks.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not _launched_as_group():
        return 0, 1
    import ipex_train.distributed as ipd

    ipd.init_from_env(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _launched_as_group():
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        if int(os.environ.get(var, "1") or "1") > 1:
            return True
    return False


def batch_splits(batch_size, world_size):
    """Rows of the global batch each rank trains on: contiguous, sizes differ by <= 1."""
    base, extra = divmod(batch_size, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def place_tables(table_rows, world_size):
    """Table-wise placement balanced by size: largest table first, to the rank
    with the fewest rows so far (ties: lowest rank). Returns owned table ids per rank."""
    load = [0] * world_size
    owned = [[] for _ in range(world_size)]
    for t in sorted(range(len(table_rows)), key=lambda t: (-table_rows[t], t)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owned[r].append(t)
        load[r] += table_rows[t]
    return [sorted(ts) for ts in owned]


def _exchange(send, send_splits, recv_splits, group):
    """all_to_all_single on flat buffers. bf16 travels as raw bytes (uint8, the
    same bits), which every backend moves exactly (gloo has no 16-bit ints)."""
    if send.dtype == torch.bfloat16:
        recv = send.new_empty(sum(recv_splits)).view(torch.uint8)
        dist.all_to_all_single(recv, send.view(torch.uint8), [2 * n for n in recv_splits],
                               [2 * n for n in send_splits], group=group)
        return recv.view(torch.bfloat16)
    recv = send.new_empty(sum(recv_splits))
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    return recv


class EmbeddingAllToAll(torch.autograd.Function):
    """[B, d_me] pooled embeddings of my tables -> [B_me, sum_r d_r] of all tables.

    ``dims[r]`` is rank r's width (its table count times D), ``splits[r]`` its
    batch rows. Output columns are grouped by owner rank (rank 0's tables
    first); the caller reorders them. Backward is the reverse exchange. The
    backward also divides by the world size: the trainer scales each rank's
    loss by it so that DDP's gradient *average* becomes the global-batch sum
    for the MLPs, and embeddings must not see that factor.
    """

    @staticmethod
    def forward(ctx, local, dims, splits, rank, group):
        world = len(splits)
        ctx.dims, ctx.splits, ctx.rank, ctx.group = dims, splits, rank, group
        d_me, b_me = dims[rank], splits[rank]
        send = local.contiguous().view(-1)
        recv = _exchange(send, [b * d_me for b in splits], [b_me * d for d in dims], group)
        chunks = recv.split([b_me * d for d in dims])
        return torch.cat([c.view(b_me, d) for c, d in zip(chunks, dims)], 1) if world else recv

    @staticmethod
    def backward(ctx, grad):
        dims, splits, rank = ctx.dims, ctx.splits, ctx.rank
        d_me, b_me = dims[rank], splits[rank]
        grad = grad / len(splits)
        send = torch.cat([g.contiguous().view(-1) for g in grad.split(dims, 1)])
        recv = _exchange(send, [b_me * d for d in dims], [b * d_me for b in splits], ctx.group)
        return recv.view(sum(splits), d_me), None, None, None, None
