"""The lines of ``make bench`` about a worker's life rather than its speed (issue 12, goals
3-5): the SDK worker's memory and its first jobs against its steady ones (bench/sdk.py),
and the time a killed worker's jobs take to come back (bench/recovery.py).

``bench/__main__.py`` adds :func:`add_arguments` to its parser and calls :func:`measure`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from bench.recovery import measure_recovery
from bench.sdk import SdkSettings, measure_sdk
from bench.sdk import add_arguments as add_sdk_arguments


@dataclass(frozen=True, slots=True)
class LifecycleSettings:
    redis_url: str
    sdk: SdkSettings | None  # None: left out (--sdk-jobs 0)
    recovery_rounds: int  # 0: left out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sdk_arguments(parser)
    parser.add_argument(
        "--recovery-rounds",
        type=int,
        default=3,
        help="SIGKILLs measured by the recovery line (3; 0 = none)",
    )


def settings_from(argv: list[str], redis_url: str) -> LifecycleSettings:
    """The settings of these lines from the command line (the database URL is the handler
    line's ``--database-url``)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    parser.add_argument("--database-url", default=None)
    args, _ = parser.parse_known_args(argv)
    sdk = None
    if args.sdk_jobs > 0:
        from bench.handler import DEFAULT_DATABASE_URL

        database = args.database_url or os.environ.get(
            "ALCHEMY_TEST_DATABASE_URL", DEFAULT_DATABASE_URL
        )
        sdk = SdkSettings(redis_url, database, args.sdk_jobs, args.sdk_rate, args.sdk_starts)
    return LifecycleSettings(redis_url, sdk, max(0, args.recovery_rounds))


async def measure(s: LifecycleSettings) -> tuple[list[str], dict[str, Any]]:
    """The table rows and the JSON fields of the lines not left out."""
    lines: list[str] = []
    summary: dict[str, Any] = {}
    if s.sdk is not None:
        sdk = await measure_sdk(s.sdk)
        lines += sdk.lines()
        summary.update(sdk.to_json())
    if s.recovery_rounds:
        recovery = await measure_recovery(s.redis_url, s.recovery_rounds)
        lines += recovery.lines()
        summary.update(recovery.to_json())
    return lines, summary
