"""What ``alchemy media ...`` does, apart from printing: a fresh URL of a media row, and
the copy of the local store's rows into S3.

``copy-to-s3`` moves one completed ``local`` row at a time, in id order: the object is put
in the bucket (skipped when an object of the same size is there already), then the row's
``store`` becomes ``s3``. A run that stops anywhere leaves every row readable (the local
file stays) and the next run goes on from the rows still ``local``; a run with nothing
left to do changes nothing. Local files are never deleted: remove the directory once no
process reads it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from alchemy.errors import ConfigError
from alchemy.storage import ObjectMissingError, mime_type_of
from alchemy.storage.stores import MediaStores

BATCH: Final = 100
LOCAL_ROWS: Final = """
SELECT id, storage_path, sha256, bytes FROM media
WHERE store = 'local' AND status = 'completed' AND id > $1
ORDER BY id LIMIT $2
"""
MOVED: Final = """
UPDATE media SET store = 's3', updated_at = now() WHERE id = $1 AND store = 'local'
"""
ZERO_ID: Final = uuid.UUID(int=0)


class MediaNotFoundError(Exception):
    """No completed media row with that id."""


@dataclass(frozen=True, slots=True)
class MediaLink:
    media_id: uuid.UUID
    store: str
    key: str
    url: str
    lifetime: float


async def media_link(
    conn: Any, stores: MediaStores, media_id: uuid.UUID, lifetime: float | None
) -> MediaLink:
    """A fresh URL of the media row ``media_id``."""
    row = await conn.fetchrow(
        "SELECT store, storage_path, status FROM media WHERE id = $1", media_id
    )
    if row is None or row["status"] != "completed":
        state = "no such row" if row is None else f"status {row['status']}"
        raise MediaNotFoundError(f"media {media_id}: {state} (only completed media has a URL)")
    seconds = stores.config.media.url_lifetime if lifetime is None else lifetime
    url = await stores.url(row["store"], row["storage_path"], seconds)
    if url is None:
        raise ConfigError(
            "media.url_secret",
            "local media URLs need it (env ALCHEMY_MEDIA_URL_SECRET) and a listener"
            " ([http] port) or media.public_url",
        )
    return MediaLink(media_id, row["store"], row["storage_path"], url, seconds)


@dataclass(slots=True)
class CopyReport:
    copied: int = 0  # objects put in the bucket
    present: int = 0  # already in the bucket (an earlier run): only the row moved
    missing: list[str] = field(default_factory=list)  # rows whose local file is gone/damaged

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "already_there": self.present, "missing": self.missing}


async def copy_to_s3(
    conn: Any, stores: MediaStores, on_row: Callable[[str, str], None] = lambda *_: None
) -> CopyReport:
    """Copy every completed ``local`` row's object into S3 and mark the row ``s3``;
    ``on_row(media id, what happened)`` hears of each."""
    s3 = stores.s3
    if s3 is None or stores.config.media.store != "s3":
        raise ConfigError("media.store", 'must be "s3" (with its s3_* keys) to copy into S3')
    report = CopyReport()
    after = ZERO_ID
    while rows := await conn.fetch(LOCAL_ROWS, after, BATCH):
        for row in rows:
            after = row["id"]
            key = row["storage_path"]
            if await s3.exists(key, row["bytes"]):
                report.present += 1
                outcome = "already there"
            else:
                try:
                    data = await stores.local.get(key)
                except ObjectMissingError:
                    data = b""
                if hashlib.sha256(data).hexdigest() != row["sha256"]:
                    report.missing.append(str(row["id"]))
                    on_row(str(row["id"]), f"local file {key} missing or damaged: left local")
                    continue
                await s3.put(data, mime_type_of(key))
                report.copied += 1
                outcome = "copied"
            await conn.execute(MOVED, row["id"])
            on_row(str(row["id"]), outcome)
    return report
