"""Command line: ``python -m alchemy [--config PATH] COMMAND``; ``run`` is the default."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from alchemy.config import DEFAULT_CONFIG_PATH, Config, load_config, mask_url
from alchemy.errors import AlchemyError, ConfigError, IdentityInUseError
from alchemy.logs import configure_logging, register_secrets
from alchemy.queue.admin import QueueAdmin
from alchemy.queue.producer import Producer
from alchemy.worker.connections import shared_client
from alchemy.worker.handlers import Unavailable, load_handler
from alchemy.worker.supervisor import Supervisor

EX_CONFIG: Final = 78
EX_UNAVAILABLE: Final = 69
COMMANDS: Final = (
    "run",
    "status",
    "dead",
    "enqueue",
    "pause",
    "resume",
    "check-config",
    "migrate",
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"config file (default: $ALCHEMY_CONFIG or ./{DEFAULT_CONFIG_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="alchemy", description="alchemy job service", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the worker (the default)")
    run.add_argument("--queues", help="comma-separated queue names (default: all enabled)")

    status = sub.add_parser("status", parents=[common], help="queue depths and live processes")
    status.add_argument("--json", action="store_true", help="print JSON")

    dead = sub.add_parser("dead", parents=[common], help="the dead-letter lists")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list", parents=[common], help="list dead jobs, newest first")
    dead_list.add_argument("queue")
    dead_list.add_argument("--offset", type=int, default=0)
    dead_list.add_argument("--limit", type=int, default=20)
    dead_list.add_argument("--json", action="store_true", help="one JSON entry per line")
    dead_retry = dead_sub.add_parser(
        "retry", parents=[common], help="back to the wait list, attempts reset"
    )
    dead_retry.add_argument("queue")
    which = dead_retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the job id to retry")
    which.add_argument("--all", action="store_true", help="retry every dead job of the queue")
    dead_purge = dead_sub.add_parser("purge", parents=[common], help="delete dead jobs")
    dead_purge.add_argument("queue")
    which = dead_purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the job id to delete")
    which.add_argument("--all", action="store_true", help="delete every dead job of the queue")

    enqueue = sub.add_parser("enqueue", parents=[common], help="push one job (JSON object)")
    enqueue.add_argument("queue")
    enqueue.add_argument("data", help="the job's data as a JSON object")
    enqueue.add_argument("--id", help="job id (default: a random one)")

    for name, text in (("pause", "stop starting jobs"), ("resume", "start jobs again")):
        cmd = sub.add_parser(name, parents=[common], help=f"{text} of a queue, in every process")
        cmd.add_argument("queue")

    sub.add_parser("check-config", parents=[common], help="validate and print the config")
    sub.add_parser(
        "migrate", parents=[common], help="apply pending database migrations (docs/schema.md)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not any(arg in COMMANDS for arg in args_list) and not {"-h", "--help"} & set(args_list):
        args_list.append("run")
    args = build_parser().parse_args(args_list)
    try:
        config = _load(args)
        register_secrets(_secret_values(config))
        return COMMAND_TABLE[args.command](config, args)
    except ConfigError as exc:
        print(f"alchemy: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except IdentityInUseError as exc:
        print(f"alchemy: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (redis_errors.AuthenticationError, redis_errors.AuthorizationError) as exc:
        print(
            f"alchemy: config error: redis.url: Redis refused the credentials: {exc}",
            file=sys.stderr,
        )
        return EX_CONFIG
    except AlchemyError as exc:
        print(f"alchemy: {exc}", file=sys.stderr)
        return 1


def _load(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None) or os.environ.get("ALCHEMY_CONFIG")
    return load_config(Path(path) if path else DEFAULT_CONFIG_PATH, os.environ)


def _secret_values(config: Config) -> list[str]:
    from urllib.parse import urlsplit

    values = [config.providers.anthropic_api_key.reveal(), config.providers.openai_api_key.reveal()]
    for url in (config.redis.url.reveal(), config.database.url.reveal()):
        password = urlsplit(url).password
        if password:
            values.append(password)
    return values


def _run(config: Config, args: argparse.Namespace) -> int:
    configure_logging(config.log.level, config.log.format)
    names = [n.strip() for n in args.queues.split(",") if n.strip()] if args.queues else None
    supervisor = Supervisor(config, names)
    return asyncio.run(supervisor.run())


def _with_redis(config: Config, action: Callable[[Redis], Awaitable[int]]) -> int:
    async def go() -> int:
        redis = shared_client(config.redis)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except (OSError, ConnectionError) as exc:
        print(
            f"alchemy: redis unreachable at {mask_url(config.redis.url.reveal())}: {exc}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    except Exception as exc:
        from alchemy.worker.connections import is_transient

        if is_transient(exc):
            print(
                f"alchemy: redis unreachable at {mask_url(config.redis.url.reveal())}: {exc}",
                file=sys.stderr,
            )
            return EX_UNAVAILABLE
        raise


def _status(config: Config, args: argparse.Namespace) -> int:
    async def action(redis: Redis) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        statuses = [await admin.status(q.name) for q in config.queues]
        if args.json:
            print(json.dumps({"queues": [s.to_json() for s in statuses]}, indent=2))
            return 0
        print(f"{'queue':<24}{'wait':>8}{'processing':>12}{'delayed':>9}{'dead':>8}  paused")
        for s in statuses:
            paused = (
                "no"
                if not s.paused
                else ("yes" if s.paused_for_ms < 0 else f"{s.paused_for_ms / 1000:.1f}s")
            )
            print(f"{s.queue:<24}{s.wait:>8}{s.processing:>12}{s.delayed:>9}{s.dead:>8}  {paused}")
        print("\nprocesses:")
        seen = False
        for s in statuses:
            for c in s.consumers:
                seen = True
                state = "alive" if c.alive else "HEARTBEAT EXPIRED"
                pid = c.heartbeat.get("pid") if c.heartbeat else "?"
                print(
                    f"  {c.identity:<40} {s.queue:<22} pid={pid} {state} processing={c.processing}"
                )
        if not seen:
            print("  none")
        return 0

    return _with_redis(config, action)


def _dead(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)

    async def action(redis: Redis) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        if args.dead_command == "list":
            for entry in await admin.dead_list(args.queue, offset=args.offset, limit=args.limit):
                if args.json:
                    print(json.dumps(entry.fields, ensure_ascii=False))
                else:
                    _print_dead(entry.fields)
            return 0
        if args.dead_command == "retry":
            count = await (
                admin.dead_retry_all(args.queue)
                if args.all
                else admin.dead_retry(args.queue, args.id)
            )
            print(f"retried {count} job(s) from {args.queue}")
            return 0 if count or args.all else 1
        count = await admin.dead_purge(args.queue, None if args.all else args.id)
        print(f"purged {count} job(s) from {args.queue}")
        return 0 if count or args.all else 1

    return _with_redis(config, action)


def _print_dead(fields: Mapping[str, Any]) -> None:
    error = fields.get("error") or {}
    job = fields.get("job", "<base64 in job_b64>")
    shown = job if len(job) <= 200 else job[:200] + "…"
    print(
        f"{fields.get('id')}  reason={fields.get('reason')}  attempts={fields.get('attempts')}"
        f"  {error.get('type')}: {error.get('message')}\n    job: {shown}"
    )


def _enqueue(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"alchemy: data is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("alchemy: data must be a JSON object", file=sys.stderr)
        return 2

    async def action(redis: Redis) -> int:
        try:
            job_id = await Producer(redis, prefix=config.redis.prefix).enqueue(
                args.queue, data, id=args.id
            )
        except ValueError as exc:
            print(f"alchemy: {exc}", file=sys.stderr)
            return 2
        print(job_id)
        return 0

    return _with_redis(config, action)


def _pause_resume(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)

    async def action(redis: Redis) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        await (admin.pause(args.queue) if args.command == "pause" else admin.resume(args.queue))
        print(f"{args.queue}: {args.command}d")
        return 0

    return _with_redis(config, action)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    print(f"# {config.source}: valid")
    print(f"redis.url = {mask_url(config.redis.url.reveal())}")
    print(f"redis.prefix = {config.redis.prefix}")
    print(f"database.url = {mask_url(config.database.url.reveal())}")
    print(f"worker.identity = {config.worker.identity}")
    for name in ("anthropic_api_key", "openai_api_key"):
        secret = getattr(config.providers, name)
        print(f"providers.{name} = {'***' if secret else '(not set)'}")
    print(f"providers.text_provider = {config.providers.text_provider}")
    print(f"providers.image_provider = {config.providers.image_provider}")
    problems = 0
    for queue in config.queues:
        handler = load_handler(queue.handler)
        state = "ok" if not isinstance(handler, Unavailable) else f"UNAVAILABLE: {handler.reason}"
        problems += isinstance(handler, Unavailable) and queue.enabled
        print(
            f"queues.{queue.name}: enabled={queue.enabled} concurrency={queue.concurrency} "
            f"rate={queue.rate_limit}/{queue.rate_period:g}s burst={queue.burst} "
            f"max_attempts={queue.max_attempts} timeout={queue.timeout:g}s handler={queue.handler}"
            f" ({state})"
        )
    return 0 if not problems else 1


def _migrate(config: Config, args: argparse.Namespace) -> int:
    from alchemy.db import is_transient_db_error
    from alchemy.db.migrate import migrate_url

    configure_logging(config.log.level, config.log.format)
    url = config.database.url.reveal()
    try:
        report = asyncio.run(migrate_url(url))
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        print(f"alchemy: database unreachable at {mask_url(url)}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in report.applied) or "none"
    print(f"schema version {report.current_version}; applied now: {names}")
    return 0


def _known_queue(config: Config, name: str) -> None:
    if not any(q.name == name for q in config.queues):
        raise ConfigError("queue", f"no queue named {name!r} in {config.source}")


COMMAND_TABLE: Final[dict[str, Callable[[Config, argparse.Namespace], int]]] = {
    "run": _run,
    "status": _status,
    "dead": _dead,
    "enqueue": _enqueue,
    "pause": _pause_resume,
    "resume": _pause_resume,
    "check-config": _check_config,
    "migrate": _migrate,
}
