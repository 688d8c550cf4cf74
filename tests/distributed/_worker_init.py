"""dist.init_process_group("ccl") with each init_method, in one process:
env:// (torchrun's variables), tcp:// and file://, destroying the group in
between. Usage (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set as torchrun
does): python _worker_init.py TCP_PORT FILE OUT_DIR"""
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import ipex_train.distributed  # noqa: F401  (registers "ccl")

port, path, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
sums = {}
for method in ("env://", f"tcp://127.0.0.1:{port}", f"file://{path}"):
    # a short timeout: if one rank cannot rendezvous (its port taken), the
    # others raise within a minute instead of waiting out torch's default
    if method == "env://":
        dist.init_process_group("ccl", timeout=timedelta(seconds=60))
    else:
        dist.init_process_group("ccl", init_method=method, rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
    assert dist.get_backend() == "ccl"
    t = torch.full((5,), float(rank + 1))
    dist.all_reduce(t)
    sums[method.split(":")[0]] = t[0].item()
    sub = dist.new_group([0, 1])  # a second ccl communicator on a subgroup
    u = torch.ones(3)
    dist.all_reduce(u, group=sub)
    sums[method.split(":")[0] + "_sub"] = u[0].item()
    if rank < 2:  # all-to-all on the subgroup (its own direct-read segment)
        v = torch.tensor([10.0 * rank, 10.0 * rank + 1])
        w = torch.empty(2)
        dist.all_to_all_single(w, v, group=sub)
        sums[method.split(":")[0] + "_sub_a2a"] = w.tolist()
    dist.destroy_process_group()
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(sums, f)
