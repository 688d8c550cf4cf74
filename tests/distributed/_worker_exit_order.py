"""Ranks that end at different times after a successful job (see
test_faults.py::test_rank_that_ends_last_is_not_killed).

    python _worker_exit_order.py OUT_DIR

One all_reduce over the ccl group (oneCCL's MPI transport under mpiexec),
then destroy_process_group (oneCCL finalizes MPI there). Rank 0 exits at
once with status 0. Every other rank waits until rank 0's process has ended,
then 3 s more (MPICH's launcher acts on a rank's exit within milliseconds),
then writes OUT_DIR/rank<r>.done and exits 0.
"""
import os
import sys
import time

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd


def ended(pid):
    """Gone, or a zombie its parent has not reaped yet (hydra's proxy may
    reap only at the end of the job)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


out_dir = sys.argv[1]
ipd.init_from_env(timeout=60)
me = dist.get_rank()
t = torch.ones(1024)
dist.all_reduce(t)
assert t[0].item() == dist.get_world_size()
with open(os.path.join(out_dir, f"rank{me}.pid"), "w") as f:
    f.write(str(os.getpid()))
dist.barrier()
dist.destroy_process_group()
if me != 0:
    with open(os.path.join(out_dir, "rank0.pid")) as f:
        first = int(f.read())
    deadline = time.monotonic() + 60
    while not ended(first):
        if time.monotonic() > deadline:
            sys.exit(f"rank {me}: rank 0 (pid {first}) did not end within 60 s")
        time.sleep(0.05)
    time.sleep(3)
    with open(os.path.join(out_dir, f"rank{me}.done"), "w") as f:
        f.write("ok")
sys.exit(0)
