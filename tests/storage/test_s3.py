"""The S3 store against a real S3-compatible server (SeaweedFS, ``s3_server``): objects by
sha256 under the prefix, presigned GETs that give the exact bytes and stop working after
their lifetime, and credentials checked when a process starts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alchemy.config import parse_config
from alchemy.errors import ConfigError
from alchemy.storage import ObjectMissingError, StoreError
from alchemy.storage.stores import open_stores
from tests.conftest import REPO, build_config_dict, queue_table, to_toml
from tests.fakes.ai_server import png_bytes
from tests.fakes.s3_server import SECRET_KEY, LocalS3


def media_config(prefix: str, tmp_path: Path, media: dict[str, Any]) -> Any:
    raw = build_config_dict(
        prefix, queue_table("q"), media={"directory": str(tmp_path / "media"), **media}
    )
    return parse_config(raw)


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_objects_are_put_by_sha256_and_presigned_urls_give_the_exact_bytes(
    prefix: str, tmp_path: Path, s3_media: dict[str, Any], s3_server: LocalS3
) -> None:
    config = media_config(prefix, tmp_path, s3_media)
    data = png_bytes(64, 48)
    digest = hashlib.sha256(data).hexdigest()
    async with open_stores(config) as stores:
        stored = await stores.put(data, "image/png")
        assert (stored.store, stored.path, stored.sha256) == (
            "s3",
            f"{digest[:2]}/{digest}.png",
            digest,
        )
        assert await stores.put(data, "image/png") == stored  # a retry: the same key
        assert await stores.get("s3", stored.path) == data
        assert await stores.s3.exists(stored.path, len(data))  # type: ignore[union-attr]
        url = await stores.url("s3", stored.path, lifetime=2)
        assert url is not None
        status, body = await download(url)
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == digest
        issued = time.monotonic()
        # SigV4 counts whole seconds from the signing time: past 2 s (+1 of rounding) it is
        # refused.
        await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - issued)))
        status, body = await download(url)
        assert status == 403, body
        assert b"expired" in body
        fresh = await stores.url("s3", stored.path)  # the configured lifetime (3600 s)
        assert "X-Amz-Expires=3600" in (fresh or "")
        assert (await download(fresh or ""))[0] == 200
        await stores.s3.delete(stored.path)  # type: ignore[union-attr]
        with pytest.raises(ObjectMissingError):
            await stores.get("s3", stored.path)
    async with s3_server.client() as client:
        listed = await client.list_objects_v2(Bucket=s3_media["s3_bucket"])
    assert listed.get("KeyCount", 0) == 0


async def test_the_key_prefix_is_where_objects_go(
    prefix: str, tmp_path: Path, s3_media: dict[str, Any], s3_server: LocalS3
) -> None:
    config = media_config(prefix, tmp_path, {**s3_media, "s3_prefix": "brand/assets/"})
    async with open_stores(config) as stores:
        stored = await stores.put(b"not an image", "application/x-unknown")
    async with s3_server.client() as client:
        listed = await client.list_objects_v2(Bucket=s3_media["s3_bucket"])
    assert [o["Key"] for o in listed["Contents"]] == [f"brand/assets/{stored.path}"]
    assert stored.path.endswith(".bin")


async def test_a_wrong_secret_or_bucket_is_refused_at_startup(
    prefix: str, tmp_path: Path, s3_media: dict[str, Any]
) -> None:
    wrong = media_config(prefix, tmp_path, {**s3_media, "s3_secret_access_key": "not-the-secret"})
    with pytest.raises(ConfigError) as refused:
        async with open_stores(wrong):
            pass
    assert refused.value.key == "media.s3_secret_access_key"
    assert "secret access key is wrong" in str(refused.value)
    assert "SignatureDoesNotMatch" in str(refused.value)
    assert "not-the-secret" not in str(refused.value)

    unknown = media_config(prefix, tmp_path, {**s3_media, "s3_access_key_id": "NOSUCHKEY"})
    with pytest.raises(ConfigError, match="does not know this access key id"):
        async with open_stores(unknown):
            pass
    missing = media_config(prefix, tmp_path, {**s3_media, "s3_bucket": "no-such-bucket-here"})
    with pytest.raises(ConfigError, match="no such bucket"):
        async with open_stores(missing):
            pass


async def test_a_worker_with_a_wrong_secret_exits_78_with_one_line(
    prefix: str, tmp_path: Path, s3_media: dict[str, Any]
) -> None:
    """``alchemy run`` with the secret in the environment, as in production."""
    media = {k: v for k, v in s3_media.items() if k != "s3_secret_access_key"}
    raw = build_config_dict(
        prefix, queue_table("q"), media={"directory": str(tmp_path / "m"), **media}
    )
    path = tmp_path / "worker.toml"
    path.write_text(to_toml(raw))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alchemy", "--config", str(path), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("alchemy: config error: media.s3_secret_access_key: ")
    assert "secret access key is wrong" in last
    assert "wrong-secret-0123456789" not in done.stderr + done.stdout
    assert SECRET_KEY not in done.stderr + done.stdout


async def test_back_on_local_the_buckets_rows_are_still_read(
    prefix: str, tmp_path: Path, s3_media: dict[str, Any]
) -> None:
    async with open_stores(media_config(prefix, tmp_path, s3_media)) as stores:
        stored = await stores.put(png_bytes(5, 5), "image/png")
    local = media_config(prefix, tmp_path, {**s3_media, "store": "local"})
    async with open_stores(local) as stores:
        assert stores.primary is stores.local  # new media goes to the directory again
        assert await stores.get("s3", stored.path) == png_bytes(5, 5)
        assert (await stores.put(png_bytes(6, 6), "image/png")).store == "local"
    without_s3 = media_config(prefix, tmp_path, {})
    async with open_stores(without_s3) as stores:
        with pytest.raises(StoreError, match="'s3' is not configured"):
            await stores.get("s3", stored.path)
