"""media-generation with ``[media] store = "s3"`` on a real S3 server (SeaweedFS), and the
``alchemy media`` commands: a fresh URL of a row, the copy of a local store into S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from PIL import Image
from redis.asyncio import Redis

from tests.conftest import REPO, build_config_dict, queue_table, to_toml
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.fakes.s3_server import SECRET_KEY, LocalS3
from tests.handlers.support import create_brand, push, wait_status

Q = "media-generation"


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def bucket_keys(s3_server: LocalS3, bucket: str) -> list[str]:
    async with s3_server.client() as client:
        listed = await client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def test_media_jobs_store_their_objects_in_s3_and_return_a_presigned_url(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
    s3_media: dict[str, Any],
    s3_server: LocalS3,
) -> None:
    brand_id = await create_brand(db)
    image = png_bytes(800, 400)
    fake_ai.script("images", Reply.image_b64(image))
    run_worker(make_app_config(media=s3_media))
    await push(redis, prefix, Q, "m-s3", brand_id=str(brand_id), prompt="a roof")
    row = await wait_status(db, "media", "m-s3", ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    digest = hashlib.sha256(image).hexdigest()
    assert (row["store"], row["storage_path"]) == ("s3", f"{digest[:2]}/{digest}.png")
    await push(
        redis, prefix, Q, "m-s3-cut", brand_id=str(brand_id), kind="thumbnail",
        source_media_id=str(row["id"]),
    )  # fmt: skip
    cut = await wait_status(db, "media", "m-s3-cut", ("completed", "failed"))
    assert cut["status"] == "completed", cut["error"]
    assert (cut["store"], cut["width"], cut["height"]) == ("s3", 256, 128)
    assert cut["prompt"] == "a roof"  # no prompt given: the source's
    assert await bucket_keys(s3_server, s3_media["s3_bucket"]) == sorted(
        [f"media/{row['storage_path']}", f"media/{cut['storage_path']}"]
    )
    local = await asyncio.to_thread(lambda: list(media_dir.rglob("*.png")))
    assert local == []  # nothing local
    assert fake_ai.count("images") == 1


async def alchemy(raw: dict[str, Any], tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    """``python -m alchemy`` with ``raw`` as its config file: exit status, stdout, stderr."""
    path = tmp_path / "cli.toml"
    await asyncio.to_thread(path.write_text, to_toml(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alchemy", "--config", str(path), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def cli_config(prefix: str, database_url: str, media: dict[str, Any]) -> dict[str, Any]:
    return build_config_dict(prefix, queue_table("q"), database={"url": database_url}, media=media)


async def insert_local_row(
    db: asyncpg.Pool, brand_id: Any, media_dir: Path, n: int
) -> tuple[Any, bytes]:
    """A completed media row as a release before stores had names wrote it (no store)."""
    data = png_bytes(10 + n, 10)
    digest = hashlib.sha256(data).hexdigest()
    key = f"{digest[:2]}/{digest}.png"
    (media_dir / digest[:2]).mkdir(parents=True, exist_ok=True)
    (media_dir / key).write_bytes(data)
    media_id = await db.fetchval(
        "INSERT INTO media (brand_id, kind, prompt, job_id, status, sha256, storage_path,"
        " bytes, mime_type) VALUES ($1, 'image', 'old', $2, 'completed', $3, $4, $5,"
        " 'image/png') RETURNING id",
        brand_id,
        f"old-{n}",
        digest,
        key,
        len(data),
    )
    return media_id, data


async def test_media_url_prints_a_fresh_url_for_old_local_and_new_s3_rows(
    db: asyncpg.Pool,
    prefix: str,
    database_url: str,
    tmp_path: Path,
    s3_media: dict[str, Any],
) -> None:
    media_dir = tmp_path / "media"
    brand_id = await create_brand(db)
    media_id, _ = await insert_local_row(db, brand_id, media_dir, 1)
    assert await db.fetchval("SELECT store FROM media WHERE id = $1", media_id) == "local"
    local_only = {"directory": str(media_dir)}
    status, out, err = await alchemy(
        cli_config(prefix, database_url, local_only), tmp_path, "media", "url", str(media_id)
    )
    assert status == 78, (out, err)
    assert "media.url_secret" in err
    linked = {**local_only, "url_secret": "a-url-secret-0123456789", "public_url": "http://h:1"}
    status, out, err = await alchemy(
        cli_config(prefix, database_url, linked), tmp_path, "media", "url", str(media_id), "--json"
    )
    assert status == 0, err
    shown = json.loads(out)
    assert shown["url"].startswith("http://h:1/media/")
    assert (shown["store"], shown["lifetime_s"]) == ("local", 3600.0)
    # On an S3-configured host the same old row still gets a (listener) link.
    both = {**linked, **s3_media}
    status, out, err = await alchemy(
        cli_config(prefix, database_url, both), tmp_path, "media", "url", str(media_id)
    )
    assert (status, out.startswith("http://h:1/media/")) == (0, True), err
    status, out, err = await alchemy(
        cli_config(prefix, database_url, both),
        tmp_path,
        "media",
        "url",
        "00000000-0000-0000-0000-000000000000",
    )
    assert status == 1
    assert "no such row" in err
    assert SECRET_KEY not in out + err


async def test_copy_to_s3_is_idempotent_and_resumable(
    db: asyncpg.Pool,
    prefix: str,
    database_url: str,
    tmp_path: Path,
    s3_media: dict[str, Any],
    s3_server: LocalS3,
) -> None:
    media_dir = tmp_path / "media"
    brand_id = await create_brand(db)
    rows = [await insert_local_row(db, brand_id, media_dir, n) for n in range(3)]
    # One file is gone: its row stays local and the run says so (exit 1).
    gone_id = rows[2][0]
    gone_path = media_dir / await db.fetchval(
        "SELECT storage_path FROM media WHERE id = $1", gone_id
    )
    gone_path.rename(tmp_path / "aside.png")
    config = cli_config(prefix, database_url, {"directory": str(media_dir), **s3_media})
    status, out, err = await alchemy(config, tmp_path, "media", "copy-to-s3")
    assert status == 1, err
    assert "copied 2, already in the bucket 0, missing locally 1" in out
    assert f"{gone_id}  local file" in out
    stores = dict(await db.fetch("SELECT id, store FROM media WHERE job_id LIKE 'old-%'"))
    assert [stores[m] for m, _ in rows] == ["s3", "s3", "local"]
    # Resumed once the file is back: only that row is copied.
    (tmp_path / "aside.png").rename(gone_path)
    status, out, err = await alchemy(config, tmp_path, "media", "copy-to-s3", "--json")
    assert status == 0, err
    assert json.loads(out) == {"copied": 1, "already_there": 0, "missing": []}
    # A run killed between the put and the row's update: the object is there, the row moves.
    await db.execute("UPDATE media SET store = 'local' WHERE id = $1", rows[0][0])
    status, out, _ = await alchemy(config, tmp_path, "media", "copy-to-s3", "--json")
    assert json.loads(out) == {"copied": 0, "already_there": 1, "missing": []}
    # Nothing left: nothing done.
    status, out, _ = await alchemy(config, tmp_path, "media", "copy-to-s3", "--json")
    assert (status, json.loads(out)) == (0, {"copied": 0, "already_there": 0, "missing": []})
    keys = await bucket_keys(s3_server, s3_media["s3_bucket"])
    assert len(keys) == 3
    for media_id, data in rows:
        status, url, err = await alchemy(config, tmp_path, "media", "url", str(media_id))
        assert status == 0, err
        got = await download(url.strip())
        assert got == (200, data)
    with Image.open(gone_path) as still_local:  # local files are never deleted
        assert still_local.size == (12, 10)


async def test_an_s3_host_cuts_a_thumbnail_from_an_old_local_image(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
    s3_media: dict[str, Any],
) -> None:
    brand_id = await create_brand(db)
    old_id, _ = await insert_local_row(db, brand_id, media_dir, 300)  # 310x10, local
    run_worker(make_app_config(media=s3_media))
    job = {"brand_id": str(brand_id), "kind": "thumbnail", "source_media_id": str(old_id)}
    await push(redis, prefix, Q, "m-old-cut", **job)
    cut = await wait_status(db, "media", "m-old-cut", ("completed", "failed"))
    assert cut["status"] == "completed", cut["error"]
    assert (cut["store"], cut["width"], cut["height"]) == ("s3", 256, 8)
    assert fake_ai.count("images") == 0
