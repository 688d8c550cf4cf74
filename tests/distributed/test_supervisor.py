"""ipex-train-run's supervision protocol, each side against a real peer over
127.0.0.1: the launcher's Supervisor fed by scripted wrappers, and the rank
wrapper (_rank.py) reporting to a scripted launcher."""
import os
import socket
import subprocess
import sys
import threading
import time

from ipex_train.launch._supervise import Supervisor
from tests._procs import ROOT, clean_env


def _fake_wrappers(sup, reports, log):
    """One connection per (rank, host, code, ended, delay_s): says hello, then
    its exit line after delay_s, then waits for the launcher's "term"."""
    conns = []
    for rank, host, *_ in reports:
        c = socket.create_connection(sup.addr.rsplit(":", 1), timeout=30)
        c.sendall(f"hello {sup.token} {rank} {host} {os.getpid()}\n".encode())
        conns.append(c)
    for c, (rank, host, code, ended, delay_s) in zip(conns, reports):
        time.sleep(delay_s)
        c.sendall(f"exit {rank} {code} {ended:.6f}\n".encode())
    for c in conns:
        buf = b""
        while b"term" not in buf:
            data = c.recv(4096)
            if not data:
                break
            buf += data
        log.append(buf)
        c.close()


def test_names_the_rank_that_failed_first_not_the_one_heard_first(capfd):
    """The CI failure of 2026-12-01: rank 3 was SIGKILLed, a survivor's
    transport crashed with SIGSEGV a moment later, and its wrapper was heard
    first; the launcher returned 139 and blamed the survivor. It must name
    the rank whose script ended first by the wrappers' clocks (here heard
    0.2 s after the other), return its status, and list the other after it."""
    sup = Supervisor("127.0.0.1", "127.0.0.1", 2, 30.0)
    t0 = time.time()
    reports = [(1, "node0", -11, t0 + 0.004, 0.3),   # the casualty, heard first
               (3, "node1", -9, t0, 0.2)]            # the cause, heard 0.2 s later
    log = []
    th = threading.Thread(target=_fake_wrappers, args=(sup, reports, log), daemon=True)
    th.start()
    started = time.monotonic()
    code = sup.run(["sleep", "60"], clean_env())   # stands in for the MPI launcher
    took = time.monotonic() - started
    th.join(30)
    err = capfd.readouterr().err
    assert code == 128 + 9, err
    assert ("rank 3 on host node1 exited with signal 9 (SIGKILL) (then rank 1 on host node0 "
            "with signal 11 (SIGSEGV) 0.004 s later); ending the job") in err, err
    assert len(log) == 2 and all(b"term" in b for b in log), log  # every wrapper told to end
    assert took < 10, took


def test_a_lone_failure_is_named_and_ends_the_job_at_once(capfd):
    sup = Supervisor("127.0.0.1", "127.0.0.1", 2, 30.0)
    log = []
    th = threading.Thread(target=_fake_wrappers, daemon=True,
                          args=(sup, [(0, "a", 0, time.time(), 0.1),
                                      (1, "b", 3, time.time(), 0.1)], log))
    th.start()
    started = time.monotonic()
    code = sup.run(["sleep", "60"], clean_env())
    th.join(30)
    assert code == 3
    assert time.monotonic() - started < 10
    assert "rank 1 on host b exited with status 3; ending the job" in capfd.readouterr().err


def test_wrapper_reports_a_sigkill_with_its_time_and_dies_the_same_way(tmp_path):
    """The wrapper of a SIGKILLed script sends "exit RANK -9 TIME" (TIME when
    the script ended) and itself ends by SIGKILL, which MPI launchers report
    as such: it used to die of an OSError (SIGKILL's handler cannot be
    reset) with status 1 and a traceback."""
    script = tmp_path / "die.py"
    script.write_text("import os, signal, time\ntime.sleep(0.3)\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(60)
    env = clean_env()
    env.update(IPT_LAUNCHER=f"127.0.0.1:{listener.getsockname()[1]}", IPT_LAUNCHER_TOKEN="t0k",
               PMI_RANK="5", PYTHONPATH=ROOT)
    before = time.time()
    p = subprocess.Popen([sys.executable, "-m", "ipex_train.launch._rank", str(script)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        conn.settimeout(60)
        buf = b""
        while b"exit" not in buf or not buf.endswith(b"\n"):
            data = conn.recv(4096)
            assert data, buf
            buf += data
        heard = time.time()
        conn.close()
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        listener.close()
    lines = buf.decode().splitlines()
    hello = lines[0].split()
    assert hello[:3] == ["hello", "t0k", "5"], lines
    exit_line = [ln for ln in lines if ln.startswith("exit")][0].split()
    assert exit_line[:3] == ["exit", "5", "-9"], lines
    assert before + 0.3 <= float(exit_line[3]) <= heard, (before, exit_line, heard)
    assert p.returncode == -9, err
    assert "Traceback" not in err, err
