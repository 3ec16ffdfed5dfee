"""Which ``Host`` headers the listener answers: its defence against DNS rebinding.

A listener on 127.0.0.1 is still reachable from a web page: the page's own name
(``attacker.example``) is made to resolve to 127.0.0.1, and the browser then sends the
page's requests, with ``Host: attacker.example``, to the listener. So every request, on every
route, must name a host this listener answers for:

- a loopback name: ``localhost``, ``127.x.x.x``, ``::1`` (``[::1]``);
- the configured ``http.host``, unless it is ``0.0.0.0`` or ``::`` (which name no host);
- a name of ``http.allowed_hosts`` (a reverse proxy or tunnel reaching it under another
  name).

A port, a trailing dot and letter case do not matter. A request without a Host header, with
several, or with one that is not a host name or address is refused with 400 (RFC 9112,
section 3.2); a well-formed Host this listener does not answer for with 421 Misdirected
Request (RFC 9110, section 15.5.20: "not able to produce a response for this target").
Refusals are logged at most once a minute per host, so a page retrying in a loop cannot
flood the log.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from typing import Final

import structlog

from alchemy.config import HttpConfig, is_loopback_host

log = structlog.get_logger("alchemy.http")

NO_HOST: Final = frozenset({"0.0.0.0", "::"})  # listen everywhere: not a name to answer for
_NAME: Final = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_PORT: Final = re.compile(r"(?::[0-9]{1,5})?")
LOG_EVERY_S: Final = 60.0
MAX_LOGGED: Final = 100  # hosts remembered for the log limit; beyond, one line for the rest
MALFORMED: Final = "(missing or malformed)"


def host_of(value: str) -> str | None:
    """The host a ``Host`` header value names: lower case, IPv6 without brackets, no port
    and no trailing dot. None when the value is neither a host name nor an address."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or not _is_ipv6(host):
            return None
    elif value.count(":") > 1:  # a bare IPv6 literal ("::1"): not HTTP, but unambiguous
        host, port = value, ""
        if not _is_ipv6(host):
            return None
    else:
        host, colon, port = value.partition(":")
        port = colon + port
        host = host.removesuffix(".")
        if not _NAME.fullmatch(host):
            return None
    if not _PORT.fullmatch(port):
        return None
    return host


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


class HostCheck:
    """The hosts one listener answers for, and the rate-limited log of the refused ones."""

    def __init__(self, http: HttpConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        names = {host_of(name) for name in http.allowed_hosts}
        configured = host_of(http.host)
        if configured not in NO_HOST:
            names.add(configured)
        self.names: frozenset[str] = frozenset(n for n in names if n is not None)
        self._logged: dict[str, tuple[float, int]] = {}  # host -> (logged at, refused since)

    def answers(self, host: str) -> bool:
        """True for a loopback name or address, the configured host and the allowed ones."""
        return host in self.names or is_loopback_host(host)

    def note_refused(self, host: str, *, path: str, peer: str | None) -> None:
        """Log a refused request, at most once every :data:`LOG_EVERY_S` per host."""
        now = self.clock()
        if host not in self._logged and len(self._logged) >= MAX_LOGGED:
            self._forget_older_than(now - LOG_EVERY_S)
            if len(self._logged) >= MAX_LOGGED:
                host = "(other hosts)"  # a flood of names: one line a minute for them all
        logged_at, refused = self._logged.get(host, (float("-inf"), 0))
        if now - logged_at < LOG_EVERY_S:
            self._logged[host] = (logged_at, refused + 1)
            return
        self._logged[host] = (now, 0)
        log.warning(
            "http_host_refused",
            host=host,
            path=path[:200],
            peer=peer,
            repeats=refused,  # refusals of this host since its last line
            hint="add the name to [http] allowed_hosts if this listener should answer it",
        )

    def _forget_older_than(self, cutoff: float) -> None:
        for host in [h for h, (at, _) in self._logged.items() if at < cutoff]:
            del self._logged[host]
