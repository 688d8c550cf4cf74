"""Running the DLRM example in tests: tiny configs, in this process or as ranks."""
import json
import os
import sys

import torch

from tests._procs import LOOPBACK_CCL, ROOT, check_all_ok, run_ranks as _run_ranks

TRAIN = os.path.join(ROOT, "examples", "dlrm", "train.py")

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


def main_inprocess(**overrides):
    """train.py's main() in this process (world size 1); returns its exit status."""
    from dlrm.train import main

    before = torch.get_num_threads()
    try:
        return main(tiny_args(**overrides))
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)


def run_ranks_raw(world_size, timeout=240, **overrides):
    """`world_size` real processes of train.py on 127.0.0.1 (torchrun's
    variables) under a timeout; returns each rank's CompletedProcess."""
    return _run_ranks([sys.executable, TRAIN] + tiny_args(**overrides), world_size, timeout,
                      **LOOPBACK_CCL)


def run_ranks(world_size, tmp_path, timeout=240, **overrides):
    """run_ranks_raw that must succeed; returns rank 0's metrics."""
    out = tmp_path / f"metrics_w{world_size}.json"
    check_all_ok(run_ranks_raw(world_size, timeout, metrics_out=str(out), **overrides))
    with open(out) as f:
        return json.load(f)
