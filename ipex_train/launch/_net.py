"""This host's IPv4 interfaces, and which one reaches a given address.

Used to pick, for a job that spans hosts, the address rank 0 publishes (never
a loopback one) and the interface oneCCL (FI_TCP_IFACE, CCL_KVS_IFACE) and
UCX (UCX_NET_DEVICES) use: the one the kernel routes the master address
through. Linux ioctls only; no dependency on iproute2.
"""
import dataclasses
import fcntl
import ipaddress
import socket
import struct

_SIOCGIFFLAGS, _SIOCGIFADDR, _SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B
_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8


@dataclasses.dataclass(frozen=True)
class Iface:
    name: str
    addr: str
    prefix: int
    up: bool
    loopback: bool

    @property
    def network(self):
        return ipaddress.IPv4Interface(f"{self.addr}/{self.prefix}").network


def _ioctl(sock, req, name):
    return fcntl.ioctl(sock.fileno(), req, struct.pack("256s", name.encode()[:15]))


def interfaces():
    """Every interface with an IPv4 address, in the kernel's index order."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                addr = socket.inet_ntoa(_ioctl(s, _SIOCGIFADDR, name)[20:24])
                mask = socket.inet_ntoa(_ioctl(s, _SIOCGIFNETMASK, name)[20:24])
                flags = struct.unpack("H", _ioctl(s, _SIOCGIFFLAGS, name)[16:18])[0]
            except OSError:
                continue  # no IPv4 address
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            out.append(Iface(name, addr, prefix, bool(flags & _IFF_UP), bool(flags & _IFF_LOOPBACK)))
    return out


def resolve(name):
    """Every IPv4 address `name` resolves to here, in the resolver's order
    ([] when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return []
    out = []
    for *_, sa in infos:
        if sa[0] not in out:
            out.append(sa[0])
    return out


def is_loopback(addr):
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def source_addr(dest):
    """The local address the kernel would send from to reach `dest` (a name
    or an address), or None when there is no route."""
    try:
        ip = socket.gethostbyname(dest)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))  # UDP connect: a route lookup, nothing is sent
            return s.getsockname()[0]
    except OSError:
        return None


def iface_for(dest):
    """Name of the interface the kernel routes `dest` through, or None."""
    src = source_addr(dest)
    if src is None:
        return None
    for i in interfaces():
        if i.addr == src:
            return i.name
    return None


def own_addresses():
    """(addr, prefix) of this host's interfaces that are up and not loopback."""
    return [(i.addr, i.prefix) for i in interfaces() if i.up and not i.loopback]


def pick_master_addr(mine, others, hostname_addr=None):
    """The address of this host (rank 0's) that the other hosts can reach.

    mine: this host's (addr, prefix) list (own_addresses()); others: one
    such list per other host. Prefers an address on a network that every
    other host has an address on (then the most hosts), then the one the
    hostname resolves to, then the first. None when this host has no
    non-loopback address.
    """
    if not mine:
        return None
    def score(item):
        net = ipaddress.IPv4Interface(f"{item[0]}/{item[1]}").network
        shared = sum(any(ipaddress.IPv4Address(a) in net for a, _ in theirs) for theirs in others)
        return (shared, item[0] == hostname_addr)
    return max(mine, key=score)[0]
