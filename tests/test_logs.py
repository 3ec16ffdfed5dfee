"""The log format: one JSON object per line, a UTC timestamp, secrets masked, standard
library records routed through the same renderer, lines of one loop turn in one write."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from alchemy.logs import _UtcStamper, configure_logging, flush_logs, register_secrets


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        return super().write(data)


@pytest.fixture
def out() -> Iterator[CountingStream]:
    stream = CountingStream()
    configure_logging(level="info", fmt="json", stream=stream)
    yield stream
    register_secrets(())
    configure_logging(level="info", fmt="json")


def lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    flush_logs()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_event_is_one_json_line_with_a_utc_timestamp(out: CountingStream) -> None:
    before = time.time()
    structlog.get_logger().info("first", queue="q", n=1)
    structlog.get_logger().warning("second", note="two\nlines")
    after = time.time()
    first, second = lines(out)
    assert (first["event"], first["level"], first["queue"], first["n"]) == ("first", "info", "q", 1)
    assert (second["level"], second["note"]) == ("warning", "two\nlines")
    stamp = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 0.001 <= stamp.timestamp() <= after + 0.001


def test_the_stamper_matches_the_clock_across_seconds() -> None:
    stamper = _UtcStamper()
    for _ in range(3):
        event: dict[str, Any] = {}
        now = time.time()
        stamper(None, "info", event)
        stamp = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(stamp.timestamp() - now) < 0.01
        time.sleep(0.6)  # the cached date and time of day must move on with the second


def test_secrets_are_masked_in_every_field(out: CountingStream) -> None:
    register_secrets(["sk-very-secret-key"])
    structlog.get_logger().error(
        "provider_failed",
        error="401 for key sk-very-secret-key",
        detail=ValueError("sk-very-secret-key"),
    )
    logging.getLogger("some.library").warning("called with sk-very-secret-key")
    flush_logs()
    assert b"sk-very-secret-key" not in out.getvalue()
    event, library = lines(out)
    assert event["error"] == "401 for key ***"
    assert event["detail"] == "***"
    assert library["event"] == "called with ***"
    assert library["level"] == "warning"


async def test_lines_of_one_loop_turn_are_written_at_once(out: CountingStream) -> None:
    log = structlog.get_logger()
    for n in range(50):
        log.info("job_finished", n=n)
    assert out.writes == 0  # nothing written inside the turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert out.writes == 1
    assert [line["n"] for line in lines(out)] == list(range(50))
