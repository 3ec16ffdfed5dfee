"""The handler line: content jobs/s through the real content handler, with the offline
provider (no network, no cost) and a real PostgreSQL, in one ``python -m alchemy run``
process. What it measures is the handler's own path: its queries, the quality score, and
(since issue 8) the lease and the ledger around the provider call.

A database of its own (``bench_<random>``) is created on the server of ``--database-url``,
migrated, and dropped at the end. Each round drains ``--handler-jobs`` content jobs, each
for a fresh ``content_queue`` row (no media follow-up); the rounds are timed like the
engine's drains (from the first pickup until the wait and processing lists are empty) and
the median is reported. Runs on its own too: ``python -m bench.handler``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

from alchemy.db.migrate import migrate_url
from bench.common import delete_prefix, time_drain, wait_settled
from bench.engine import EngineWorker

REPO = Path(__file__).resolve().parent.parent
QUEUE: Final = "content-generation"
HANDLER: Final = "alchemy.handlers.content:handle"
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    redis_url: str
    database_url: str
    jobs: int
    concurrency: int
    rounds: int


@dataclass(frozen=True, slots=True)
class HandlerResult:
    rounds: list[float]  # jobs/s, in order
    cpu_us: list[float]  # the worker's CPU time per job, in order

    @property
    def jobs_per_s(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu_us_per_job(self) -> float:
        return statistics.median(self.cpu_us)


def config_toml(*, redis_url: str, prefix: str, database_url: str, concurrency: int) -> str:
    return f"""\
[redis]
url = {json.dumps(redis_url)}
prefix = {json.dumps(prefix)}

[database]
url = {json.dumps(database_url)}
pool_size = {concurrency}

[worker]
name = "bench-handler"
host = "bench"
shutdown_timeout = 10.0

[log]
format = "json"
level = "info"

[providers]
text_provider = "offline"
image_provider = "offline"

[queues.{QUEUE}]
handler = "{HANDLER}"
concurrency = {concurrency}
"""


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def seed(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    brand_id = await conn.fetchval("INSERT INTO brands (name) VALUES ('Bench') RETURNING id")
    idea_id = await conn.fetchval(
        "INSERT INTO ideas (brand_id, title, keywords) VALUES ($1, 'Heat pumps in the cold',"
        " '{heat pumps,energy}') RETURNING id",
        brand_id,
    )
    rows = await conn.fetch(
        "INSERT INTO content_queue (brand_id, idea_id, platform)"
        " SELECT $1, $2, 'linkedin' FROM generate_series(1, $3) RETURNING id",
        brand_id,
        idea_id,
        count,
    )
    return [row["id"] for row in rows]


async def one_round(
    redis: Redis, conn: asyncpg.Connection, worker: EngineWorker, s: HandlerSettings, n: int
) -> tuple[float, float]:
    """(jobs/s, CPU us per job) of one drain of ``s.jobs`` fresh content jobs."""
    keys = worker.keys
    await redis.set(keys.paused, 1)
    if worker.proc is None:
        worker.start(REPO)
    rows = await seed(conn, s.jobs)
    for start in range(0, len(rows), BATCH):
        jobs = [
            json.dumps({"id": f"h{n}-{i}", "content_queue_id": str(row)})
            for i, row in enumerate(rows[start : start + BATCH], start)
        ]
        await redis.lpush(keys.wait, *jobs)
    await worker.wait_started()
    await wait_settled(redis, keys.wait, worker.processing, s.jobs)
    cpu_before = worker.cpu_seconds()
    await redis.delete(keys.paused)
    seconds = await time_drain(redis, keys.wait, worker.processing, s.jobs)
    cpu = worker.cpu_seconds() - cpu_before
    done = await conn.fetchval(
        "SELECT count(*) FROM content_queue WHERE status = 'completed' AND id = ANY($1)", rows
    )
    if done != s.jobs:
        raise RuntimeError(f"handler round {n}: {done} of {s.jobs} rows completed")
    return s.jobs / seconds, cpu / s.jobs * 1e6


async def measure_handler(s: HandlerSettings) -> HandlerResult:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(s.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    url = with_database(s.database_url, name)
    redis = Redis.from_url(s.redis_url)
    speeds: list[float] = []
    cpus: list[float] = []
    try:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        try:
            with tempfile.TemporaryDirectory(prefix="alchemy-bench-handler-") as workdir:
                worker = EngineWorker(
                    url=s.redis_url,
                    prefix=prefix,
                    concurrency=s.concurrency,
                    workdir=Path(workdir),
                    queue=QUEUE,
                    config_text=config_toml(
                        redis_url=s.redis_url,
                        prefix=prefix,
                        database_url=url,
                        concurrency=s.concurrency,
                    ),
                )
                try:
                    for n in range(s.rounds):
                        speed, cpu = await one_round(redis, conn, worker, s, n)
                        speeds.append(speed)
                        cpus.append(cpu)
                finally:
                    code = await asyncio.to_thread(worker.stop)
                if code != 0:
                    raise RuntimeError(f"handler worker exited {code}")
        finally:
            await conn.close()
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return HandlerResult(speeds, cpus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("ALCHEMY_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL server for the handler line (a database of its own is created there)",
    )
    parser.add_argument(
        "--handler-jobs", type=int, default=1000, help="content jobs per handler round (1000)"
    )
    parser.add_argument(
        "--handler-concurrency", type=int, default=10, help="the content queue's concurrency"
    )


def describe(result: HandlerResult) -> str:
    """One row of the bench's table (same columns: measure, value, goal, details)."""
    spread = ", ".join(f"{speed:,.0f}" for speed in result.rounds)
    value = f"{result.jobs_per_s:,.0f} jobs/s"
    details = f"median of {spread}; CPU {result.cpu_us_per_job:,.0f} us/job"
    return f"{'handler drain, content (offline)':<34}{value:>16}  {'':<10}{details}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handler", description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--rounds", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = HandlerSettings(
        args.redis_url, args.database_url, args.handler_jobs, args.handler_concurrency, args.rounds
    )
    started = time.monotonic()
    result = asyncio.run(measure_handler(settings))
    print(describe(result))
    print(f"(took {time.monotonic() - started:.1f}s)")
    print(json.dumps({"handler_jobs_per_s": round(result.jobs_per_s, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
