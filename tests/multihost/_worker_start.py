"""The start the multi-host workers share (_worker_hier.py, _worker_xhost.py):
their command line `OUT_DIR [--timeout S] [flags]` and joining the job.

Workers run as scripts, so they import this as `_worker_start` (their own
directory is first on sys.path)."""
import sys
import warnings

import torch
import torch.distributed as dist

import ipex_train.distributed as ipd


def start(argv=None):
    """Joins the job's ccl group (init_from_env; every collective waits at most
    --timeout S, default 60). Returns (OUT_DIR, rank, world size, the world
    group's ccl backend)."""
    argv = sys.argv if argv is None else argv
    warnings.filterwarnings("ignore", category=FutureWarning)
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 60
    ipd.init_from_env(timeout=timeout)
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))
    return argv[1], dist.get_rank(), dist.get_world_size(), backend
