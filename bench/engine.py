"""The engine side: ``python -m alchemy run`` as a real worker process with the no-op
handler, its JSON log in a file, its peak memory read from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from alchemy.queue.keys import QueueKeys

QUEUE: Final = "bench"
HOST: Final = "bench"
NAME: Final = "bench"
HANDLER: Final = "alchemy.handlers.noop:handle"


def config_toml(*, url: str, prefix: str, concurrency: int, ops: bool = True) -> str:
    """``ops``: the events stream and job records as shipped (on), or off."""
    enabled = "true" if ops else "false"
    return f"""\
[redis]
url = {json.dumps(url)}
prefix = {json.dumps(prefix)}

[worker]
name = "{NAME}"
host = "{HOST}"
shutdown_timeout = 10.0

[log]
format = "json"
level = "info"

[events]
enabled = {enabled}

[records]
enabled = {enabled}

[queues.{QUEUE}]
handler = "{HANDLER}"
concurrency = {concurrency}
"""


def identity_of(config_text: str) -> str:
    """HOST:NAME of the worker a bench configuration runs."""
    worker = tomllib.loads(config_text)["worker"]
    return f"{worker['host']}:{worker['name']}"


def worker_env() -> dict[str, str]:
    """Our environment without the overrides that would point the worker elsewhere."""
    env = dict(os.environ)
    for name in [k for k in env if k == "REDIS_URL" or k.startswith("ALCHEMY_")]:
        del env[name]
    return env


class EngineWorker:
    """One worker process serving the ``bench`` queue under a private prefix."""

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        concurrency: int,
        workdir: Path,
        ops: bool = True,
        queue: str = QUEUE,
        config_text: str | None = None,
    ) -> None:
        """``config_text``: another configuration (same worker identity) serving ``queue``."""
        self.keys = QueueKeys(prefix, queue)
        self.config_path = workdir / "bench.toml"
        self.log_path = workdir / "worker.log"
        text = config_text or config_toml(url=url, prefix=prefix, concurrency=concurrency, ops=ops)
        self.config_path.write_text(text)
        self.processing = self.keys.processing(identity_of(text))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "alchemy", "--config", str(self.config_path), "run"],
                cwd=cwd,
                env=worker_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def events(self) -> Iterator[dict[str, Any]]:
        with self.log_path.open("rb") as log:
            for line in log:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    async def wait_started(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not any(e.get("event") == "worker_started" for e in self.events()):
            assert self.proc is not None, "not started"
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not started within {within}s: {self._log_tail()}")
            await asyncio.sleep(0.05)

    def finished(self, prefix: str) -> list[dict[str, Any]]:
        """The job_finished lines of the jobs whose id starts with ``prefix``."""
        return [
            e
            for e in self.events()
            if e.get("event") == "job_finished" and str(e.get("job_id", "")).startswith(prefix)
        ]

    def completed(self, prefix: str) -> int:
        return sum(e.get("outcome") == "completed" for e in self.finished(prefix))

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker has used so far (10 ms resolution)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """VmHWM (the peak resident set) of the worker, in MiB."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float:
        """VmRSS (the resident set now) of the worker, in MiB."""
        return self._status_mb("VmRSS")

    def _status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc status")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM by pid and wait; SIGKILL if it does not stop in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]
