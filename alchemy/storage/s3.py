"""The S3-compatible media store (AWS S3, SeaweedFS, MinIO, Ceph…) through aiobotocore.

Objects are ``[media] s3_prefix`` + the store key (``ab/ab12….png``), so a put that is
retried overwrites the same object with the same bytes. A PUT is whole or absent on every
S3-compatible server; nothing is ever half-written. URLs are presigned GETs.

The client sends checksums only when an operation requires them and path-style addresses
when asked (``s3_path_style``): several S3-compatible servers refuse the CRC32 headers
botocore adds by default, and most are reached by path, not by a bucket host name.

:meth:`S3Store.probe` lists at most one key of the bucket when a process starts: wrong
credentials, a missing bucket or a refused listing stop the process with a
:class:`~alchemy.errors.ConfigError` (exit 78) naming the key to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final

import structlog

from alchemy.config import MediaConfig
from alchemy.errors import ConfigError
from alchemy.storage import ObjectMissingError, Stored, StoreError, check_key, key_for

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger("alchemy.storage")

# Error codes that mean "these credentials are wrong or not allowed", not "try again".
CREDENTIAL_ERRORS: Final = {
    "SignatureDoesNotMatch": (
        "media.s3_secret_access_key",
        "the S3 server refused the signature: the secret access key is wrong"
        " (env AWS_SECRET_ACCESS_KEY)",
    ),
    "InvalidAccessKeyId": (
        "media.s3_access_key_id",
        "the S3 server does not know this access key id (env AWS_ACCESS_KEY_ID)",
    ),
    "AccessDenied": (
        "media.s3_bucket",
        "the credentials may not list the bucket (they need list, read and write)",
    ),
    "NoSuchBucket": ("media.s3_bucket", "no such bucket on the S3 server"),
    "AuthorizationHeaderMalformed": (
        "media.s3_region",
        "the S3 server refused the request's region",
    ),
}
MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 30.0


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3Store:
    """A bucket (and key prefix) on an S3-compatible server; an async context manager
    that owns its aiobotocore client."""

    name = "s3"

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix
        self._client: S3Client | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def where(self) -> str:
        """The bucket and endpoint, for messages (no secret in it)."""
        endpoint = self.config.s3_endpoint or "AWS S3"
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"

    async def __aenter__(self) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        cfg = self.config
        settings = AioConfig(
            region_name=cfg.s3_region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if cfg.s3_path_style else "auto"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        session = get_session()
        client = session.create_client(
            "s3",
            endpoint_url=cfg.s3_endpoint or None,
            aws_access_key_id=cfg.s3_access_key_id,
            aws_secret_access_key=cfg.s3_secret_access_key.reveal(),
            config=settings,
        )
        self._client = await self._stack.enter_async_context(client)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise StoreError("the S3 media store is not open")
        return self._client

    def object_name(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def probe(self) -> None:
        """List at most one key: raise :class:`ConfigError` when the server refuses the
        credentials or the bucket; log and go on when it cannot be reached (the jobs that
        need it are retried)."""
        try:
            await self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            code = _code(exc)
            if code in CREDENTIAL_ERRORS:
                key, problem = CREDENTIAL_ERRORS[code]
                raise ConfigError(key, f"{problem} ({code}, {self.where})") from None
            if code:
                raise ConfigError("media.s3_endpoint", f"{self.where} answered {code}") from None
            log.warning("media_store_unreachable", where=self.where, error=type(exc).__name__)
            return
        log.info("media_store_ready", store=self.name, where=self.where)

    async def put(self, data: bytes, mime_type: str) -> Stored:
        key, digest = key_for(data, mime_type)
        try:
            await self.client.put_object(
                Bucket=self.bucket,
                Key=self.object_name(key),
                Body=data,
                ContentType=mime_type,
            )
        except Exception as exc:
            raise StoreError(f"S3 media store: cannot write {key}: {_describe(exc)}") from None
        return Stored(self.name, key, digest, len(data))

    async def exists(self, key: str, size: int) -> bool:
        """True when an object of ``size`` bytes is under ``key`` already."""
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as exc:
            if _code(exc) in MISSING_CODES:
                return False
            raise StoreError(f"S3 media store: cannot look at {key}: {_describe(exc)}") from None
        return head.get("ContentLength") == size

    async def get(self, key: str) -> bytes:
        try:
            reply = await self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
            async with reply["Body"] as body:
                data: bytes = await body.read()
                return data
        except Exception as exc:
            if _code(exc) in MISSING_CODES:
                raise ObjectMissingError(f"S3 media store: no object {key}") from None
            raise StoreError(f"S3 media store: cannot read {key}: {_describe(exc)}") from None

    async def url(self, key: str, lifetime: float) -> str | None:
        url: str = await self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_name(key)},
            ExpiresIn=max(1, int(lifetime)),
        )
        return url

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as exc:
            raise StoreError(f"S3 media store: cannot delete {key}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    code = _code(exc)
    if code:
        return code
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return type(exc).__name__
