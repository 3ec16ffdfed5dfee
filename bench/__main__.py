"""``python -m bench [--jobs N] [--concurrency N] [--rate R] [--seconds S] [--rounds N]``

1. ``--rounds`` times, alternating:
   floor drain: N prefilled items taken by the bare BRPOPLPUSH + LREM loop (bench/floor.py)
   with ``concurrency`` coroutines, in a process of its own; and
   engine drain: N prefilled no-op jobs run by one ``python -m alchemy run`` process at
   ``concurrency`` (the same process every round);
2. floor pickup (a control): the bare loop, idle, fed R jobs/s for S seconds;
3. engine pickup: the worker, idle, fed R jobs/s for S seconds by alchemy's Producer;
   then its peak RSS;
4. the rate limit: three workers share a queue limited to 50 starts per 2 s, with a
   backlog, for 12 s (bench/limiter.py): the worst window and the throughput, as % of the
   limit;
5. the handler line (bench/handler.py): content jobs/s through the real content handler
   with the offline provider and a PostgreSQL database of its own, ``--rounds`` drains of
   ``--handler-jobs`` jobs (``--handler-jobs 0`` leaves it out);
6. dashboards (bench/dashboards.py): the engine drain with 10 dashboards live vs none, and
   the Redis work of one page refresh with 1,000 and 1,000,000 dead entries.

Prints a table, then one JSON line, the last line of the output. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from typing import Any

import redis as redis_py
from redis.asyncio import Redis

from bench.dashboards import measure_dashboards
from bench.handler import HandlerResult, HandlerSettings, add_arguments, describe
from bench.handler import measure_handler as measure_handler_line
from bench.lifecycle import add_arguments as add_lifecycle_arguments
from bench.lifecycle import measure as measure_lifecycle
from bench.lifecycle import settings_from as lifecycle_settings
from bench.limiter import LimiterResult, measure_limiter
from bench.measure import Drain, Results, Settings, run

GOAL_RATIO = 1.0
GOAL_P99_MS = 5.0
GOAL_RSS_MB = 40.0  # issue 12: the engine with the no-op handler
GOAL_WINDOW_PCT = 100.0  # no window of one period holds more than the limit
GOAL_THROUGHPUT_PCT = 95.0  # a backlog runs at the limit


async def redis_version(url: str) -> str:
    client = Redis.from_url(url)
    try:
        info: dict[str, Any] = await client.info("server")
        return str(info.get("redis_version", "?"))
    finally:
        await client.aclose()


def report(s: Settings, r: Results, limiter: LimiterResult, server: str) -> str:
    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    def spread(rounds: list[Drain]) -> str:
        if len(rounds) < 2:
            return ""
        return f"median of {', '.join(f'{d.jobs_per_s:,.0f}' for d in rounds)}"

    rows = [
        (
            f"engine drain, {s.jobs:,} no-op jobs",
            f"{r.engine_jobs_per_s:,.0f} jobs/s",
            "",
            spread(r.engine_rounds),
        ),
        (
            f"floor drain, {s.jobs:,} items",
            f"{r.floor_jobs_per_s:,.0f} jobs/s",
            "",
            spread(r.floor_rounds),
        ),
        ("ratio engine / floor", f"{r.ratio:.2f}x", f">= {GOAL_RATIO:.1f}x", verdict(r.ratio >= 1)),
        (
            "CPU per job, engine / floor",
            f"{r.engine_cpu_us:.0f} / {r.floor_cpu_us:.0f} us",
            "",
            "",
        ),
        (f"pickup p50 at {s.rate:g} jobs/s", f"{r.p50_ms:.2f} ms", "", ""),
        (
            f"pickup p99 at {s.rate:g} jobs/s",
            f"{r.p99_ms:.2f} ms",
            f"< {GOAL_P99_MS:g} ms",
            verdict(r.p99_ms < GOAL_P99_MS),
        ),
        (
            "  control: floor pickup p50 / p99",
            f"{r.floor_p50_ms:.2f} / {r.floor_p99_ms:.2f} ms",
            "",
            "",
        ),
        (
            "worker peak RSS",
            f"{r.rss_mb:.1f} MB",
            f"< {GOAL_RSS_MB:g} MB",
            verdict(r.rss_mb < GOAL_RSS_MB),
        ),
        (
            f"limiter worst {limiter.period:g} s window",
            f"{limiter.worst_window_pct:.0f}% of {limiter.limit}",
            f"<= {GOAL_WINDOW_PCT:g}%",
            verdict(limiter.worst_window_pct <= GOAL_WINDOW_PCT),
        ),
        (
            f"limiter throughput, {limiter.processes} processes",
            f"{limiter.throughput_pct:.1f}%",
            f">= {GOAL_THROUGHPUT_PCT:g}%",
            verdict(limiter.throughput_pct >= GOAL_THROUGHPUT_PCT),
        ),
    ]
    head = (
        f"alchemy bench: Redis {server} at {s.url}, redis-py {redis_py.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"concurrency {s.concurrency}, {r.latency_jobs:,} latency jobs, "
        f"events and records {'on' if s.ops else 'off'}"
    )
    lines = [head, "", f"{'measure':<34}{'value':>16}  goal"]
    lines += [f"{a:<34}{b:>16}  {c:<10}{d}".rstrip() for a, b, c, d in rows]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[Settings, HandlerSettings]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Engine vs. floor drain speed, pickup latency and the worker's peak RSS.",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis to use (default: $REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="backlog size (20000)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker concurrency (10)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency feed, jobs/s (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run length (10)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="drains of each side, medians reported (3)"
    )
    parser.add_argument(
        "--without-ops",
        action="store_true",
        help="turn the events stream and job records off in the worker (on by default)",
    )
    add_arguments(parser)
    add_lifecycle_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency, args.rounds) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("every option must be positive")
    if args.handler_jobs < 0 or args.handler_concurrency < 1:
        parser.error("--handler-jobs must be >= 0 and --handler-concurrency positive")
    settings = Settings(
        args.redis_url,
        args.jobs,
        args.concurrency,
        args.rate,
        args.seconds,
        args.rounds,
        ops=not args.without_ops,
    )
    handler = HandlerSettings(
        args.redis_url,
        args.database_url,
        args.handler_jobs,
        args.handler_concurrency,
        args.rounds,
    )
    return settings, handler


def main(argv: list[str]) -> int:
    settings, handler_settings = parse_args(argv)
    started = time.monotonic()
    server = asyncio.run(redis_version(settings.url))
    results = asyncio.run(run(settings))
    limiter = asyncio.run(measure_limiter(settings.url))
    handler: HandlerResult | None = None
    if handler_settings.jobs:
        handler = asyncio.run(measure_handler_line(handler_settings))
    dashboards = asyncio.run(measure_dashboards(settings))
    lifecycle, lifecycle_json = asyncio.run(
        measure_lifecycle(lifecycle_settings(argv, settings.url))
    )
    print(report(settings, results, limiter, server))
    summary: dict[str, Any] = {**results.to_json(), **limiter.to_json()}
    if handler is not None:
        print(describe(handler))
        summary["handler_jobs_per_s"] = round(handler.jobs_per_s, 1)
    print("\n".join(["", "dashboards:", *dashboards.lines()]))
    summary.update(dashboards.to_json())
    print("\n".join(["", "lifecycle (bench/lifecycle.py):", *lifecycle]))
    summary.update(lifecycle_json)
    print(f"(took {time.monotonic() - started:.1f}s)\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
