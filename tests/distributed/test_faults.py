"""A rank that dies before a collective makes the survivor raise within the
process group's timeout, fail fast afterwards, and exit instead of hanging.
Ranks are plain processes with torchrun-style variables (env:// init)."""
import json
import os
import subprocess
import sys
import time

import pytest

from _launch import HERE, ROOT, clean_env, cma_between_siblings, need_ccl
from ipex_train.launch._ports import free_port

TIMEOUT_S = 8


@pytest.mark.parametrize("mode,op", [("kill", "all_reduce"), ("raise", "all_reduce"),
                                     ("kill", "all_to_all_single"), ("raise", "all_to_all_single")])
def test_peer_death_raises_within_timeout(tmp_path, mode, op):
    """all_reduce (oneCCL) fails at the timeout; all_to_all_single (direct
    reads between the ranks) sees the peer gone and fails sooner."""
    need_ccl()
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = clean_env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_worker_fault.py"), mode, str(TIMEOUT_S),
             str(tmp_path), op], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    start = time.monotonic()
    try:
        out0, _ = procs[0].communicate(timeout=90)
        procs[1].communicate(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = time.monotonic() - start
    assert procs[1].returncode != 0  # it died
    res = json.load(open(tmp_path / "rank0.json"))
    assert res["raised"], out0[-2000:]
    assert res["type"] == "DistBackendError" and op in res["message"], res
    if op == "all_to_all_single" and cma_between_siblings():
        assert "exited" in res["message"] and res["seconds"] < TIMEOUT_S - 1, res
    else:  # through oneCCL: the watchdog's timeout
        assert TIMEOUT_S - 1 <= res["seconds"] <= TIMEOUT_S + 5, res
    assert res["second_raised"], res
    # the survivor exits (status 1: its group aborted) rather than hanging
    assert procs[0].returncode == 1, out0[-2000:]
    assert elapsed < 60
