"""A rank of a job that meets a fault (see test_faults_multihost.py).

Usage: python _worker_xfault.py OUT_DIR MODE TIMEOUT_S
After one all_reduce every rank writes OUT_DIR/ready.<rank> ("pid time"),
then by MODE:
  exit3  the last rank exits with status 3 (no destroy_process_group), the
         others sleep (no collective pending)
  loop   all ranks run all_reduce after all_reduce; a rank whose collective
         raises writes OUT_DIR/error.<rank> (JSON: time, message) and exits 4
  sleep  every rank sleeps
Nothing is expected to end normally within 100 s.
"""
import faulthandler
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd

faulthandler.enable()  # a rank that crashes (a peer's death in its transport) says where

out_dir, mode, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
ipd.init_from_env(timeout=timeout_s)
rank, n = dist.get_rank(), dist.get_world_size()
t = torch.ones(1 << 18)
dist.all_reduce(t)
with open(os.path.join(out_dir, f"ready.{rank}"), "w") as f:
    f.write(f"{os.getpid()} {time.time()} {socket.gethostname()}\n")
if mode == "exit3" and rank == n - 1:
    with open(os.path.join(out_dir, f"exit.{rank}"), "w") as f:
        f.write(f"{time.time()}\n")
    sys.exit(3)
if mode == "loop":
    end = time.monotonic() + 100
    try:
        while time.monotonic() < end:
            dist.all_reduce(t)
            time.sleep(0.05)
    except RuntimeError as e:
        with open(os.path.join(out_dir, f"error.{rank}"), "w") as f:
            json.dump({"time": time.time(), "host": socket.gethostname(),
                       "message": str(e)[:300]}, f)
        sys.exit(4)
time.sleep(100)
