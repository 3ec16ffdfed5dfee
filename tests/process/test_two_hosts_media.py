"""Media beyond one machine (issue 10, acceptance 2): two worker processes standing for two
hosts (their own identities, their own local directories and listeners, one S3 store on a
real SeaweedFS). The image host A makes is fetched by the URL its job returned and by a
fresh one asked of host B; a thumbnail job that runs on B, after A has stopped, is cut from
A's image."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from PIL import Image
from redis.asyncio import Redis

from alchemy.queue.admin import QueueAdmin
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, build_config_dict, to_toml, wait_exited, wait_for, wait_started
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.fakes.s3_server import SECRET_KEY
from tests.handlers.support import create_brand, queue_tables, wait_status, worker_sections
from tests.ports import free_ports

Q = "media-generation"
URL_SECRET = "shared-media-url-secret-0123456789"


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def record_of(redis: Redis, prefix: str, job_id: str) -> dict[str, Any]:
    admin = QueueAdmin(redis, prefix=prefix)

    async def completed() -> dict[str, Any] | None:
        record = await admin.record(Q, job_id)
        return record if record and record.get("state") == "completed" else None

    found: dict[str, Any] = await wait_for(completed, within=20, interval=0.05)
    return found


@pytest.mark.timeout(120)
async def test_media_made_on_one_host_is_fetched_and_cut_on_the_other(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
    s3_media: dict[str, Any],
) -> None:
    s3 = {k: v for k, v in s3_media.items() if k != "s3_secret_access_key"}  # from the env
    env = {"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "ALCHEMY_MEDIA_URL_SECRET": URL_SECRET}
    queues = {Q: queue_tables(timeout=30.0)[Q]}
    hosts: dict[str, dict[str, Any]] = {}
    for name, port in zip(("a", "b"), free_ports(2), strict=True):
        sections = worker_sections(fake_ai, database_url, tmp_path / f"media-{name}")
        sections["media"].update(s3)
        sections["http"] = {"port": port}
        hosts[name] = {"worker": {"name": f"w{name}", "host": f"host-{name}"}, **sections}

    brand_id = await create_brand(db)
    image = png_bytes(900, 600)
    fake_ai.script("images", Reply.image_b64(image))
    host_a = spawn_worker(queues, env=env, **hosts["a"])
    await wait_started(host_a)
    wait = QueueKeys(prefix, Q).wait
    await redis.lpush(
        wait, json.dumps({"id": "m-a", "brand_id": str(brand_id), "prompt": "a house"})
    )
    made = await wait_status(db, "media", "m-a", ("completed", "failed"), within=20)
    assert (made["status"], made["store"]) == ("completed", "s3"), made["error"]
    record = await record_of(redis, prefix, "m-a")
    assert record["worker"] == "host-a:wa"
    # The URL A's job returned: a presigned GET of the S3 object, the exact bytes.
    status, body = await download(record["result"]["url"])
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == made["sha256"] == hashlib.sha256(image).hexdigest()

    host_b = spawn_worker(queues, env=env, **hosts["b"])
    await wait_started(host_b)
    host_a.signal(signal.SIGTERM)
    assert await wait_exited(host_a, within=20) == 0
    # A fresh URL of A's image, asked of host B (its config, its CLI).
    fresh = await alchemy_on(tmp_path, hosts["b"], prefix, env, "media", "url", str(made["id"]))
    assert (await download(fresh))[1] == body

    job = {"id": "m-b", "brand_id": str(brand_id), "kind": "thumbnail"}
    await redis.lpush(wait, json.dumps({**job, "source_media_id": str(made["id"])}))
    cut = await wait_status(db, "media", "m-b", ("completed", "failed"), within=20)
    assert cut["status"] == "completed", cut["error"]
    cut_record = await record_of(redis, prefix, "m-b")
    assert cut_record["worker"] == "host-b:wb"
    status, thumb = await download(cut_record["result"]["url"])
    assert status == 200
    assert hashlib.sha256(thumb).hexdigest() == cut["sha256"]
    with Image.open(io.BytesIO(thumb)) as picture:
        assert picture.size == (256, 171)
    assert (cut["store"], cut["source_media_id"], cut["provider"]) == ("s3", made["id"], "local")
    assert fake_ai.count("images") == 1  # the thumbnail called nobody
    # Neither host kept anything locally; no secret in either host's log.
    for name, process in (("a", host_a), ("b", host_b)):
        local = await asyncio.to_thread(lambda n=name: list((tmp_path / f"media-{n}").rglob("*.*")))
        assert local == [], name
        text = await asyncio.to_thread(process.log_path.read_text)
        assert SECRET_KEY not in text
        assert URL_SECRET not in text


async def alchemy_on(
    tmp_path: Path, host: dict[str, Any], prefix: str, env: dict[str, str], *argv: str
) -> str:
    """``alchemy ARGV`` with a host's config; its standard output (it must succeed)."""
    path = tmp_path / "host-cli.toml"
    raw = build_config_dict(
        prefix, {}, host["worker"], **{k: v for k, v in host.items() if k != "worker"}
    )
    await asyncio.to_thread(path.write_text, to_toml(raw))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alchemy", "--config", str(path), *argv],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
