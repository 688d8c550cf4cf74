"""``ShardedTensor.device`` on a rank that holds none of its shards, for "ccl".

torch 2.13's ShardedTensor answers ``.device`` from its local shards. A rank
with none (two column-wise shards of a table over three ranks; a checkpoint
loaded with ``torch.distributed.checkpoint`` at another world size, where
TorchRec's resharding leaves a rank without a shard of some table) gets "cpu"
only when its group's backend is named "gloo", and otherwise asks CUDA: on a
CPU build that raises "Torch not compiled with CUDA enabled" inside
``dcp.load``. Our ccl groups live on the CPU as gloo's do, so they get the
same answer. Applied when the first ccl group is created; a torch without
that table entry is left alone (nothing there to mend).
"""
import torch
import torch.distributed as dist

_patched = False


def _is_backend(group, name):
    # (a ProcessGroup's _get_backend_name() says "custom" for a registered backend)
    try:
        return dist.get_backend(group) == name
    except (RuntimeError, ValueError):  # not a group of the default world
        return False


def mend_empty_shard_device(backend):
    """Gives groups of `backend` (our ccl) gloo's answer; once per process."""
    global _patched
    if _patched:
        return
    _patched = True
    try:
        from torch.distributed._shard.sharded_tensor import api
        key = torch.Tensor.device.__get__
        torch_device = api._SHARDED_OPS[key]
    except (ImportError, AttributeError, KeyError):
        return

    def device(types, args=(), kwargs=None, process_group=None):
        st = args[0] if args else None
        if isinstance(st, api.ShardedTensor) and not st._local_shards \
                and _is_backend(process_group, backend):
            return torch.device("cpu")
        return torch_device(types, args, kwargs, process_group)

    api._SHARDED_OPS[key] = device
