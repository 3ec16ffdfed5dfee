"""media-generation end to end: files in the media store named by sha256, media rows,
both image request shapes, thumbnails, refusals and idempotency."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import asyncpg
from PIL import Image
from redis.asyncio import Redis

from tests.conftest import plant_dying_job, wait_for
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.handlers.support import create_brand, push, wait_dead, wait_status

Q = "media-generation"


async def test_brand_image_from_a_gpt_image_model(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
) -> None:
    brand_id = await create_brand(db)
    image = png_bytes(40, 30)
    fake_ai.script("images", Reply.image_b64(image))
    run_worker(make_app_config(providers={"image_quality": "medium"}))
    await push(redis, prefix, Q, "m-1", brand_id=str(brand_id), prompt="a warm living room")
    row = await wait_status(db, "media", "m-1", ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    digest = hashlib.sha256(image).hexdigest()
    assert row["sha256"] == digest
    assert row["storage_path"] == f"{digest[:2]}/{digest}.png"
    assert (media_dir / row["storage_path"]).read_bytes() == image
    leftovers = await asyncio.to_thread(lambda: list(media_dir.rglob("*.part")))
    assert not leftovers  # nothing half-written left behind
    assert (row["brand_id"], row["content_id"], row["kind"]) == (brand_id, None, "image")
    assert (row["provider"], row["model"], row["size"], row["quality"]) == (
        "openai",
        "gpt-image-1.5",
        "1024x1024",
        "medium",
    )
    assert (row["mime_type"], row["bytes"], row["width"], row["height"]) == (
        "image/png",
        len(image),
        40,
        30,
    )
    assert row["prompt"] == "a warm living room"
    assert row["revised_prompt"] is None
    [body] = fake_ai.bodies("images")
    assert body == {
        "model": "gpt-image-1.5",
        "prompt": "a warm living room",
        "n": 1,
        "size": "1024x1024",
        "quality": "medium",
    }


async def test_dall_e_3_url_reply_is_downloaded_and_kept_with_its_revised_prompt(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
) -> None:
    brand_id = await create_brand(db)
    image = png_bytes(16, 16, (200, 10, 10))
    fake_ai.script("images", Reply.image_url(image))
    config = make_app_config(
        providers={
            "image_model": "dall-e-3",
            "image_size": "1792x1024",
            "image_quality": "hd",
            "image_style": "natural",
        }
    )
    run_worker(config)
    await push(redis, prefix, Q, "m-url", brand_id=str(brand_id), prompt="a lighthouse")
    row = await wait_status(db, "media", "m-url", ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    assert row["revised_prompt"] == "A revised version of: a lighthouse"
    assert (row["model"], row["size"], row["quality"]) == ("dall-e-3", "1792x1024", "hd")
    assert (media_dir / row["storage_path"]).read_bytes() == image
    assert fake_ai.downloads == 1
    [body] = fake_ai.bodies("images")
    assert (body["style"], body["quality"]) == ("natural", "hd")


async def test_content_policy_refusal_fails_the_media_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    fake_ai.script(
        "images",
        Reply.error(
            400,
            "invalid_request_error",
            "Your request was rejected as a result of our safety system.",
            code="moderation_blocked",
        ),
    )
    run_worker(make_app_config())
    await push(redis, prefix, Q, "m-no", brand_id=str(brand_id), prompt="something bad")
    row = await wait_status(db, "media", "m-no", ("failed",))
    assert row["error"].startswith("refused by the content policy: openai 400")
    assert row["error_detail"] == {"type": "ContentPolicyError"}
    assert row["sha256"] is None
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "permanent_error"
    assert fake_ai.count("images") == 1


async def test_thumbnails_generated_small_or_cut_from_an_image(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
) -> None:
    brand_id = await create_brand(db)
    fake_ai.script(
        "images", Reply.image_b64(png_bytes(600, 300)), Reply.image_b64(png_bytes(1024, 1024))
    )
    run_worker(make_app_config(providers={"image_size": "1536x1024"}))
    await push(redis, prefix, Q, "m-big", brand_id=str(brand_id), prompt="a field")
    source = await wait_status(db, "media", "m-big", ("completed",))

    await push(
        redis,
        prefix,
        Q,
        "m-cut",
        brand_id=str(brand_id),
        prompt="a field",
        kind="thumbnail",
        source_media_id=str(source["id"]),
    )
    cut = await wait_status(db, "media", "m-cut", ("completed", "failed"))
    assert cut["status"] == "completed", cut["error"]
    assert (cut["kind"], cut["source_media_id"], cut["provider"]) == (
        "thumbnail",
        source["id"],
        "local",
    )
    assert (cut["width"], cut["height"], cut["size"]) == (256, 128, "256x128")
    with Image.open(media_dir / cut["storage_path"]) as image:
        assert image.size == (256, 128)
    assert fake_ai.count("images") == 1  # cut locally, no API call

    await push(redis, prefix, Q, "m-small", brand_id=str(brand_id), prompt="x", kind="thumbnail")
    small = await wait_status(db, "media", "m-small", ("completed", "failed"))
    assert small["status"] == "completed", small["error"]
    body = fake_ai.bodies("images")[1]
    assert (body["size"], body["quality"]) == ("1024x1024", "low")  # smallest, cheapest
    # ...and cut down here to [media] thumbnail_size (256) on its longest edge.
    assert (small["width"], small["height"], small["size"]) == (256, 256, "256x256")
    assert (small["provider"], small["model"]) == ("openai", "gpt-image-1.5")
    with Image.open(media_dir / small["storage_path"]) as image:
        assert image.size == (256, 256)


async def test_a_retried_media_job_calls_nobody_and_keeps_one_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "m-once", brand_id=str(brand_id), prompt="one")
    await wait_status(db, "media", "m-once", ("completed",))
    await push(redis, prefix, Q, "m-once", brand_id=str(brand_id), prompt="one")
    await push(redis, prefix, Q, "m-two", brand_id=str(brand_id), prompt="two")
    await wait_status(db, "media", "m-two", ("completed",))
    assert fake_ai.count("images") == 2
    assert await db.fetchval("SELECT count(*) FROM media WHERE job_id = 'm-once'") == 1


async def test_bad_media_jobs_are_permanent(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "m-none", kind="image")
    await push(redis, prefix, Q, "m-noprompt", brand_id=str(brand_id))
    await push(redis, prefix, Q, "m-gone", content_id="00000000-0000-0000-0000-000000000001")
    await push(redis, prefix, Q, "m-size", brand_id=str(brand_id), prompt="x", size="1792x1024")
    entries = await wait_dead(redis, prefix, Q, count=4)
    errors = {e["id"]: e["error"]["message"] for e in entries}
    assert "'content_id' or 'brand_id'" in errors["m-none"]
    assert "needs a 'prompt' for a brand image (or, for a thumbnail" in errors["m-noprompt"]
    assert "not found" in errors["m-gone"]
    assert "not valid for gpt-image-1.5" in errors["m-size"]
    row = await wait_status(db, "media", "m-size", ("failed",))
    assert "not valid for gpt-image-1.5" in row["error"]
    assert fake_ai.calls == []


async def test_a_media_job_whose_processes_keep_dying_fails_its_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    await db.execute(
        "INSERT INTO media (brand_id, kind, prompt, job_id, status)"
        " VALUES ($1, 'image', 'a heat pump in snow', 'media-killer', 'processing')",
        brand_id,
    )
    config = make_app_config()
    job = {"id": "media-killer", "brand_id": str(brand_id), "prompt": "a heat pump"}
    await plant_dying_job(redis, config, Q, job, attempt=2)
    run_worker(config)
    row = await wait_status(db, "media", "media-killer", ("completed", "failed"))
    assert row["status"] == "failed"
    assert row["error_detail"] == {"type": "ProcessDied", "reason": "poison", "attempt": 2}
    assert "died" in row["error"]
    assert [e["reason"] for e in await wait_dead(redis, prefix, Q)] == ["poison"]
    assert fake_ai.count("images") == 0


async def test_a_thumbnail_of_an_api_image_is_thumbnail_size_on_its_longest_edge(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
) -> None:
    """Acceptance 5 of issue 10, with a wide image and a size of its own."""
    brand_id = await create_brand(db)
    api_image = png_bytes(1536, 1024)
    fake_ai.script("images", Reply.image_b64(api_image))
    run_worker(make_app_config(media={"thumbnail_size": 120}))
    await push(redis, prefix, Q, "m-thumb", brand_id=str(brand_id), prompt="x", kind="thumbnail")
    row = await wait_status(db, "media", "m-thumb", ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    assert (row["width"], row["height"], row["size"], row["mime_type"]) == (
        120,
        80,
        "120x80",
        "image/png",
    )
    with Image.open(media_dir / row["storage_path"]) as image:
        assert image.size == (120, 80)
    # The API's full image is kept too (the ledger's reply, for a retry), under its own name.
    original = media_dir / f"{hashlib.sha256(api_image).hexdigest()[:2]}"
    assert any(original.iterdir())
    assert row["sha256"] != hashlib.sha256(api_image).hexdigest()


async def test_an_image_the_media_store_refuses_is_kept_and_stored_by_the_retry_unpaid(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    media_dir: Path,
) -> None:
    """A real write error: the image's shard directory is a file, so the local store
    cannot write it. The paid bytes wait in Redis; once the store takes writes again, a
    retry stores them without a second call."""
    brand_id = await create_brand(db)
    image = png_bytes(48, 32)
    digest = hashlib.sha256(image).hexdigest()
    fake_ai.script("images", Reply.image_b64(image), Reply.image_b64(image))
    blocker = _file_in_place_of(media_dir / digest[:2])
    run_worker(make_app_config(queues={"max_attempts": 30, "backoff_max": 0.2}))
    await push(redis, prefix, Q, "m-refused", brand_id=str(brand_id), prompt="a boiler")
    kept = f"{prefix}:paid:{{media:m-refused}}:images"
    assert await wait_for(lambda: redis.hget(kept, digest), within=15) == image
    await asyncio.sleep(0.5)  # retries that find the store still refusing
    assert await db.fetchval("SELECT status FROM media WHERE job_id = 'm-refused'") != "completed"
    blocker.unlink()
    row = await wait_status(db, "media", "m-refused", ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    assert fake_ai.count("images") == 1  # paid once
    assert row["sha256"] == digest
    assert (media_dir / row["storage_path"]).read_bytes() == image
    calls = await db.fetch("SELECT outcome FROM provider_calls WHERE work_key = 'media:m-refused'")
    assert [c["outcome"] for c in calls] == ["ok"]


def _file_in_place_of(directory: Path) -> Path:
    """A file where the store would make ``directory``: its writes there fail."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.write_bytes(b"not a directory")
    return directory
