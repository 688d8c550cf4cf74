"""One all_reduce, then exit without destroy_process_group: rank 1 with
status 3, the others with 0 (see test_faults.py)."""
import sys

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd

ipd.init_from_env(timeout=60)
t = torch.ones(1 << 18)
dist.all_reduce(t)
assert t[0].item() == dist.get_world_size()
sys.exit(3 if dist.get_rank() == 1 else 0)
