"""The local media store: sha256 names, atomic writes, the same bytes twice, partial files
of a killed writer swept at the next start, downscaling."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.storage import ObjectMissingError, StoreError, object_key
from alchemy.storage import local as local_module
from alchemy.storage.images import downscale_sync
from alchemy.storage.local import LocalStore
from tests.conftest import REPO, build_config_dict, queue_table, wait_for
from tests.fakes.ai_server import png_bytes


def test_files_are_named_by_sha256_under_a_two_letter_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = png_bytes(4, 4)
    digest = hashlib.sha256(data).hexdigest()
    stored = store.put_sync(data, "image/png")
    assert stored.path == object_key(digest, "image/png") == f"{digest[:2]}/{digest}.png"
    assert (stored.store, stored.sha256, stored.bytes) == ("local", digest, len(data))
    assert (tmp_path / stored.path).read_bytes() == data
    again = store.put_sync(data, "image/png")
    assert again == stored
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [f"{digest}.png"]


async def test_get_delete_and_what_is_not_a_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    stored = await store.put(png_bytes(3, 3), "image/png")
    assert await store.get(stored.path) == png_bytes(3, 3)
    assert await store.url(stored.path, 60) is None  # no signer: no URL
    await store.delete(stored.path)
    await store.delete(stored.path)  # twice: no error
    with pytest.raises(ObjectMissingError):
        await store.get(stored.path)
    for bad in ("../etc/passwd", "/etc/passwd", "ab/../../x.png", f"{stored.path}/x"):
        with pytest.raises(ObjectMissingError, match="not a media key"):
            await store.get(bad)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(local_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        LocalStore(tmp_path).put_sync(b"\x89PNG\r\n\x1a\nrest", "image/png")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_a_write_error_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write"):
        await LocalStore(tmp_path / "file").put(b"x", "image/png")


# A writer killed (SIGKILL) after half of its bytes are in the temporary file.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from typing import Any
from alchemy.storage import local
def die_after_half(fd):
    os.kill(os.getpid(), signal.SIGKILL)
local.os.fsync = die_after_half
local.LocalStore(Path(sys.argv[1])).put_sync(b"x" * 1_000_000, "image/png")
"""


async def test_a_writer_killed_midway_leaves_nothing_after_the_next_start(
    tmp_path: Path, prefix: str, redis: Redis, run_worker: Any
) -> None:
    media = tmp_path / "media"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", KILLED_WRITER, str(media)],
        env=env,
        timeout=30,
        check=False,
    )
    assert killed.returncode == -9
    [partial] = await asyncio.to_thread(lambda: list(media.rglob("*.part")))
    assert partial.name.startswith(".incoming-")
    # The next worker that starts on this host, with this directory, removes it.
    raw = build_config_dict(prefix, queue_table("q"), media={"directory": str(media)})
    run_worker(parse_config(raw))
    await wait_for(lambda: not partial.exists())
    left = await asyncio.to_thread(lambda: [p for p in media.rglob("*") if p.is_file()])
    assert left == []


def test_the_sweep_leaves_a_live_writers_file(tmp_path: Path) -> None:
    folder = tmp_path / "ab"
    folder.mkdir()
    live = folder / ".incoming-live.part"
    dead = folder / ".incoming-dead.part"
    live.write_bytes(b"half")
    dead.write_bytes(b"half")
    elsewhere = tmp_path / ".incoming-top.part"  # not in a store folder: not ours to touch
    elsewhere.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer holds it
        assert LocalStore(tmp_path).sweep_sync() == 1
    finally:
        os.close(fd)
    assert (live.exists(), dead.exists(), elsewhere.exists()) == (True, False, True)


def test_downscale_keeps_the_aspect_ratio() -> None:
    data, width, height = downscale_sync(png_bytes(1000, 500), 200)
    assert (width, height) == (200, 100)
    assert data.startswith(b"\x89PNG")
