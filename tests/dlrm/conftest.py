"""Helpers for the DLRM example's tests: import path, tiny configs, launching ranks."""
import json
import os
import subprocess
import sys

import pytest
import torch
from ipex_train.launch._ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
TRAIN = os.path.join(EXAMPLES, "dlrm", "train.py")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

# Small enough for seconds per run on 2 shared cores, big enough to learn.
TINY = dict(batch_size=256, max_rows=2000, embedding_dim=8, bottom_mlp="32-8",
            top_mlp="32-1", eval_batches=4, log_every=1, progress=False, threads=1,
            backend="gloo")


def tiny_args(**overrides):
    """Command-line flags for TINY updated by `overrides`."""
    kw = dict(TINY, **overrides)
    args = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            args += [flag, str(v)]
    return args


def run_inprocess(**overrides):
    """Trains in this process (world size 1); returns the metrics dict."""
    from dlrm.config import parse_args
    from dlrm.train import run

    before = torch.get_num_threads()
    try:
        return run(parse_args(tiny_args(**overrides)).check())
    finally:  # run() sets both process-wide; leave other tests as they were
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)


def run_ranks(world_size, tmp_path, timeout=240, **overrides):
    """Starts `world_size` real processes of train.py on 127.0.0.1 (torchrun's
    variables), waits with a timeout, returns rank 0's metrics."""
    out = tmp_path / f"metrics_w{world_size}.json"
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   CCL_ATL_TRANSPORT="ofi", FI_PROVIDER="tcp", FI_TCP_IFACE="lo",
                   CCL_KVS_IFACE="lo", CCL_PROCESS_LAUNCHER="none", CCL_WORKER_OFFLOAD="0")
        args = [sys.executable, TRAIN] + tiny_args(metrics_out=str(out), **overrides)
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log}"
    with open(out) as f:
        return json.load(f)


@pytest.fixture
def tiny():
    return dict(TINY)
