"""A gloo job that exits right after a collective (see test_gloo_exit.py).

    python _worker_gloo_exit.py MODE    (torchrun's variables; MODE: destroy | none)

Each rank joins a gloo group (MODE "destroy": init_from_env; "none": torch's
init_process_group after importing ipex_train.distributed), trains a small
DDP model kept (as DLRM's trainer keeps its DDP module) by an object in a
reference cycle, all-reduces a temporary tensor and exits with status 2 at
once: after destroy_process_group ("destroy") or without it ("none").

torch 2.13's exit race, made to happen on most runs instead of a few in
ten: the threads the gloo group starts are pinned to the main thread's CPU
under SCHED_IDLE, so the worker that completes the last all_reduce is
preempted by the main thread it wakes before it drops the op (and with it
the tensor, whose Python object the main thread frees meanwhile); a large
module-level list (BALLAST) keeps the main thread busy once the interpreter
finalizes, and the worker runs again within that time, asks for the GIL to
free the tensor's Python object and is ended by pthread_exit, whose
unwinding through the op's destructor aborts the process ("terminate
called without an active exception", status -6). (A main thread sleeping
there instead aborted in 4 of 12 jobs, the list in 20 of 20.)
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import ipex_train.distributed as ipd

BALLAST_ITEMS = 1_000_000  # a module global: tens of ms to free while finalizing


def threads():
    return set(os.listdir("/proc/self/task"))


def starve(tids, cpu):
    """Pins threads `tids` to `cpu` under SCHED_IDLE (gone ones skipped)."""
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), {cpu})
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:
            pass


class Holder:
    """Keeps the DDP module in a reference cycle, as DLRM's Trainer does."""

    def __init__(self, ddp):
        self.ddp = ddp
        self.me = self


def main():
    global BALLAST
    mode = sys.argv[1]
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[int(os.environ["RANK"]) % len(cpus)]
    os.sched_setaffinity(0, {cpu})  # the main thread
    before = threads()
    if mode == "destroy":
        ipd.init_from_env(backend="gloo", timeout=60)
    else:  # torch's own call: the exit step covers any gloo group
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    starve(threads() - before, cpu)
    torch.manual_seed(0)
    holder = Holder(DDP(torch.nn.Linear(32, 4)))
    opt = torch.optim.SGD(holder.ddp.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        holder.ddp(torch.randn(8, 32)).square().sum().backward()
        opt.step()
    del holder, opt
    BALLAST = [[i] for i in range(BALLAST_ITEMS)]
    dist.all_reduce(torch.ones(1 << 10))
    if mode == "destroy":
        dist.destroy_process_group()
    sys.exit(2)


if __name__ == "__main__":
    main()
