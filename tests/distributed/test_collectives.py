"""Every collective x dtype x op on "ccl" equals gloo (and a plain-PyTorch
reference) at world sizes 2 (plain mpiexec: oneCCL's MPI transport) and 3
(ipex-train-run, oversubscribed, OFI/tcp transport), for empty, odd-sized, 2-D
and 64 MiB tensors; DDP on ccl ends where DDP on gloo does. All ranks on
127.0.0.1, under timeouts."""
import os
import sys

import pytest

from _launch import BIN, HERE, need_ccl, results, run

WORKER = os.path.join(HERE, "_worker_collectives.py")


def _check(p, out_dir, world):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    for r in results(out_dir, world):
        assert r["world"] == world
        assert r["checks"] > 1000, r["checks"]
        assert not r["failures"], "\n".join(r["failures"][:20])


def test_collectives_plain_mpiexec_2_ranks(tmp_path):
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable, WORKER, str(tmp_path),
             "--large"], timeout=400)
    _check(p, tmp_path, 2)


def test_collectives_ipex_train_run_3_ranks(tmp_path):
    need_ccl()
    p = run([os.path.join(BIN, "ipex-train-run"), "--nproc-per-node", "3", "--oversubscribe",
             "--transport", "ofi", WORKER, str(tmp_path), "--large"], timeout=500)
    _check(p, tmp_path, 3)


def test_ddp_matches_gloo(tmp_path):
    need_ccl()
    p = run([os.path.join(BIN, "mpiexec"), "-n", "2", sys.executable,
             os.path.join(HERE, "_worker_ddp.py"), str(tmp_path)], timeout=300)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    for r in results(tmp_path, 2):
        for name, v in r.items():
            assert v["moved"] > 1e-2, f"{name}: training did not change the weights"
            assert v["max_diff_across_ranks"] == 0.0, (name, v)
            tol = 2e-2 if "bf16" in name or "fp16" in name else 1e-5
            assert v["max_diff_vs_gloo"] <= tol * max(1.0, v["max_abs"]), (name, v)
