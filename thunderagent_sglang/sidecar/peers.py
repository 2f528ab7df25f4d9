"""Who is connecting: connections from sandboxes to the sidecar's API are refused.

A sandbox with the network allowed shares the host's network namespace, so it could reach the
API on loopback. The kernel's socket table (``/proc/net/tcp``, ``tcp6``) names the owner uid and
inode of the connecting socket when it lives on this host: a socket of the sandbox uid is a
sandbox's; a root-owned one is a sandbox's when a process in another pid namespace (every
sandbox has its own) holds it, which is looked up only while some environment runs as root with
the network. A loopback peer whose socket is not found at all is refused too (safe side).
"""

from __future__ import annotations

import ipaddress
import os
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def encode(host: str, port: int) -> set[str]:
    """The ``ADDR:PORT`` spellings of an endpoint in the kernel's tables (v4 and v4-mapped)."""
    addr = ipaddress.ip_address(host.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    spellings = set()
    if isinstance(addr, ipaddress.IPv4Address):
        spellings.add("%08X" % struct.unpack("<I", addr.packed)[0])
        addr = ipaddress.IPv6Address(f"::ffff:{addr}")
    raw = addr.packed
    spellings.add("".join("%08X" % struct.unpack("<I", raw[i:i + 4])[0] for i in (0, 4, 8, 12)))
    return {f"{a}:{port:04X}" for a in spellings}


def socket_owner(peer: tuple, local: tuple, tables=TABLES) -> tuple[int, int] | None:
    """(uid, inode) of the socket at ``peer`` connected to ``local``; None if none is here."""
    peers, locals_ = encode(peer[0], peer[1]), encode(local[0], local[1])
    for table in tables:
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if fields[1] in peers and fields[2] in locals_:
                        return int(fields[7]), int(fields[9])
        except FileNotFoundError:
            continue
    return None


def held_in_other_pid_ns(inode: int, proc: str = "/proc") -> bool:
    """Whether a process outside our pid namespace (a sandbox's) holds socket ``inode``."""
    own = os.readlink(f"{proc}/self/ns/pid")
    wanted = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            if os.readlink(f"{proc}/{pid}/ns/pid") == own:
                continue
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                if os.readlink(f"{proc}/{pid}/fd/{fd}") == wanted:
                    return True
        except OSError:
            continue
    return False


def is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def from_sandbox(peer: tuple | None, local: tuple | None, sandbox_uid: int,
                 root_sandboxes: bool) -> bool:
    """Whether a TCP connection from ``peer`` to our ``local`` endpoint comes from a sandbox."""
    if not peer or not local or not isinstance(peer[0], str):
        return False  # not TCP (a Unix socket, a test transport)
    owner = socket_owner(peer, local)
    if owner is None:
        return is_loopback(peer[0])  # gone already, or hidden: refuse on loopback
    uid, inode = owner
    if uid == sandbox_uid:
        return True
    return uid == 0 and root_sandboxes and held_in_other_pid_ns(inode)

