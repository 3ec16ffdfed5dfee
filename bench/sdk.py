"""The SDK worker line: one ``python -m alchemy run`` serving the three shipped queues with
the real Anthropic and OpenAI clients, pointed at the local fake AI server
(:mod:`tests.fakes.ai_server`, run in this process), against a database of its own.

Run alone: ``python -m bench.sdk [--jobs 1000] [--rate 25]``.

The worker is started with nothing queued. Once it logs ``worker_started`` the bench feeds
it ``--sdk-rate`` jobs per second: content jobs (each with a media follow-up, which the
content handler pushes) and research jobs, alternating, until ``--sdk-jobs`` jobs have
finished (content + research + media). It reports:

- the worker's peak RSS (``VmHWM``) after those jobs;
- warm start: the p50 of job duration and of pickup over the first 10 jobs each of content
  and research, against the same over the steady part (the last half of each kind). A
  worker that loads its SDKs on the first job shows it here. The worker is started
  ``--sdk-starts`` times (the later starts run 200 jobs each) and the medians over the
  starts are reported, so one busy moment of the machine at one start does not decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from alchemy.db.migrate import migrate_url
from alchemy.queue.keys import QueueKeys
from bench.common import delete_prefix
from bench.engine import EngineWorker
from bench.handler import DEFAULT_DATABASE_URL, REPO, with_database
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import ANTHROPIC_KEY, OPENAI_KEY

GOAL_RSS_MB: Final = 120.0
FIRST: Final = 10  # jobs of each kind counted as "first"
LATER_JOBS: Final = 200  # jobs of each start after the first
CONTENT: Final = "content-generation"
RESEARCH: Final = "research"
MEDIA: Final = "media-generation"


@dataclass(frozen=True, slots=True)
class SdkSettings:
    redis_url: str
    database_url: str
    jobs: int  # finished jobs of all three queues
    rate: float  # jobs pushed per second (content + research)
    starts: int = 3  # worker starts for the warm-start figures


@dataclass(frozen=True, slots=True)
class Warmth:
    """p50s in ms of one kind of job: the first ``FIRST`` and the steady (last half)."""

    kind: str
    first_duration: float
    steady_duration: float
    first_pickup: float
    steady_pickup: float


@dataclass(frozen=True, slots=True)
class Session:
    """One start of the worker and its jobs."""

    rss_mb: float
    idle_mb: float
    jobs: int
    warmth: list[Warmth]


def median_warmth(sessions: Sequence[Session]) -> list[Warmth]:
    kinds = [w.kind for w in sessions[0].warmth]
    out = []
    for i, kind in enumerate(kinds):
        each = [s.warmth[i] for s in sessions]
        out.append(
            Warmth(
                kind,
                p50([w.first_duration for w in each]),
                p50([w.steady_duration for w in each]),
                p50([w.first_pickup for w in each]),
                p50([w.steady_pickup for w in each]),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class SdkResult:
    rss_mb: float
    idle_mb: float  # VmRSS once started, warmed up, before any job
    jobs: int
    starts: int
    warmth: list[Warmth]  # medians over the starts

    def lines(self) -> list[str]:
        verdict = "ok" if self.rss_mb <= GOAL_RSS_MB else "MISSED"
        goal = f"<= {GOAL_RSS_MB:g} MB"
        rows = [
            f"{'SDK worker peak RSS, 3 queues':<34}{self.rss_mb:>13.1f} MB  {goal:<10}"
            f"{verdict}; after {self.jobs:,} jobs (idle after warm-up: {self.idle_mb:.1f} MB)",
        ]
        for w in self.warmth:
            rows.append(
                f"{'first 10 / steady, ' + w.kind:<34}"
                f"{w.first_duration:>7.1f} / {w.steady_duration:.1f} ms  job duration p50; pickup"
                f" p50 {w.first_pickup:.2f} / {w.steady_pickup:.2f} ms; median of"
                f" {self.starts} starts"
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sdk_rss_mb": round(self.rss_mb, 1)}
        out["sdk_idle_rss_mb"] = round(self.idle_mb, 1)
        for w in self.warmth:
            key = w.kind.replace("-", "_")
            out[f"{key}_first_p50_ms"] = round(w.first_duration, 1)
            out[f"{key}_steady_p50_ms"] = round(w.steady_duration, 1)
        return out


def config_toml(*, redis_url: str, prefix: str, database_url: str, fake: FakeAI) -> str:
    """The shipped three queues (concurrency 3, 2, 2) without their rate limits, both SDKs
    on the fake: content on Anthropic, research on OpenAI (its idea's brand says so), the
    images on OpenAI."""
    return f"""\
[redis]
url = {json.dumps(redis_url)}
prefix = {json.dumps(prefix)}

[database]
url = {json.dumps(database_url)}
pool_size = 4

[worker]
name = "bench-sdk"
host = "bench"
shutdown_timeout = 10.0

[log]
format = "json"
level = "info"

[providers]
anthropic_api_key = {json.dumps(ANTHROPIC_KEY)}
openai_api_key = {json.dumps(OPENAI_KEY)}
anthropic_base_url = {json.dumps(fake.anthropic_base_url)}
openai_base_url = {json.dumps(fake.openai_base_url)}
text_provider = "anthropic"
image_provider = "openai"
timeout = 10.0

[media]
directory = {json.dumps(str(Path(tempfile.gettempdir()) / f"{prefix}-media"))}
allowed_hosts = [{json.dumps(fake.origin)}]

[queues.{CONTENT}]
handler = "alchemy.handlers.content:handle"
concurrency = 3

[queues.{RESEARCH}]
handler = "alchemy.handlers.research:handle"
concurrency = 2

[queues.{MEDIA}]
handler = "alchemy.handlers.media:handle"
concurrency = 2
"""


async def seed(conn: asyncpg.Connection, count: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """``count`` content_queue rows and ``count`` ideas (for research)."""
    brand_id = await conn.fetchval("INSERT INTO brands (name) VALUES ('Bench') RETURNING id")
    ideas = await conn.fetch(
        "INSERT INTO ideas (brand_id, title, keywords) SELECT $1, 'Heat pumps in the cold',"
        " '{heat pumps,energy}' FROM generate_series(1, $2) RETURNING id",
        brand_id,
        count,
    )
    rows = await conn.fetch(
        "INSERT INTO content_queue (brand_id, idea_id, platform)"
        " SELECT $1, $2, 'linkedin' FROM generate_series(1, $3) RETURNING id",
        brand_id,
        ideas[0]["id"],
        count,
    )
    return [r["id"] for r in rows], [i["id"] for i in ideas]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def warmth(kind: str, lines: list[dict[str, Any]]) -> Warmth:
    """``lines``: the job_finished lines of one queue, in the order the jobs were pushed."""
    first, steady = lines[:FIRST], lines[len(lines) // 2 :]

    def of(part: list[dict[str, Any]], field: str) -> float:
        return p50([float(e[field]) for e in part if field in e])

    return Warmth(
        kind,
        of(first, "duration_ms"),
        of(steady, "duration_ms"),
        of(first, "pickup_ms"),
        of(steady, "pickup_ms"),
    )


async def feed(
    redis: Redis, prefix: str, jobs: int, rate: float, rows: list[Any], ideas: list[Any], tag: str
) -> int:
    """Push content (with media) and research jobs alternately at ``rate``; returns the
    number pushed: enough that, with the media follow-ups, ``jobs`` jobs run."""
    content, research = QueueKeys(prefix, CONTENT).wait, QueueKeys(prefix, RESEARCH).wait
    pushes = jobs * 2 // 3 + 1  # half of them content, each with one media follow-up
    started = time.monotonic()
    for n in range(pushes):
        now_ms = int(time.time() * 1000)
        if n % 2 == 0:
            data = {
                "id": f"c{tag}-{n}",
                "enqueued_at": now_ms,
                "content_queue_id": str(rows[n // 2]),
                "media": True,
            }
            await redis.lpush(content, json.dumps(data))
        else:
            data = {
                "id": f"r{tag}-{n}",
                "enqueued_at": now_ms,
                "idea_id": str(ideas[n // 2]),
                "type": "keywords",
            }
            await redis.lpush(research, json.dumps(data))
        delay = started + (n + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return pushes


def order_key(line: dict[str, Any]) -> int:
    return int(str(line["job_id"]).split("-")[1])


async def run_worker(
    redis: Redis,
    worker: EngineWorker,
    prefix: str,
    conn: asyncpg.Connection,
    *,
    jobs: int,
    rate: float,
    tag: str,
) -> Session:
    """One start: ``jobs`` jobs, then a clean stop."""
    rows, ideas = await seed(conn, jobs)
    worker.start(REPO)
    await worker.wait_started(within=60.0)
    idle = worker.rss_mb()
    await feed(redis, prefix, jobs, rate, rows, ideas, tag)
    deadline = time.monotonic() + 120 + jobs / 10
    while True:
        finished = [e for e in worker.events() if e.get("event") == "job_finished"]
        if len(finished) >= jobs:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sdk line: {len(finished)} of {jobs} jobs finished")
        await asyncio.sleep(0.2)
    failed = [e for e in finished if e.get("outcome") != "completed"]
    if failed:
        raise RuntimeError(f"sdk line: {len(failed)} jobs did not complete: {failed[0]}")
    rss = worker.peak_rss_mb()
    code = await asyncio.to_thread(worker.stop)
    if code != 0:
        raise RuntimeError(f"sdk worker exited {code}")
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for line in finished:
        by_queue.setdefault(str(line.get("queue")), []).append(line)
    kinds = [
        warmth(queue, sorted(by_queue.get(queue, []), key=order_key))
        for queue in (CONTENT, RESEARCH)
    ]
    return Session(rss, idle, len(finished), kinds)


async def measure_sdk(s: SdkSettings) -> SdkResult:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(s.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    url = with_database(s.database_url, name)
    redis = Redis.from_url(s.redis_url)
    fake = FakeAI()
    await fake.start()
    try:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        try:
            with tempfile.TemporaryDirectory(prefix="alchemy-bench-sdk-") as workdir:
                worker = EngineWorker(
                    url=s.redis_url,
                    prefix=prefix,
                    concurrency=1,
                    workdir=Path(workdir),
                    queue=CONTENT,
                    config_text=config_toml(
                        redis_url=s.redis_url, prefix=prefix, database_url=url, fake=fake
                    ),
                )
                sessions: list[Session] = []
                try:
                    for n in range(max(1, s.starts)):
                        jobs = s.jobs if n == 0 else min(s.jobs, LATER_JOBS)
                        sessions.append(
                            await run_worker(
                                redis, worker, prefix, conn, jobs=jobs, rate=s.rate, tag=str(n)
                            )
                        )
                finally:
                    await asyncio.to_thread(worker.stop)
                first = sessions[0]
                result = SdkResult(
                    first.rss_mb, first.idle_mb, first.jobs, len(sessions), median_warmth(sessions)
                )
        finally:
            await conn.close()
    finally:
        await fake.stop()
        await delete_prefix(redis, prefix)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    if fake.problems:
        raise RuntimeError(f"the fake AI server refused requests: {fake.problems[:3]}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sdk-jobs", type=int, default=1000, help="jobs the SDK worker line runs (1000; 0 = none)"
    )
    parser.add_argument(
        "--sdk-rate", type=float, default=25.0, help="jobs/s fed to the SDK worker (25)"
    )
    parser.add_argument(
        "--sdk-starts", type=int, default=3, help="SDK worker starts for warm start (3)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk", description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("ALCHEMY_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = SdkSettings(
        args.redis_url, args.database_url, args.sdk_jobs, args.sdk_rate, args.sdk_starts
    )
    started = time.monotonic()
    result = asyncio.run(measure_sdk(settings))
    print("\n".join(result.lines()))
    print(f"(took {time.monotonic() - started:.1f}s)")
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
