"""Loopback ports for the servers the tests start.

A port asked of the kernel with ``bind(0)`` comes from its ephemeral range, the same range
every outgoing connection draws its local port from: between the draw and the server's own
bind, one of the many connections a running worker opens can take it (a worker's HTTP
listener once failed with "address already in use" that way). So ports are drawn below
that range, where only a process that binds a port by number can take one, and each is
handed out at most once per test session.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Final

LOWEST: Final = 10000  # above the ports well-known services use
BUS_OFFSET: Final = 10000  # a Redis Cluster node's bus listens on its port + 10000

_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _draw(highest: int, *, offsets: tuple[int, ...]) -> int:
    for _ in range(1000):
        port = random.randint(LOWEST, highest)
        wanted = [port + offset for offset in offsets]
        if _handed_out.isdisjoint(wanted) and all(_bindable(p) for p in wanted):
            _handed_out.update(wanted)
            return port
    raise RuntimeError(f"no free loopback port between {LOWEST} and {highest}")


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's ephemeral range."""
    return _draw(_ephemeral_start() - 1, offsets=(0,))


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports, each as :func:`free_port`."""
    return [free_port() for _ in range(count)]


def free_port_pair() -> int:
    """A port P such that P and P + 10000 (a Cluster node's bus port) are both free."""
    return _draw(_ephemeral_start() - 1 - BUS_OFFSET, offsets=(0, BUS_OFFSET))
