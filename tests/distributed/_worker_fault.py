"""One rank dies before a collective; the survivors must raise within the
process group's timeout and then exit (no hang at exit).

Started as plain processes with torchrun-style variables (see test_faults.py).
Usage: python _worker_fault.py MODE TIMEOUT_S OUT_DIR [OP], MODE in {kill, raise},
OP in {all_reduce (default), all_to_all_single}. Rank 1 dies (SIGKILL itself,
or an uncaught exception); rank 0 reports how long its OP took to fail in
OUT_DIR/rank0.json and exits with status 4.
"""
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd

mode, timeout_s, out_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3]
op = sys.argv[4] if len(sys.argv) > 4 else "all_reduce"
ipd.init_from_env(timeout=timeout_s)
rank = dist.get_rank()
t = torch.ones(1024)
dist.all_reduce(t)  # the group works before the fault
assert t[0].item() == dist.get_world_size()
u = torch.empty_like(t)
dist.all_to_all_single(u, t)  # and all-to-all
if rank == 1:
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("rank 1 fails on purpose before the collective")


def collective():
    if op == "all_reduce":
        dist.all_reduce(t)
    else:
        dist.all_to_all_single(u, t)


start = time.monotonic()
result = {"raised": False}
try:
    collective()
except RuntimeError as e:
    result = {"raised": True, "type": type(e).__name__, "message": str(e)[:300]}
result["seconds"] = time.monotonic() - start
# a later call fails fast instead of blocking again
try:
    collective()
    result["second_raised"] = False
except RuntimeError:
    result["second_raised"] = True
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
print("rank0 done", flush=True)
sys.exit(4)  # the script's own status: kept although its group aborted (issue #13 item 5)
