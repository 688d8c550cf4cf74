"""Hybrid parallelism: process group set-up, table placement, batch slicing and
the pooled-embedding exchange.

Tables are model-parallel (each rank owns whole tables and looks them up for
the *global* batch); the MLPs are data-parallel (each rank runs its slice of
the batch). ``all_to_all_single`` turns "my tables, all samples" into "all
tables, my samples":

    rank r before: [B,   |T_r| * D]  rows split by destination: B_0 | B_1 | ...
    rank r after:  [B_r, 26, D]      every table's vectors, in table order

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


def _feature_runs(ids):
    """A rank's feature ids as (first feature, count) runs of consecutive ids."""
    runs = []
    for f in ids:
        if runs and runs[-1][0] + runs[-1][1] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    return runs


def _owner_slices(flat, placement, rows, dim):
    """`flat` as each owner's [rows, its features, dim] block, owners in rank
    order: (block columns, model-order feature slice) per run of consecutive
    feature ids."""
    off = 0
    for ids in placement:
        block = flat[off:off + rows * len(ids) * dim].view(rows, len(ids), dim)
        k = 0
        for f, n in _feature_runs(ids):
            yield block[:, k:k + n], slice(f, f + n)
            k += n
        off += block.numel()


class EmbeddingAllToAll(torch.autograd.Function):
    """[B, |T_me| * D] pooled embeddings of my tables -> [B_me, F, D] of all F
    tables, features in global order (what the interaction reads).

    ``placement[r]`` lists the features rank r owns (ascending), ``splits[r]``
    its batch rows. The forward copies each owner's received block straight
    into its features' slots of the output (one pass; no cat, no reorder);
    the backward copies each owner's features of the gradient straight into
    the send buffer and divides it by the world size in place: the trainer
    scales each rank's loss by it so that DDP's gradient *average* becomes
    the global-batch sum for the MLPs, and embeddings must not see that factor.
    """

    @staticmethod
    def forward(ctx, local, placement, dim, splits, rank, group):
        ctx.placement, ctx.dim, ctx.splits, ctx.rank, ctx.group = placement, dim, splits, rank, group
        n_me, b_me = len(placement[rank]), splits[rank]
        send = local.contiguous().view(-1)
        recv = _exchange(send, [b * n_me * dim for b in splits],
                         [b_me * len(ids) * dim for ids in placement], group)
        out = local.new_empty(b_me, sum(len(ids) for ids in placement), dim)
        for src, features in _owner_slices(recv, placement, b_me, dim):
            out[:, features].copy_(src)
        return out

    @staticmethod
    def backward(ctx, grad):
        placement, dim, splits, rank = ctx.placement, ctx.dim, ctx.splits, ctx.rank
        n_me, b_me = len(placement[rank]), splits[rank]
        send = grad.new_empty(grad.numel())
        for dst, features in _owner_slices(send, placement, b_me, dim):
            dst.copy_(grad[:, features])
        send.div_(len(splits))
        recv = _exchange(send, [b_me * len(ids) * dim for ids in placement],
                         [b * n_me * dim for b in splits], ctx.group)
        return recv.view(sum(splits), n_me * dim), None, None, None, None, None
