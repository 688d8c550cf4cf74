"""The launcher's side of a job: start the MPI launcher, hear from every
rank's wrapper (_rank.py) over TCP, and end the whole job when it must.

Each wrapper connects at start ("hello TOKEN RANK HOST PID"), sends "ping"
every 2 s and "exit RANK STATUS TIME" when its script ends (TIME: when it
ended, seconds since the epoch); the launcher pings back and can send "term". The job is ended (wrappers told to end their
scripts, the MPI launcher sent SIGTERM, and its local process tree killed
GRACE_S later) when:

- a rank exits with a non-zero status or is killed: the launcher returns
  that status (128 + N for signal N), within seconds, whatever the others do.
  Ranks often fall together (a peer killed mid-collective can take a
  survivor's transport down with it), and whichever wrapper is heard first
  is a race: the launcher waits SETTLE_S after the first failure it hears,
  then names the one that ended earliest by its wrapper's clock (and the
  others after it), and returns its status;
- a wrapper is not heard from for the contact timeout (its host or the link
  to it is gone); one whose connection ends without an exit status is left
  to the MPI launcher, which sees how its process ended;
- the launcher gets SIGTERM, SIGHUP or SIGINT: returns 128 + the signal,
  once the MPI launcher is gone;
- every rank has exited 0 but the MPI launcher lingers past GRACE_S.
"""
import math
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time

GRACE_S = 10.0
PING_S = 2.0
SETTLE_S = 0.5  # first failure heard -> job ended (see above)


def _say(msg):
    print(f"ipex-train-run: {msg}", file=sys.stderr, flush=True)


def process_tree(pid):
    """pid's descendants and the members of the session it leads (from /proc;
    pid itself too when it leads a session). Also tests/_procs.py's cleanup."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                table[int(d)] = (int(fields[1]), int(fields[3]))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, (pp, _) in table.items() if pp == parent and c not in out]
        out.update(kids)
        todo += kids
    out.update(p for p, (_, sid) in table.items() if sid == pid)
    out.discard(os.getpid())
    return out


def _describe(code):
    return f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"status {code}"


def _as_exit(code):
    return 128 - code if code < 0 else code


class _Rank:
    def __init__(self, conn):
        self.conn, self.buf = conn, b""
        self.rank = self.host = None
        self.code = None
        self.ended = None  # when the script ended (wrapper's clock), if said
        self.gone = False  # connection closed
        self.heard = time.monotonic()


class Supervisor:
    """Listens before the job starts (env() gives the ranks' variables)."""

    def __init__(self, bind, advertise, world, contact_s):
        self.world, self.contact_s = world, contact_s
        self.token = secrets.token_hex(8)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((bind, 0))
        self.listener.listen(max(world, 16))
        self.listener.setblocking(False)
        self.addr = f"{advertise}:{self.listener.getsockname()[1]}"
        self.ranks = []
        self.code = None        # the job's status once decided
        self.ending = None      # monotonic time the job was told to end
        self.signalled = None
        self.failed = []        # ranks that exited non-zero, in the order heard
        self.failed_at = None   # monotonic time the first of them was heard

    def env(self):
        return {"IPT_LAUNCHER": self.addr, "IPT_LAUNCHER_TOKEN": self.token,
                "IPT_CONTACT_TIMEOUT": str(self.contact_s)}

    def _end(self, reason, code, sig=signal.SIGTERM):
        if self.ending is not None:
            return
        _say(f"{reason}; ending the job")
        self.code, self.ending = code, time.monotonic()
        for r in self.ranks:
            try:
                r.conn.sendall(b"term\n")
            except OSError:
                pass
        if self.proc.poll() is None:  # (not a reaped PID that may be reused)
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _on_line(self, r, line):
        words = line.split()
        if not words:
            return
        if words[0] == "hello" and len(words) >= 5:
            if words[1] != self.token:
                raise ConnectionError("wrong token")
            r.rank, r.host = int(words[2]), words[3]
            if self.ending is not None:
                r.conn.sendall(b"term\n")
        elif words[0] == "exit" and len(words) >= 3:
            r.code = int(words[2])
            try:
                r.ended = float(words[3])
            except (IndexError, ValueError):
                r.ended = None
            if r.code != 0 and self.ending is None:
                self.failed.append(r)
                self.failed_at = self.failed_at or time.monotonic()

    def _end_for_failure(self):
        """Ends the job naming the rank that failed first (see the module's doc)."""
        order = sorted(self.failed, key=lambda r: math.inf if r.ended is None else r.ended)
        first = order[0]
        why = f"rank {first.rank} on host {first.host} exited with {_describe(first.code)}"
        later = [f"rank {r.rank} on host {r.host} with {_describe(r.code)}"
                 + (f" {r.ended - first.ended:.3f} s later"
                    if r.ended is not None and first.ended is not None else "")
                 for r in order[1:]]
        if later:
            why += " (then " + ", ".join(later) + ")"
        self._end(why, _as_exit(first.code))

    def _read(self, sel, r):
        try:
            data = r.conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            r.heard = time.monotonic()
            r.buf += data
            *lines, r.buf = r.buf.split(b"\n")
            try:
                for line in lines:
                    self._on_line(r, line.decode(errors="replace"))
            except (ConnectionError, ValueError):
                data = b""
        if not data:
            sel.unregister(r.conn)
            r.conn.close()
            # the connection ended without an exit status (its wrapper was
            # killed): the MPI launcher still reports how that rank's
            # process ended, and a host that went silent hits the contact timeout
            r.gone = True
            if r.rank is None:
                self.ranks.remove(r)

    def run(self, cmd, env):
        def on_signal(n, _):
            self.signalled = n
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sent, all_done, mpi_gone, rc = time.monotonic(), None, None, None
        try:
            while True:
                now = time.monotonic()
                if self.signalled and self.ending is None:
                    sig = signal.Signals(self.signalled)
                    self._end(f"received {sig.name}", 128 + sig, sig)
                if self.failed and self.ending is None and (
                        now - self.failed_at >= SETTLE_S or self.proc.poll() is not None):
                    self._end_for_failure()
                for key, _ in sel.select(timeout=0.2):
                    if key.fileobj is self.listener:
                        try:
                            conn, _ = self.listener.accept()
                        except BlockingIOError:
                            continue
                        conn.setblocking(False)
                        r = _Rank(conn)
                        self.ranks.append(r)
                        sel.register(conn, selectors.EVENT_READ, r)
                    else:
                        self._read(sel, key.data)
                now = time.monotonic()
                if now - sent > PING_S:
                    for r in self.ranks:
                        if r.code is None:
                            try:
                                r.conn.sendall(b"ping\n")
                            except OSError:
                                pass
                    sent = now
                if self.ending is None:
                    for r in self.ranks:
                        if r.code is None and r.rank is not None and now - r.heard > self.contact_s:
                            self._end(f"no word from rank {r.rank} on host {r.host} for "
                                      f"{self.contact_s:.0f} s (host or link down?)", 1)
                            break
                done = [r for r in self.ranks if r.code is not None]
                if len(done) == self.world and all_done is None:
                    all_done = now
                rc = self.proc.poll()
                if rc is not None:
                    # the MPI launcher is gone: give the wrappers' last words a moment
                    mpi_gone = mpi_gone or now
                    waiting = any(r.code is None and not r.gone for r in self.ranks)
                    if not waiting or self.ending is not None or now - mpi_gone > 5:
                        if self.failed and self.ending is None:
                            self._end_for_failure()
                        break
                    continue
                late = (self.ending is not None and now - self.ending > GRACE_S) or (
                    all_done is not None and now - all_done > GRACE_S)
                if late:
                    if all_done is not None and self.ending is None:
                        _say(f"every rank exited but {os.path.basename(cmd[0])} did not within "
                             f"{GRACE_S:.0f} s; ending it")
                    for pid in [self.proc.pid] + sorted(process_tree(self.proc.pid)):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    self.proc.wait()
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for pid in sorted(process_tree(self.proc.pid)):  # nothing of the job stays behind here
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sel.close()
            self.listener.close()
            for r in self.ranks:
                try:
                    r.conn.close()
                except OSError:
                    pass
        if self.code is not None:
            return self.code
        codes = [r.code for r in self.ranks if r.code]
        if codes:
            return _as_exit(codes[0])
        return rc if rc is not None else 0

