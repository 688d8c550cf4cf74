"""Helpers for the multi-process tests: run a command on 127.0.0.1 with a
timeout and a clean environment, and read the per-rank JSON results."""
import glob
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.dirname(sys.executable)
# launcher / rendezvous variables a developer's shell might carry
_STRIP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
          "SLURM_NTASKS")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in _STRIP and not k.startswith(("CCL_", "FI_", "IPT_RANK"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def need_ccl():
    try:
        import ipex_train.distributed  # noqa: F401
        from ipex_train.distributed._lib import load
        load()
    except ImportError as e:
        pytest.fail(f"ccl backend unavailable: {e}")
    if not os.path.exists(os.path.join(BIN, "mpiexec")):
        pytest.fail("pip mpich's mpiexec missing from the environment (make setup installs it)")


def run(cmd, timeout, **env):
    p = subprocess.run(cmd, cwd=ROOT, env=clean_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    return p


def results(out_dir, world):
    files = sorted(glob.glob(os.path.join(out_dir, "rank*.json")))
    assert len(files) == world, f"expected {world} result files, got {files}"
    return [json.load(open(f)) for f in files]
