"""docs/schema.md's job examples run: every JSON job under "Job data" is pushed (its
placeholder ids, written with "…", replaced by real rows) to a worker running the real
handlers on the fake AI, and completes: none is dead-lettered. And docs/operations.md's
media examples: the S3 configuration loads, the documented commands exist."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.cli import build_parser
from alchemy.config import load_config
from alchemy.ops.records import JobRecords
from alchemy.queue.admin import QueueAdmin
from tests.conftest import REPO, wait_for
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.fakes.fixtures import database_url, db, fake_ai, sdk_env
from tests.handlers.conftest import make_app_config, media_dir
from tests.handlers.support import (
    CONTENT_REPLY,
    create_brand,
    create_idea,
    create_request,
    dead_entries,
    push,
)

__all__ = ["database_url", "db", "fake_ai", "make_app_config", "media_dir", "sdk_env"]
SCHEMA = REPO / "docs" / "schema.md"
OPERATIONS = REPO / "docs" / "operations.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
RESEARCH = {
    "keywords": [
        {
            "keyword": "heat pumps",
            "monthly_searches": 1000,
            "difficulty": 60,
            "relevance": 90,
            "intent": "informational",
        }
    ],
    "trends": [{"topic": "grants", "momentum": 60, "relevance": 80, "evidence": "news"}],
    "competitors": [
        {"name": "A", "url": "https://a.example", "strength": 80, "angle": "x", "gap": "y"}
    ],
    "saturation": 50,
}


def job_examples() -> list[tuple[str, dict[str, Any]]]:
    """(queue, job) for each JSON example under "## Job data", in the page's order."""
    text = SCHEMA.read_text()
    section = text[text.index("## Job data") : text.index("### Progress and results")]
    queue = ""
    found: list[tuple[str, dict[str, Any]]] = []
    for match in re.finditer(r"^\*\*([a-z-]+)\*\*|^```json\n(.*?)^```$", section, re.M | re.S):
        if match.group(1):
            queue = match.group(1)
            continue
        body = match.group(2)
        try:
            jobs = [json.loads(body)]
        except json.JSONDecodeError:
            jobs = [json.loads(line) for line in body.splitlines() if line.strip()]
        found += [(queue, job) for job in jobs]
    return found


def test_the_examples_are_found() -> None:
    ids = [job["id"] for _, job in job_examples()]
    assert ids == ["cq-42", "r-7", "m-3", "m-4", "m-5"]


async def completed(redis: Redis, prefix: str, queue: str, job_id: str) -> dict[str, Any]:
    admin = QueueAdmin(redis, prefix=prefix)

    async def done() -> dict[str, Any] | None:
        dead = await dead_entries(redis, prefix, queue)
        assert not dead, f"{job_id} was dead-lettered: {dead}"
        record = await admin.record(queue, job_id)
        return record if record and record.get("state") == "completed" else None

    found: dict[str, Any] = await wait_for(done, within=20, interval=0.05)
    return found


@pytest.mark.timeout(90)
async def test_every_job_example_in_schema_md_completes(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    tmp_path: Path,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    row_id = await create_request(db, brand_id, idea_id)
    fake_ai.script("chat", Reply.good(CONTENT_REPLY))
    fake_ai.script("messages", Reply.good(RESEARCH))
    fake_ai.script("images", *(Reply.image_b64(png_bytes(1536, 1024)) for _ in range(3)))
    records = JobRecords(prefix)
    run_worker(make_app_config(), observers=[records], extensions=[records])
    real: dict[str, str] = {
        "content_queue_id": str(row_id),
        "idea_id": str(idea_id),
        "brand_id": str(brand_id),
    }
    results: dict[str, dict[str, Any]] = {}
    for queue, example in job_examples():
        job = dict(example)
        for key, value in example.items():
            if isinstance(value, str) and "…" in value:
                job[key] = real[key]  # a placeholder this test has a row for by now
        await push(redis, prefix, queue, job.pop("id"), **job)
        record = await completed(redis, prefix, queue, example["id"])
        results[example["id"]] = record["result"]
        if example["id"] == "cq-42":
            # Its media follow-up (`cq-42:media`) runs too; m-4 is a thumbnail of its content.
            media = await completed(redis, prefix, "media-generation", "cq-42:media")
            assert media["result"]["width"] == 1536
            real["content_id"] = record["result"]["content_id"]
        if example["id"] == "m-3":
            real["source_media_id"] = record["result"]["media_id"]
    assert results["m-4"]["width"] == 256  # a thumbnail of an API image: thumbnail_size
    assert results["m-5"]["width"] == 256  # cut from m-3's image, no prompt, no API call
    assert fake_ai.count("images") == 3  # cq-42:media, m-3, m-4
    assert results["r-7"]["research_type"] == "full"


def block(page: Path, marker: str) -> str:
    blocks = [body for _, body in FENCE.findall(page.read_text()) if body.startswith(marker)]
    assert len(blocks) == 1, marker
    return blocks[0]


def test_the_s3_configuration_example_loads(tmp_path: Path) -> None:
    text = block(OPERATIONS, "# media-example: s3")
    path = tmp_path / "c.toml"
    path.write_text(text + '\n[queues.q]\nhandler = "alchemy.handlers.noop:handle"\n')
    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"}
    media = load_config(path, env).media
    assert (media.store, media.s3_bucket, media.s3_prefix) == ("s3", "alchemy-media", "media/")
    assert tomllib.loads(text)["media"]["s3_path_style"] is True


def test_the_documented_media_commands_exist() -> None:
    lines = block(OPERATIONS, "# media-example: commands").splitlines()
    commands = [shlex.split(line[2:]) for line in lines if line.startswith("$ alchemy ")]
    assert len(commands) == 3
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        assert args.command == "media", argv
