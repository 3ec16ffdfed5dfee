"""Command line: ``python -m alchemy [--config PATH] COMMAND``; ``run`` is the default."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from redis import exceptions as redis_errors

from alchemy.config import (
    DEFAULT_CONFIG_PATH,
    MAX_URL_LIFETIME,
    Config,
    Secret,
    load_config,
    mask_url,
    offline_refusal,
    url_secrets,
)
from alchemy.errors import AlchemyError, ConfigError, IdentityInUseError
from alchemy.lean import keep_out_trio
from alchemy.logs import configure_logging, flush_logs, redact, register_secrets
from alchemy.ops.systemd import SystemdNotifier, check_watchdog
from alchemy.paid.spend import GROUPINGS
from alchemy.queue.admin import TRUNCATED_NOTE, QueueAdmin
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import RedisClients, describe_target
from alchemy.worker.handlers import Unavailable, load_handler
from alchemy.worker.supervisor import Extension

T = TypeVar("T")
EX_CONFIG: Final = 78
EX_UNAVAILABLE: Final = 69
EX_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, as a shell reports a program killed by it
COMMANDS: Final = (
    "run",
    "status",
    "dead",
    "enqueue",
    "job",
    "pause",
    "resume",
    "check-config",
    "migrate",
    "spend",
    "budget",
    "media",
)


EXIT_STATUSES: Final = (
    "exit status: 0 done; 1 failed (one line on standard error says why); 2 usage error; "
    "69 Redis or PostgreSQL unreachable; 78 configuration error; 141 the reader of the "
    "output went away (| head)"
)


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _uuid(text: str) -> uuid.UUID:
    """An argparse type: a UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _seconds(text: str) -> float:
    """An argparse type: seconds, 1 to 7 days (a presigned URL's limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= MAX_URL_LIFETIME:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_URL_LIFETIME:g} seconds, got {text}")
    return value


def _day(text: str) -> date:
    """An argparse type: a date, YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"config file (default: $ALCHEMY_CONFIG or ./{DEFAULT_CONFIG_PATH})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser = argparse.ArgumentParser(
        prog="alchemy", description="alchemy job service", parents=[common], epilog=EXIT_STATUSES
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the worker (the default)")
    run.add_argument("--queues", help="comma-separated queue names (default: all enabled)")

    sub.add_parser(
        "status", parents=[common, as_json], help="queue depths, pauses, processes and heartbeats"
    )

    dead = sub.add_parser("dead", parents=[common], help="the dead-letter lists")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list", parents=[common], help="list dead jobs, newest first")
    dead_list.add_argument("queue")
    dead_list.add_argument("--offset", type=_count, default=0, help="skip this many (default 0)")
    dead_list.add_argument("--limit", type=_count, default=20, help="show this many (default 20)")
    dead_list.add_argument("--json", action="store_true", help="one JSON entry per line")
    dead_retry = dead_sub.add_parser(
        "retry", parents=[common, as_json], help="back to the wait list, attempts reset"
    )
    dead_retry.add_argument("queue")
    which = dead_retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the job id to retry")
    which.add_argument("--all", action="store_true", help="retry every dead job of the queue")
    dead_purge = dead_sub.add_parser("purge", parents=[common, as_json], help="delete dead jobs")
    dead_purge.add_argument("queue")
    which = dead_purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the job id to delete")
    which.add_argument("--all", action="store_true", help="delete every dead job of the queue")

    enqueue = sub.add_parser(
        "enqueue", parents=[common, as_json], help="push one job (JSON object)"
    )
    enqueue.add_argument("queue")
    enqueue.add_argument("data", help="the job's data as a JSON object")
    enqueue.add_argument("--id", help="job id (default: a random one)")

    job = sub.add_parser(
        "job", parents=[common, as_json], help="a job's last transition, looked up by id"
    )
    job.add_argument("queue")
    job.add_argument("id")

    for name, text in (("pause", "stop starting jobs"), ("resume", "start jobs again")):
        cmd = sub.add_parser(
            name, parents=[common, as_json], help=f"{text} of a queue, in every process"
        )
        cmd.add_argument("queue")

    sub.add_parser(
        "check-config",
        parents=[common, as_json],
        help="validate and print the effective config (secrets masked)",
    )
    sub.add_parser(
        "migrate", parents=[common], help="apply pending database migrations (docs/schema.md)"
    )
    spend = sub.add_parser(
        "spend",
        parents=[common, as_json],
        help="provider calls, tokens, images and cost, from the ledger (all filters combine)",
    )
    spend.add_argument("--job", help="one job's calls (its id)")
    spend.add_argument("--brand", type=_uuid, help="one brand's calls (its UUID)")
    spend.add_argument(
        "--day", type=_day, help="one day's calls, YYYY-MM-DD ([budgets] time_zone, default UTC)"
    )
    spend.add_argument("--provider", help="one provider's calls (anthropic, openai, offline)")
    spend.add_argument("--model", help="one model's calls")
    spend.add_argument(
        "--by", choices=GROUPINGS, default="model", help="one line per (default: model)"
    )
    from alchemy.cli_budget import add_parser as add_budget_parser

    add_budget_parser(sub, [common, as_json], _uuid)

    media = sub.add_parser("media", parents=[common], help="the media store (docs/operations.md)")
    media_sub = media.add_subparsers(dest="media_command", required=True)
    url = media_sub.add_parser(
        "url", parents=[common, as_json], help="a fresh URL of a media row (browser-fetchable)"
    )
    url.add_argument("media_id", type=_uuid)
    url.add_argument(
        "--lifetime",
        type=_seconds,
        help="seconds the URL stays valid (default: [media] url_lifetime)",
    )
    media_sub.add_parser(
        "copy-to-s3",
        parents=[common, as_json],
        help="copy the local store's rows into S3 (idempotent, resumable)",
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
        status = COMMAND_TABLE[args.command](config, args)
        flush_logs()  # the writer thread's lines, then the prints sys.stdout holds
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print("alchemy: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"alchemy: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except IdentityInUseError as exc:
        print(f"alchemy: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (redis_errors.AuthenticationError, redis_errors.AuthorizationError) as exc:
        print(
            f"alchemy: config error: redis.url: RedisClient refused the credentials: {exc}",
            file=sys.stderr,
        )
        return EX_CONFIG
    except AlchemyError as exc:
        print(f"alchemy: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.command == "run":
            raise  # an unexpected error of the worker keeps its traceback (docs/operations.md)
        print(f"alchemy: {args.command} failed: {redact(_describe(exc))}", file=sys.stderr)
        return 1


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reader_gone() -> int:
    """Standard output's reader went away (``alchemy status | head -1``): stop quietly, with
    the status of a program killed by SIGPIPE."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EX_BROKEN_PIPE


def _load(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None) or os.environ.get("ALCHEMY_CONFIG")
    return load_config(Path(path) if path else DEFAULT_CONFIG_PATH, os.environ)


def _secret_values(config: Config) -> list[str]:
    """Every secret of the configuration, to be redacted wherever it would be written: API
    keys, the admin token, and the passwords, userinfo and secret parameters of its URLs."""
    values: list[str] = []
    for section in _sections(config):
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            text = value.reveal() if isinstance(value, Secret) else value
            if field.name.endswith("url") and isinstance(text, str):
                values += url_secrets(text)
            elif isinstance(value, Secret):
                values.append(text)
    return values


def _sections(config: Config) -> list[Any]:
    tables = [getattr(config, f.name) for f in dataclasses.fields(config)]
    return [t for t in tables if dataclasses.is_dataclass(t)]


def _run(config: Config, args: argparse.Namespace) -> int:
    refusal = offline_refusal(config)
    if refusal is not None:
        raise refusal  # the production guard: one line, exit 78
    configure_logging(config.log.level, config.log.format, buffer_lines=config.log.buffer_lines)
    names = [n.strip() for n in args.queues.split(",") if n.strip()] if args.queues else None
    extensions: list[Extension] = []
    # -- operations: metrics, events stream, job records, hooks; the HTTP listener -------
    from alchemy.ops.wiring import operations

    ops = operations(config, collect_metrics=bool(config.http.port))
    extensions.extend(ops.extensions)
    if config.http.port:
        from alchemy.http.server import HttpServer  # aiohttp only where it serves

        server = HttpServer(config, metrics=ops.metrics)
        server.bind()  # a port in use stops the start here, before any job is taken
        extensions.append(server)
    # ---------------------------------------------------------------------------------------
    # sd_notify (a no-op outside systemd); last, so READY=1 follows the others' start.
    check_watchdog(os.environ, os.getpid(), config.worker)
    extensions.append(SystemdNotifier.from_environ(os.environ))
    from alchemy.process import Worker

    keep_out_trio()
    worker = Worker(
        config,
        names,
        observers=ops.observers,
        extensions=extensions,
        paid_observer=ops.paid_observer,
    )
    return run_on_loop(worker.run(), config.worker.event_loop)


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """``asyncio.run(main)`` on the configured loop: uvloop's or the standard one."""
    if event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def _with_redis(config: Config, action: Callable[[RedisClient], Awaitable[int]]) -> int:
    async def go() -> int:
        async with RedisClients(config.redis) as clients:
            return await action(clients.shared)

    where = describe_target(config.redis)
    try:
        return asyncio.run(go())
    except BrokenPipeError:
        raise  # standard output, not Redis
    except (OSError, ConnectionError) as exc:
        print(f"alchemy: redis unreachable at {where}: {redact(str(exc))}", file=sys.stderr)
        return EX_UNAVAILABLE
    except Exception as exc:
        from alchemy.worker.connections import is_transient

        if is_transient(exc):
            print(f"alchemy: redis unreachable at {where}: {redact(str(exc))}", file=sys.stderr)
            return EX_UNAVAILABLE
        if isinstance(exc, redis_errors.ResponseError):
            print(f"alchemy: redis at {where} refused: {redact(str(exc))}", file=sys.stderr)
            return 1
        raise


def _status(config: Config, args: argparse.Namespace) -> int:
    async def action(redis: RedisClient) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        statuses = [await admin.status(q.name) for q in config.queues]
        if args.json:
            queues = [s.to_json() for s in statuses]
            providers = config.providers.in_use()
            print(json.dumps({"queues": queues, "providers": providers}, indent=2))
            return 0
        print(f"{'queue':<24}{'wait':>8}{'processing':>12}{'delayed':>9}{'dead':>8}  paused")
        for s in statuses:
            paused = (
                "no"
                if not s.paused
                else ("yes" if s.paused_for_ms < 0 else f"{s.paused_for_ms / 1000:.1f}s")
            )
            if s.held is not None:
                paused += _held_text(s.held)
            held_for_budget = sum(s.budget_held.values())
            if held_for_budget:
                paused += f"; {held_for_budget} job(s) held: budget_exhausted"
            print(f"{s.queue:<24}{s.wait:>8}{s.processing:>12}{s.delayed:>9}{s.dead:>8}  {paused}")
        print("\nprocesses:")
        seen = False
        for s in statuses:
            for c in s.consumers:
                seen = True
                state = "alive" if c.alive else "HEARTBEAT EXPIRED"
                pid = c.heartbeat.get("pid") if c.heartbeat else "?"
                age = c.heartbeat_age_s
                beat = "?" if age is None else f"{age:.1f}s"
                print(
                    f"  {c.identity:<40} {s.queue:<22} pid={pid} {state} beat={beat} ago"
                    f" processing={c.processing}{_offline_note(c.heartbeat)}"
                )
        if not seen:
            print("  none")
        print(f"\nproviders (this config): {_providers_line(config)}")
        return 0

    return _with_redis(config, action)


def _offline_note(heartbeat: Mapping[str, Any] | None) -> str:
    """`` OFFLINE (text, image)`` for a process whose heartbeat says the offline provider
    serves it, else nothing."""
    providers = (heartbeat or {}).get("providers")
    offline = providers.get("offline") if isinstance(providers, dict) else None
    return f" OFFLINE ({', '.join(map(str, offline))})" if offline else ""


def _providers_line(config: Config) -> str:
    p = config.providers
    line = f"text={p.text} image={p.image}"
    if p.offline_uses:
        line += f"  OFFLINE ({', '.join(p.offline_uses)}): no model is called, placeholders"
    return line


def _held_text(held: Mapping[str, Any]) -> str:
    dependency = str(held.get("dependency"))
    if dependency.startswith("provider:"):
        left = f"{int(held.get('left_ms', 0)) / 1000:.0f}s"
        return f"; held: {dependency} spend limit ({held.get('reason')}); resume, or {left}"
    return f"; held: {dependency} is down ({held.get('reason')})"


def _dead(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)

    async def action(redis: RedisClient) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        if args.dead_command == "list":
            entries = await admin.dead_list(args.queue, offset=args.offset, limit=args.limit)
            for entry in entries:
                if args.json:
                    print(json.dumps(entry.fields, ensure_ascii=False))
                else:
                    _print_dead(entry.fields)
            if not entries and not args.json:
                where = f" from offset {args.offset}" if args.offset else ""
                print(f"no dead jobs in {args.queue}{where}")
            return 0
        if args.dead_command == "retry":
            return await _dead_retry(admin, args)
        count = await admin.dead_purge(args.queue, None if args.all else args.id)
        data = {"queue": args.queue, "id": args.id, "purged": count}
        _report(args, f"purged {count} job(s) from {args.queue}", data)
        if count or args.all:
            return 0
        print(f"alchemy: no dead job with id {args.id!r} in {args.queue}", file=sys.stderr)
        return 1

    return _with_redis(config, action)


async def _dead_retry(admin: QueueAdmin, args: argparse.Namespace) -> int:
    queue = args.queue
    if args.all:
        result = await admin.dead_retry_all(queue)
    else:
        result = await admin.dead_retry(queue, args.id)
    text = f"retried {result.retried} job(s) from {queue}"
    if result.truncated:
        text += f"; skipped {result.truncated} truncated too_large entr"
        text += "y" if result.truncated == 1 else "ies"
    data = {
        "queue": queue,
        "id": args.id,
        "retried": result.retried,
        "skipped_truncated": result.truncated,
    }
    _report(args, text, data)
    if result.truncated and not args.json:
        print(f"  ({TRUNCATED_NOTE})")
    if result.retried or args.all:
        return 0
    if result.truncated:
        print(f"alchemy: dead job {args.id!r} in {queue}: {TRUNCATED_NOTE}", file=sys.stderr)
    else:
        print(f"alchemy: no dead job with id {args.id!r} in {queue}", file=sys.stderr)
    return 1


def _report(args: argparse.Namespace, text: str, data: Mapping[str, Any]) -> None:
    """One result: ``text`` for people, ``data`` as one JSON line with ``--json``."""
    print(json.dumps(data, ensure_ascii=False) if args.json else text)


def _print_dead(fields: Mapping[str, Any]) -> None:
    error = fields.get("error") or {}
    if not isinstance(error, Mapping):
        error = {"message": error}
    job = fields.get("job")
    if isinstance(job, str):
        shown = job if len(job) <= 200 else job[:200] + "…"
    elif isinstance(fields.get("job_b64"), str):
        shown = "<not UTF-8: base64 in job_b64 (--json)>"
    else:
        shown = "<none>"
    if fields.get("truncated") is True:
        size, digest = fields.get("job_bytes"), fields.get("job_sha256")
        shown += f"  [truncated: the first 64 KiB of {size} bytes, sha256 {digest}]"
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

    async def action(redis: RedisClient) -> int:
        try:
            job_id = await Producer(redis, prefix=config.redis.prefix).enqueue(
                args.queue, data, id=args.id
            )
        except ValueError as exc:
            print(f"alchemy: {exc}", file=sys.stderr)
            return 2
        _report(args, job_id, {"queue": args.queue, "id": job_id})
        return 0

    return _with_redis(config, action)


def _job(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)

    async def action(redis: RedisClient) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        record = await admin.record(args.queue, args.id)
        if record is None:
            print(
                f"alchemy: no record of job {args.id!r} in {args.queue}: waiting for its first"
                " attempt, expired, or never enqueued",
                file=sys.stderr,
            )
            return 1
        if args.json:
            print(json.dumps(record, indent=2, ensure_ascii=False))
            return 0
        _print_record(record)
        return 0

    return _with_redis(config, action)


RECORD_ORDER: Final = (
    "id",
    "queue",
    "state",
    "attempt",
    "worker",
    "updated_ms",
    "started_ms",
    "first_started_ms",
    "finished_ms",
    "duration_ms",
    "retry_at_ms",
    "reason",
    "last_error",
    "progress",
    "step",
    "result",
    "expires_in_s",
)  # the lines of `alchemy job`, in this order (a merged record's JSON has its own)
SKIPPED: Final = frozenset({"attempts", "attempts_dropped"})


def _print_record(record: Mapping[str, Any]) -> None:
    """A record as ``key value`` lines; its attempts one line each, oldest first."""
    runs = record.get("attempts") or []
    known = [key for key in RECORD_ORDER if key in record]
    for key in known + sorted(set(record) - set(RECORD_ORDER) - SKIPPED):
        value = record[key]
        if key.endswith("_ms") and key != "duration_ms" and isinstance(value, int):
            value = f"{value} ({_utc(value)})"
        elif key == "last_error" and isinstance(value, dict):
            value = f"{value.get('type')}: {value.get('message')}"
        elif key == "result" and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        print(f"{key:<17} {'-' if value is None else value}")
    dropped = record.get("attempts_dropped") or 0
    print(f"{'attempts':<17} {len(runs)}" + (f" (and {dropped} older)" if dropped else ""))
    for run in runs:
        print("  " + _run_line(run))


def _run_line(run: Mapping[str, Any]) -> str:
    """One run: attempt, outcome, start (UTC), duration, worker, error."""
    started = run.get("started_ms")
    duration = run.get("duration_ms")
    parts = [
        f"#{run.get('attempt')}",
        f"{run.get('outcome', '?'):<9}",
        _utc(started) if isinstance(started, int) else "-",
        f"{duration:g} ms" if isinstance(duration, int | float) else "-",
        str(run.get("worker", "-")),
    ]
    error = run.get("error")
    if isinstance(error, dict):
        parts.append(f"{error.get('type')}: {error.get('message')}")
    return "  ".join(parts)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _pause_resume(config: Config, args: argparse.Namespace) -> int:
    _known_queue(config, args.queue)

    async def action(redis: RedisClient) -> int:
        admin = QueueAdmin(redis, prefix=config.redis.prefix)
        pause = args.command == "pause"
        await (admin.pause(args.queue) if pause else admin.resume(args.queue))
        _report(args, f"{args.queue}: {args.command}d", {"queue": args.queue, "paused": pause})
        return 0

    return _with_redis(config, action)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    settings = _effective_config(config)
    problems = {
        q.name: handler.reason
        for q in config.queues
        if isinstance(handler := load_handler(q.handler), Unavailable)
    }
    failing = any(q.enabled and q.name in problems for q in config.queues)
    refusal = offline_refusal(config)
    status = EX_CONFIG if refusal else 1 if failing else 0
    if args.json:
        for name, table in settings["queues"].items():
            table["handler_error"] = problems.get(name)
        report = {"source": config.source, "valid": True, "handlers_ok": not failing}
        report |= {"providers": config.providers.in_use(), "refused": refusal and str(refusal)}
        print(json.dumps({**report, "config": settings}, indent=2, ensure_ascii=False))
        return status
    print(f"# {config.source}: valid")
    print(f"# providers in use: {_providers_line(config)}")
    if refusal is not None:
        print(f"# refused by the production guard: {refusal}")
    for section, table in settings.items():
        if section != "queues":
            for key, value in table.items():
                print(f"{section}.{key} = {_shown(value)}")
    for name, table in settings["queues"].items():
        state = f"UNAVAILABLE: {problems[name]}" if name in problems else "ok"
        keys = " ".join(f"{key}={_shown(value)}" for key, value in table.items())
        print(f"queues.{name}: {keys} ({state})")
    return status


def _effective_config(config: Config) -> dict[str, Any]:
    """Every setting after the environment overrides, as JSON values, secrets masked."""
    settings: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            settings[field.name] = _masked(value)
    settings["worker"]["identity"] = config.worker.identity
    settings["queues"] = {queue.name: _masked(queue, skip="name") for queue in config.queues}
    redacted: dict[str, Any] = _redacted(settings)
    return redacted


def _masked(section: Any, skip: str = "") -> dict[str, Any]:
    """A section's settings; every URL through :func:`mask_url`, every other secret ``***``
    (``""`` when unset)."""
    table: dict[str, Any] = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if field.name.endswith("url") and isinstance(value, Secret | str):
            value = mask_url(value.reveal() if isinstance(value, Secret) else value)
        elif isinstance(value, Secret):
            value = "***" if value else ""
        elif isinstance(value, tuple):
            value = list(value)
        if field.name != skip:
            table[field.name] = value
    return table


def _redacted(value: Any) -> Any:
    """``value`` with every registered secret that is still in one of its strings masked
    (a password pasted into another setting, say)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def _shown(value: Any) -> str:
    return value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)


def _with_database(config: Config, action: Callable[[str], Coroutine[Any, Any, T]]) -> T | int:
    """``action(url)``'s result, or 69 (EX_UNAVAILABLE) with one line when PostgreSQL
    cannot be reached."""
    from alchemy.db import is_transient_db_error

    url = config.database.url.reveal()
    try:
        return asyncio.run(action(url))
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        print(f"alchemy: database unreachable at {mask_url(url)}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def _migrate(config: Config, args: argparse.Namespace) -> int:
    from alchemy.db.migrate import migrate_url

    configure_logging(config.log.level, config.log.format, buffer_lines=config.log.buffer_lines)
    report = _with_database(config, migrate_url)
    if isinstance(report, int):
        return report
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in report.applied) or "none"
    print(f"schema version {report.current_version}; applied now: {names}")
    return 0


def _spend(config: Config, args: argparse.Namespace) -> int:
    import asyncpg

    from alchemy.paid.spend import Filters, Spend, render, spend
    from alchemy.providers.prices import shipped_prices

    filters = Filters(
        job_id=args.job,
        brand_id=args.brand,
        day=args.day,
        provider=args.provider,
        model=args.model,
        time_zone=config.budgets.time_zone,
        by=args.by,
    )

    async def read(url: str) -> Spend:
        conn = await asyncpg.connect(url)
        try:
            return await spend(conn, filters, shipped_prices())
        finally:
            await conn.close()

    report = _with_database(config, read)
    if isinstance(report, int):
        return report
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return 0


def _budget(config: Config, args: argparse.Namespace) -> int:
    from alchemy.cli_budget import budget_action, print_budget

    result = _with_database(config, lambda url: budget_action(config, args, url))
    if isinstance(result, int):
        return result
    print_budget(args, *result)
    return 0


def _media(config: Config, args: argparse.Namespace) -> int:
    from alchemy.cli_media import media_command

    return media_command(config, args, _with_database)


def _known_queue(config: Config, name: str) -> None:
    if not any(q.name == name for q in config.queues):
        raise ConfigError("queue", f"no queue named {name!r} in {config.source}")


COMMAND_TABLE: Final[dict[str, Callable[[Config, argparse.Namespace], int]]] = {
    "run": _run,
    "status": _status,
    "dead": _dead,
    "enqueue": _enqueue,
    "job": _job,
    "pause": _pause_resume,
    "resume": _pause_resume,
    "check-config": _check_config,
    "migrate": _migrate,
    "spend": _spend,
    "budget": _budget,
    "media": _media,
}
