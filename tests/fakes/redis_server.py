"""A redis-server of a test's own, started from the machine's binary on a free port and
stopped by pid: for tests that stop, restart or break Redis (never the shared server)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from tests.conftest import wait_for
from tests.ports import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of our own, started and stopped by pid. Persistent (AOF, fsync always)
    unless ``persistent`` is False; ``extra`` arguments go to redis-server as they are."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        persistent: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.persistent = persistent
        self.extra = list(extra)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        log = (self.directory / f"redis-{self.starts}.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.directory),
                    "--appendonly", "yes" if self.persistent else "no",
                    "--appendfsync", "always",
                    "--save", "",
                    "--daemonize", "no",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> int:
        """SIGTERM (Redis fsyncs the AOF and exits), then wait for it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    async def wait_ready(self, client: Redis) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, "redis-server died"
            with contextlib.suppress(Exception):
                return bool(await client.ping())
            return False

        await wait_for(ready, within=10, interval=0.05)
