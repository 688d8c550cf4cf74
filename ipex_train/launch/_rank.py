"""Per-rank start-up used by ipex-train-run: pin this rank to its cores, then
run the user's script.

    python .../ipex_train/launch/_rank.py script.py args...

Run by path (then ``_cores`` is imported from this directory, sys.path[0])
or as ``python -m ipex_train.launch._rank``. The cores are planned here, on
the rank's own host, from IPT_CORE_PLAN ("ranks per node,ccl workers,
oversubscribe") and this host's cores, so hosts with different core counts
each get their own plan; the rank is found by its local rank
(MPI_LOCALRANKID for MPICH / Intel MPI, OMPI_COMM_WORLD_LOCAL_RANK for Open
MPI). (IPT_RANK_CORES, a ready plan, is still honoured.)

Under ipex-train-run (IPT_LAUNCHER=host:port set) this process stays as the
script's parent and keeps a connection to the launcher: it reports the
script's exit status the moment it ends, with the time it ended (so the
launcher can name the rank that failed first, not one that fell with it),
ends the script when the launcher says so (a failed rank elsewhere, a
signal to the launcher), and when the launcher cannot be reached for
IPT_CONTACT_TIMEOUT seconds. Otherwise it execs the script in this same
process.
"""
import os
import select
import signal
import socket
import subprocess
import sys
import time

if __package__:
    from ._cores import UsageError, decode, plan_cores
else:
    from _cores import UsageError, decode, plan_cores

PING_S = 2.0   # heartbeat period, both directions
GRACE_S = 5.0  # SIGTERM -> SIGKILL


def local_rank(env):
    for k in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(k, "") != "":
            return int(env[k])
    return 0


def global_rank(env):
    for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "RANK", "SLURM_PROCID"):
        if env.get(k, "") != "":
            return int(env[k])
    return 0


def pin(env):
    """Pins this process per IPT_CORE_PLAN / IPT_RANK_CORES; sets the rank's
    OpenMP and oneCCL worker variables. Raises UsageError with the reason."""
    me = local_rank(env)
    if env.get("IPT_CORE_PLAN"):
        nproc, workers, over = (int(x) for x in env["IPT_CORE_PLAN"].split(","))
        if me >= nproc:
            raise UsageError(f"local rank {me} on host {socket.gethostname()}, but "
                             f"--nproc-per-node is {nproc}: the MPI placed more ranks on this "
                             "host than asked (check the hostfile's slots)")
        plan = plan_cores(sorted(os.sched_getaffinity(0)), nproc, workers, bool(over))
        omp, ccl = plan.compute[me], plan.workers[me]
        env["OMP_NUM_THREADS"] = str(len(omp))
        if workers:
            env["CCL_WORKER_AFFINITY"] = ",".join(map(str, plan.worker_cores_all()))
    elif env.get("IPT_RANK_CORES"):
        try:
            omp, ccl = decode(env["IPT_RANK_CORES"], me)
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        return
    os.sched_setaffinity(0, set(omp) | set(ccl))
    procs = ",".join(map(str, omp))
    env.setdefault("GOMP_CPU_AFFINITY", procs.replace(",", " "))
    env.setdefault("KMP_AFFINITY", f"granularity=fine,explicit,proclist=[{procs}]")


def _die_with_parent():
    """In the child: SIGKILL when this wrapper dies (so no rank outlives it)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_either(child, pidfd, sock, timeout):
    """Returns once the child ended, the launcher sent something, or timeout."""
    if pidfd is None:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        select.select([pidfd] + ([sock] if sock is not None else []), [], [], timeout)
    except InterruptedError:
        pass


def supervise(argv, env):
    """Runs argv as a child under the launcher's eye; returns when it ended."""
    host, _, port = env["IPT_LAUNCHER"].rpartition(":")
    token = env.get("IPT_LAUNCHER_TOKEN", "")
    contact_s = float(env.get("IPT_CONTACT_TIMEOUT", "60"))
    rank = global_rank(env)
    sock = None
    try:
        sock = socket.create_connection((host, int(port)), timeout=contact_s)
        sock.sendall(f"hello {token} {rank} {socket.gethostname()} {os.getpid()}\n".encode())
        sock.setblocking(False)
    except OSError as e:
        print(f"ipex-train-run: rank {rank} on {socket.gethostname()}: cannot reach the launcher "
              f"at {host}:{port} ({e}); running unsupervised", file=sys.stderr, flush=True)
        sock = None
    # signals to this wrapper (from the MPI launcher) go on to the script
    child = subprocess.Popen(argv, env=env, close_fds=False, preexec_fn=_die_with_parent)
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # before Linux 5.3: polled every 50 ms instead
        pidfd = None
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, lambda n, f: child.poll() is None and child.send_signal(n))
    heard = sent = time.monotonic()
    ending, buf = None, b""
    while child.poll() is None:
        now = time.monotonic()
        if ending is not None and now - ending > GRACE_S:
            child.kill()
        if sock is not None and ending is None:
            try:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionResetError("the launcher closed the connection")
                heard, buf = now, buf + data
            except BlockingIOError:
                pass
            except OSError as e:
                print(f"ipex-train-run: rank {rank}: lost the launcher ({e}); ending the script",
                      file=sys.stderr, flush=True)
                sock, ending = None, now
                child.terminate()
                continue
            if b"term" in buf.split(b"\n"):
                ending = now
                child.terminate()
            buf = buf.rsplit(b"\n", 1)[-1]
            if now - heard > contact_s:
                print(f"ipex-train-run: rank {rank}: no word from the launcher for {contact_s:.0f} s;"
                      " ending the script", file=sys.stderr, flush=True)
                ending = now
                child.terminate()
            elif now - sent > PING_S:
                try:
                    sock.sendall(b"ping\n")
                except OSError:
                    pass
                sent = now
        _wait_either(child, pidfd, sock if ending is None else None, 0.2)
    ended = time.time()  # wakes on the child's exit (pidfd): its time to a few ms
    if pidfd is not None:
        os.close(pidfd)
    code = child.returncode
    if sock is not None:
        try:
            sock.setblocking(True)
            sock.settimeout(5)
            sock.sendall(f"exit {rank} {code} {ended:.6f}\n".encode())
            # close only once the launcher closed its end: closing with its
            # pings unread would send a reset, and a reset can discard the
            # exit line before the launcher reads it
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass
        sock.close()
    return code


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: python _rank.py script.py [args...]")
    env = dict(os.environ)
    try:
        pin(env)
    except UsageError as e:
        print(f"ipex-train-run: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    argv = [sys.executable, sys.argv[1]] + sys.argv[2:]
    if not env.get("IPT_LAUNCHER"):
        os.execve(sys.executable, argv, env)
    code = supervise(argv, env)
    if code < 0:  # killed by a signal: end the same way, so the MPI launcher sees it
        if -code != signal.SIGKILL:  # SIGKILL has no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
        sys.exit(128 - code)
    sys.exit(code)


if __name__ == "__main__":
    main()
