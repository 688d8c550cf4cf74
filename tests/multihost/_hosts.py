"""Simulated hosts for multi-host tests: network namespaces joined by veth
links, each with its own hostname and /etc/hosts, and an `ssh` stand-in
(ssh_standin.py) that runs a command on one of them. The hosts share this
kernel's PID namespace (so oneCCL's per-host bookkeeping by hostname and pid
sees unique pids, as on separate machines); `pid_ns_per_session=True` gives
every ssh session a PID namespace of its own instead (containers that share
a hostname).

    with Cluster(2, tmp_path) as c:            # hosts "node0", "node1"
        c.run("node0", ["ipex-train-run", "--nnodes", "2", "--hostfile", c.hostfile(), ...])
        c.counters("node1")                    # bytes through node1's link

Topology: two hosts share one veth pair; three or more hang off a bridge in a
namespace of its own. Every host's link is called `mh0` (as machines all have
an `eth0`) and carries an address of a private /24 drawn at random, so
clusters of parallel test runs do not meet; nothing is configured outside
the namespaces created here, and `close()` removes them all (processes still
inside are killed first), also when the test failed.

Each host's /etc/hosts is Debian-style: its own name maps to 127.0.1.1
first, the cluster's names to their link addresses after, so a process that
resolves its own hostname gets a loopback address, as on real machines.

Needs root and iproute2 (`ip netns`); `unavailable()` says why not.
"""
import functools
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

from tests._procs import BIN, ROOT, clean_env, run_all

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "ssh_standin.py")
IFACE = "mh0"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _ip(*args, check=True):
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p


@functools.lru_cache(maxsize=None)
def unavailable():
    """None when namespaces and veth links can be made here, else the reason."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install -y iproute2)"
    if shutil.which("unshare") is None:
        return "needs util-linux's `unshare`"
    try:
        with Cluster(2, f"/tmp/ipt_mh_probe_{os.getpid()}") as c:
            p = c.run("node1", ["cat", f"/sys/class/net/{IFACE}/operstate"], timeout=30)
            if p.returncode != 0 or p.stdout.strip() not in ("up", "unknown"):
                return f"a command in a namespace failed: {p.stderr.strip()[-300:]}"
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return f"network namespaces / veth links cannot be made here: {e}"
    return None


def require():
    """Fails the test in CI (CI=1, set by .ci/run) and skips it elsewhere,
    with the reason, when simulated hosts cannot be made here."""
    import pytest
    why = unavailable()
    if why:
        msg = f"simulated hosts unavailable: {why}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(msg + " (CI needs them: run as root with iproute2 installed)")
        pytest.skip(msg)


def _ns_pids(netns):
    p = _ip("netns", "pids", netns, check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


class Cluster:
    def __init__(self, n, workdir, names=None, pid_ns_per_session=False, cpus=None):
        if n < 2:
            raise ValueError("a cluster has at least 2 hosts")
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.prefix = f"ipt{tag}"
        self.names = list(names or [f"node{i}" for i in range(n)])
        self.netns = [f"{self.prefix}h{i}" for i in range(n)]
        net = [10, random.randrange(64, 250), random.randrange(1, 250)]
        self.addrs = [".".join(map(str, net + [i + 1])) for i in range(n)]
        self.switch = None
        self.pid_ns_per_session = pid_ns_per_session
        self.cpus = dict(cpus or {})  # host -> taskset list: that host's cores
        self._made = []
        self.bin = os.path.join(self.workdir, "bin")
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- set-up
    def _create(self):
        for ns in self.netns:
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        n = len(self.netns)
        if n == 2:
            a, b = f"{self.prefix}a", f"{self.prefix}b"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            for end, ns in ((a, self.netns[0]), (b, self.netns[1])):
                _ip("link", "set", end, "netns", ns)
                _ip("-n", ns, "link", "set", end, "name", IFACE)
        else:
            self.switch = f"{self.prefix}sw"
            _ip("netns", "add", self.switch)
            self._made.append(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, ns in enumerate(self.netns):
                end, port = f"{self.prefix}x{i}", f"{self.prefix}p{i}"
                _ip("link", "add", end, "type", "veth", "peer", "name", port)
                _ip("link", "set", end, "netns", ns)
                _ip("-n", ns, "link", "set", end, "name", IFACE)
                _ip("link", "set", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
        for ns, addr in zip(self.netns, self.addrs):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
        spec = {"path": f"{self.bin}:{SYSTEM_PATH}", "hosts": {},
                "pid_ns_per_session": self.pid_ns_per_session}
        for name, ns in zip(self.names, self.netns):
            hosts = os.path.join(self.workdir, f"hosts.{name}")
            lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{name}"]
            lines += [f"{a}\t{h}" for a, h in zip(self.addrs, self.names)]
            with open(hosts, "w") as f:
                f.write("\n".join(lines) + "\n")
            spec["hosts"][name] = {"netns": ns, "hosts_file": hosts, "cpus": self.cpus.get(name)}
        self.spec_file = os.path.join(self.workdir, "cluster.json")
        with open(self.spec_file, "w") as f:
            json.dump(spec, f, indent=1)
        os.makedirs(self.bin, exist_ok=True)
        ssh = os.path.join(self.bin, "ssh")
        with open(ssh, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(STANDIN)} "
                    f"{shlex.quote(self.spec_file)} \"$@\"\n")
        os.chmod(ssh, 0o755)

    def close(self):
        """Kills what still runs in the namespaces, then deletes them (and so
        their links). Safe to call twice."""
        for ns in self._made:
            for pid in _ns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while any(_ns_pids(ns) for ns in self._made) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ use
    def addr(self, host):
        return self.addrs[self.names.index(host)]

    def hostfile(self, slots=None, hosts=None, name="hostfile"):
        """An MPI hostfile naming `hosts` (default all), `host:slots` if given."""
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            for h in hosts or self.names:
                f.write(f"{h}:{slots}\n" if slots else f"{h}\n")
        return path

    def command(self, host, argv, env=None, cwd=ROOT):
        """argv list that runs `argv` on `host` through the ssh stand-in, in
        `cwd`, with exactly `env` (plus PATH) as a login shell there would."""
        full = {"PATH": f"{BIN}:{self.bin}:{SYSTEM_PATH}", "HOME": os.environ.get("HOME", "/root")}
        full.update(env or {})
        words = ["cd", shlex.quote(cwd), "&&", "exec", "env", "-i"]
        words += [shlex.quote(f"{k}={v}") for k, v in full.items()]
        words += [shlex.quote(a) for a in argv]
        return [os.path.join(self.bin, "ssh"), host, " ".join(words)]

    def popen(self, host, argv, env=None, **kw):
        """Starts `argv` on `host` in a session of its own (tests._procs.kill_tree ends it)."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        return subprocess.Popen(self.command(host, argv, env), cwd=ROOT, env=clean_env(),
                                start_new_session=True, **kw)

    def run_all(self, jobs, timeout):
        """[(host, argv, env)...] started at once under tests._procs.run_all's
        deadline (everything killed at the end); output merged per job."""
        return run_all([self.command(h, a, e) for h, a, e in jobs], timeout,
                       [clean_env()] * len(jobs))

    def run(self, host, argv, env=None, timeout=60):
        """One command on `host` (a launcher, say); stdout and stderr apart."""
        return run_all([self.command(host, argv, env)], timeout, [clean_env()], merge=False)[0]

    def counters(self, host):
        """(rx_bytes, tx_bytes) of `host`'s link, read from the host's side."""
        ns = self.netns[self.names.index(host)]
        vals = []
        for what in ("rx_bytes", "tx_bytes"):
            p = subprocess.run(["ip", "netns", "exec", ns, "cat",
                                f"/sys/class/net/{IFACE}/statistics/{what}"],
                               capture_output=True, text=True, timeout=30)
            vals.append(int(p.stdout))
        return tuple(vals)

    def set_link(self, host, up):
        ns = self.netns[self.names.index(host)]
        _ip("-n", ns, "link", "set", IFACE, "up" if up else "down")

    def pids(self, host):
        """PIDs (as seen from here) of the processes running on `host`."""
        return _ns_pids(self.netns[self.names.index(host)])
