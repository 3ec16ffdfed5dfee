"""``alchemy media url MEDIA_ID`` and ``alchemy media copy-to-s3``: the printing and exit
statuses around :mod:`alchemy.storage.commands`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from alchemy.config import Config
from alchemy.logs import configure_logging
from alchemy.storage.commands import (
    CopyReport,
    MediaLink,
    MediaNotFoundError,
    copy_to_s3,
    media_link,
)
from alchemy.storage.stores import open_stores

WithDatabase = Callable[[Config, Callable[[str], Coroutine[Any, Any, Any]]], Any]


def media_command(config: Config, args: argparse.Namespace, with_database: WithDatabase) -> int:
    # Logs (redacted) on standard error: standard output is the URL or the report.
    configure_logging(
        config.log.level,
        config.log.format,
        stream=sys.stderr.buffer,
        buffer_lines=config.log.buffer_lines,
    )
    if args.media_command == "url":
        return _url(config, args, with_database)
    return _copy(config, args, with_database)


async def _connect(url: str) -> Any:
    import asyncpg

    from alchemy.db import init_connection

    conn = await asyncpg.connect(url)
    await init_connection(conn)
    return conn


def _url(config: Config, args: argparse.Namespace, with_database: WithDatabase) -> int:
    async def read(url: str) -> MediaLink | str:
        conn = await _connect(url)
        try:
            async with open_stores(config, probe=False, sweep=False) as stores:
                return await media_link(conn, stores, args.media_id, args.lifetime)
        except MediaNotFoundError as exc:
            return str(exc)
        finally:
            await conn.close()

    link = with_database(config, read)
    if isinstance(link, int):
        return link
    if isinstance(link, str):
        print(f"alchemy: {link}", file=sys.stderr)
        return 1
    if args.json:
        data = {
            "media_id": str(link.media_id),
            "store": link.store,
            "storage_path": link.key,
            "url": link.url,
            "lifetime_s": link.lifetime,
        }
        print(json.dumps(data))
    else:
        print(link.url)
    return 0


def _copy(config: Config, args: argparse.Namespace, with_database: WithDatabase) -> int:
    def tell(media_id: str, outcome: str) -> None:
        if not args.json:
            print(f"{media_id}  {outcome}", flush=True)

    async def run(url: str) -> CopyReport:
        conn = await _connect(url)
        try:
            async with open_stores(config, sweep=False) as stores:
                return await copy_to_s3(conn, stores, tell)
        finally:
            await conn.close()

    report = with_database(config, run)
    if isinstance(report, int):
        return report
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(
            f"copied {report.copied}, already in the bucket {report.present},"
            f" missing locally {len(report.missing)}"
        )
    if report.missing:
        print(
            f"alchemy: {len(report.missing)} row(s) stay local: their file is missing or"
            " damaged (listed above)",
            file=sys.stderr,
        )
        return 1
    return 0
