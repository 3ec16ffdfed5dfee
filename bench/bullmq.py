"""BullMQ as a peer in ``make bench``: the same no-op workload through BullMQ on the same
Redis, interleaved with alchemy's rounds (bench/bullmq/bench.mjs does the Node side).

When ``node`` and ``npm`` are on the PATH, :func:`prepare` installs the pinned BullMQ into
``bench/bullmq/node_modules`` from the committed lockfile (``npm ci``, only when the
lockfile changed since the last install); otherwise it says why, and the bench measures
the rest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

FOLDER: Final = Path(__file__).resolve().parent / "bullmq"
SCRIPT: Final = FOLDER / "bench.mjs"
STAMP: Final = FOLDER / "node_modules" / ".alchemy-lock"


def missing() -> str | None:
    """Why BullMQ cannot be measured here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: BullMQ is not measured"
    return None


def prepare() -> None:
    """``npm ci`` from the committed lockfile, once per lockfile."""
    lock = (FOLDER / "package-lock.json").read_bytes()
    if STAMP.exists() and STAMP.read_bytes() == lock:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=FOLDER,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    STAMP.write_bytes(lock)


async def _node(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, cwd=FOLDER
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"node bench.mjs {args[0]} exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@dataclass(frozen=True, slots=True)
class BullDrain:
    jobs_per_s: float
    cpu_us_per_job: float


class BullWorker:
    """One long-lived BullMQ worker process (as alchemy's bench keeps one worker process),
    driven through its stdin."""

    def __init__(self, url: str, prefix: str, concurrency: int) -> None:
        self.url = url
        self.prefix = prefix
        self.concurrency = concurrency
        self.proc: asyncio.subprocess.Process | None = None

    def _args(self) -> list[str]:
        return ["--url", self.url, "--prefix", self.prefix]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            "worker",
            *self._args(),
            "--concurrency",
            str(self.concurrency),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=FOLDER,
        )
        await self._answer()  # {"ready": true}

    async def _say(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _answer(self, within: float = 300.0) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not line:
            raise RuntimeError("the BullMQ worker exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def drain(self, jobs: int) -> BullDrain:
        """Fill a paused queue with ``jobs`` no-op jobs, resume it, time the drain."""
        await _node("fill", *self._args(), "--jobs", str(jobs))
        await self._say(f"drain {jobs}")
        await _node("resume", *self._args())
        result = await self._answer()
        return BullDrain(float(result["jobs_per_s"]), float(result["cpu_us_per_job"]))

    async def pickup(self, rate: float, seconds: float) -> list[float]:
        """Feed the idle worker ``rate`` jobs/s for ``seconds``: each job's pickup, ms."""
        await self._say("pickup")
        fed = await _node("feed", *self._args(), "--rate", str(rate), "--seconds", str(seconds))
        await asyncio.sleep(1.0)  # the last jobs' turn
        await self._say("report")
        picked = [float(ms) for ms in (await self._answer())["pickup_ms"]]
        if len(picked) != int(fed["added"]):
            raise RuntimeError(f"BullMQ picked {len(picked)} of {fed['added']} jobs")
        return picked

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self._say("quit")
            await asyncio.wait_for(self.proc.wait(), 30)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.proc.kill()
            await self.proc.wait()


def node_version() -> str:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def bullmq_version() -> str:
    package = FOLDER / "node_modules" / "bullmq" / "package.json"
    return str(json.loads(package.read_text()).get("version", "?")) if package.exists() else "?"
