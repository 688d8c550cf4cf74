"""Free TCP ports for a rendezvous that another process binds later.

The kernel's bind-to-0 picks from the ephemeral range, the same range every
outgoing connection (oneCCL's OFI/tcp endpoints, other jobs' TCPStore clients)
draws from, so a port found free there can be taken before the rank that needs
it binds (CI lost a test to exactly that). These come from below that range and are all held open
together while chosen, so the n ports are distinct and only another listener
could race us for them.
"""
import random
import socket


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n=1, host="127.0.0.1"):
    """n distinct ports that were bindable on `host` a moment ago."""
    low = min(_ephemeral_low(), 32768)
    below = range(max(1024, low - 12000), low)
    # where the ephemeral range starts low, little is below it: the kernel's
    # own choice (port 0) fills in, still held together so the n are distinct
    tries = random.Random().sample(below, min(400, len(below))) + [0] * n
    held = []
    try:
        for port in tries:
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [h.getsockname()[1] for h in held]
    finally:
        for s in held:
            s.close()
    raise RuntimeError(f"no {n} free TCP ports found on {host}")


def free_port(host="127.0.0.1"):
    return free_ports(1, host)[0]
