"""tests._procs: outputs come back, and at a timeout nothing a test started survives."""
import os
import sys
import time

import pytest

from tests._procs import Procs, ProcessTimeout, run, run_all, run_ranks

# a child in its own process group and one that outlives its parent
TREE = """
import os, subprocess, sys, time
kids = [subprocess.Popen(["sleep", "300"], start_new_session=True),
        subprocess.Popen(["sh", "-c", "sleep 301 & echo $!"], stdout=subprocess.PIPE, text=True)]
orphan = kids[1].stdout.readline().strip()
kids[1].wait()
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {kids[0].pid} {orphan}")
print("tree up", flush=True)
time.sleep(300)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_outputs_and_exit_codes():
    a, b = run_all([[sys.executable, "-c", "print('out'); import sys; sys.exit(3)"],
                    [sys.executable, "-c", "import sys; print('err', file=sys.stderr)"]], 60)
    assert (a.returncode, a.stdout) == (3, "out\n") and (b.returncode, b.stdout) == (0, "err\n")
    c = run([sys.executable, "-c", "import sys; print(1); print(2, file=sys.stderr)"], 60)
    assert (c.stdout, c.stderr) == ("1\n", "2\n")


def test_ranks_get_torchrun_variables():
    (r0, r1) = run_ranks([sys.executable, "-c", "import os; print(os.environ['RANK'], "
                          "os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'])"], 2, 60)
    assert (r0.stdout, r1.stdout) == ("0 2 127.0.0.1\n", "1 2 127.0.0.1\n")


def test_timeout_kills_the_whole_tree(tmp_path):
    pids = tmp_path / "pids"
    start = time.monotonic()
    with pytest.raises(ProcessTimeout, match=r"process\(es\) \[1\] of 2 still running") as e:
        run_all([[sys.executable, "-c", "pass"], [sys.executable, "-c", TREE, pids]], 10)
    assert time.monotonic() - start < 30
    assert "tree up" in str(e.value)
    got = [int(p) for p in pids.read_text().split()]
    assert len(got) == 3
    deadline = time.monotonic() + 10
    while any(map(_alive, got)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in got if _alive(p)], got


def test_output_while_running_and_kill_one():
    code = "import time; print('up', flush=True); time.sleep(300)"
    with Procs([[sys.executable, "-c", code], [sys.executable, "-c", "print('done')"]]) as ps:
        deadline = time.monotonic() + 60
        while "up" not in ps.output(0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ps.output(0) == "up\n"
        ps.kill(0)
        a, b = ps.wait(60)
    assert a.returncode == -9 and a.stdout == "up\n" and (b.returncode, b.stdout) == (0, "done\n")
