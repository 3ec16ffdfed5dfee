"""The media store: sha256 names, atomic writes, the same bytes twice, downscaling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from alchemy.content import storage
from alchemy.content.storage import downscale_sync, relative_path, store_bytes_sync
from tests.fakes.ai_server import png_bytes


def test_files_are_named_by_sha256_under_a_two_letter_folder(tmp_path: Path) -> None:
    data = png_bytes(4, 4)
    digest = hashlib.sha256(data).hexdigest()
    stored = store_bytes_sync(tmp_path, data, "image/png")
    assert stored.path == relative_path(digest, "image/png") == f"{digest[:2]}/{digest}.png"
    assert (stored.sha256, stored.bytes) == (digest, len(data))
    assert (tmp_path / stored.path).read_bytes() == data
    again = store_bytes_sync(tmp_path, data, "image/png")
    assert again == stored
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [f"{digest}.png"]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store_bytes_sync(tmp_path, b"\x89PNG\r\n\x1a\nrest", "image/png")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_downscale_keeps_the_aspect_ratio() -> None:
    data, width, height = downscale_sync(png_bytes(1000, 500), 200)
    assert (width, height) == (200, 100)
    assert data.startswith(b"\x89PNG")
