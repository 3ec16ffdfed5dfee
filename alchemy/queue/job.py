"""The job as producers write it, the engine's envelope around it, and dead-letter entries.

A wait list item is either a producer's job (a UTF-8 JSON object) or an engine envelope
``{"_alchemy": {...meta...}, "job": "<the producer's job, byte for byte>"}``. The producer's
bytes are never re-encoded, so a job comes out of the dead-letter list exactly as it went in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import orjson

from alchemy.queue.keys import PROTOCOL_VERSION

RESERVED_FIELDS: Final = frozenset({"id", "enqueued_at", "_alchemy"})
MAX_ID_LENGTH: Final = 256
MAX_ERROR_MESSAGE: Final = 2000


class DeadReason(StrEnum):
    """Why a job is in the dead-letter list."""

    MAX_ATTEMPTS = "max_attempts"
    PERMANENT_ERROR = "permanent_error"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_FIELD = "invalid_field"
    TOO_LARGE = "too_large"
    NO_HANDLER = "no_handler"
    POISON = "poison"
    DEFERRED_TOO_LONG = "deferred_too_long"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(type=type(exc).__name__, message=str(exc)[:MAX_ERROR_MESSAGE])

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True, slots=True)
class Runner:
    """Who runs one attempt of a job: the process's identity, the incarnation of that
    identity (random per process start) and a number unique within the incarnation. Two
    runs of the same job never share a runner, even in one process."""

    identity: str = ""
    incarnation: str = ""
    run: int = 0

    @property
    def token(self) -> str:
        return f"{self.identity}/{self.incarnation}/{self.run}"


@dataclass(frozen=True, slots=True)
class Job:
    """What a handler receives."""

    id: str
    queue: str
    attempt: int
    data: Mapping[str, Any]
    recoveries: int = 0
    enqueued_at: float | None = None
    runner: Runner = Runner()


@dataclass(frozen=True, slots=True)
class Death:
    """Why the engine dead-letters a job, as a handler module's ``on_dead`` hook hears it:
    the dead-letter ``reason`` (``permanent_error``, ``max_attempts``, ``poison``,
    ``deferred_too_long``...) and the last error."""

    reason: str
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Meta:
    """The engine's bookkeeping, kept in the envelope between attempts."""

    id: str
    attempt: int = 1
    recoveries: int = 0
    first_attempt_ms: int | None = None
    last_error: ErrorInfo | None = None
    deferrals: int = 0  # times the job came back without spending an attempt
    deferred_ms: int = 0  # the retry-after delays of those, summed

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.id,
            "attempt": self.attempt,
            "recoveries": self.recoveries,
            "first_attempt_ms": self.first_attempt_ms,
            "last_error": self.last_error.to_json() if self.last_error else None,
            "nonce": uuid.uuid4().hex,
        }
        if self.deferrals:
            body["deferrals"] = self.deferrals
            body["deferred_ms"] = self.deferred_ms
        return body


def derived_id(raw_job: bytes) -> str:
    """The id of a job pushed without one: named by its bytes, so it stays the same
    through retries and recoveries, and an LPUSH sent twice is one job."""
    return "sha256-" + hashlib.sha256(raw_job).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A wait-list item that parsed: the producer's raw job, the job, and its bookkeeping."""

    raw_job: bytes
    job: Job
    meta: Meta


@dataclass(frozen=True, slots=True)
class BadJob:
    """A wait-list item that cannot be run."""

    raw_job: bytes
    reason: DeadReason
    message: str
    meta: Meta = field(default_factory=lambda: Meta(id=""))


def decode_item(item: bytes, *, queue: str, max_bytes: int) -> Decoded | BadJob:
    """Parse one item taken from a wait list. Never raises for bad input."""
    meta: Meta | None = None
    raw_job = item
    if item.startswith(b"{") and b'"_alchemy"' in item[:4096]:
        unwrapped = _unwrap_envelope(item)
        if unwrapped is not None:
            raw_job, meta = unwrapped
    if len(raw_job) > max_bytes:
        return BadJob(
            raw_job, DeadReason.TOO_LARGE, f"{len(raw_job)} bytes > limit {max_bytes}", _m(meta)
        )
    try:
        text = raw_job.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadJob(raw_job, DeadReason.INVALID_ENCODING, f"not UTF-8: {exc}", _m(meta))
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which are valid JSON: ask json too.
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            return BadJob(raw_job, DeadReason.INVALID_JSON, f"not JSON: {exc}", _m(meta))
    if not isinstance(obj, dict):
        found = type(obj).__name__
        return BadJob(raw_job, DeadReason.NOT_AN_OBJECT, f"a JSON {found}, not an object", _m(meta))
    problem = _check_reserved(obj)
    if problem:
        return BadJob(raw_job, DeadReason.INVALID_FIELD, problem, _m(meta, obj))
    if meta is None:
        meta = Meta(id=obj.get("id") or derived_id(raw_job))
    data = {k: v for k, v in obj.items() if k not in RESERVED_FIELDS}
    job = Job(
        id=meta.id,
        queue=queue,
        attempt=meta.attempt,
        data=data,
        recoveries=meta.recoveries,
        enqueued_at=obj.get("enqueued_at"),
    )
    return Decoded(raw_job=raw_job, job=job, meta=meta)


def _m(meta: Meta | None, obj: Mapping[str, Any] | None = None) -> Meta:
    if meta is not None:
        return meta
    job_id = obj.get("id") if obj else None
    return Meta(id=job_id if isinstance(job_id, str) else "")


def _check_reserved(obj: Mapping[str, Any]) -> str | None:
    job_id = obj.get("id")
    if job_id is not None and not (isinstance(job_id, str) and 0 < len(job_id) <= MAX_ID_LENGTH):
        return f"'id' must be a string of 1-{MAX_ID_LENGTH} characters"
    enqueued_at = obj.get("enqueued_at")
    if enqueued_at is not None and (
        isinstance(enqueued_at, bool) or not isinstance(enqueued_at, int | float)
    ):
        return "'enqueued_at' must be a number (Unix time in milliseconds)"
    if "_alchemy" in obj:
        return "'_alchemy' is reserved for the engine"
    return None


def _unwrap_envelope(item: bytes) -> tuple[bytes, Meta] | None:
    # Envelopes are written by the engine; a recovered job's raw bytes may not be UTF-8,
    # which surrogateescape carries through unchanged.
    try:
        obj = json.loads(item.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or set(obj) != {"_alchemy", "job"}:
        return None
    meta, job = obj["_alchemy"], obj["job"]
    if not isinstance(meta, dict) or not isinstance(job, str):
        return None
    raw_job = job.encode("utf-8", "surrogateescape")
    error = meta.get("last_error")
    job_id = meta.get("id") or _inner_id(raw_job) or derived_id(raw_job)
    return raw_job, Meta(
        id=str(job_id),
        attempt=_int(meta.get("attempt"), 1),
        recoveries=_int(meta.get("recoveries"), 0),
        first_attempt_ms=_int(meta.get("first_attempt_ms"), 0) or None,
        last_error=ErrorInfo(str(error.get("type")), str(error.get("message")))
        if isinstance(error, dict)
        else None,
        deferrals=_int(meta.get("deferrals"), 0),
        deferred_ms=_int(meta.get("deferred_ms"), 0),
    )


def _inner_id(raw_job: bytes) -> str | None:
    try:
        obj = json.loads(raw_job)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    job_id = obj.get("id") if isinstance(obj, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return int(value)
    return default


def encode_envelope(raw_job: bytes, meta: Meta) -> bytes:
    """The envelope that carries a job and its bookkeeping to its next attempt."""
    body = {"_alchemy": meta.to_json(), "job": raw_job.decode("utf-8", "surrogateescape")}
    return _dumps(body)


def encode_dead_entry(
    *,
    queue: str,
    raw_job: bytes,
    reason: DeadReason,
    error: ErrorInfo,
    meta: Meta,
    dead_at_ms: int,
) -> bytes:
    """One dead-letter list entry (docs/protocol.md, "Dead-letter entries")."""
    entry: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "queue": queue,
        "id": meta.id or None,
        "reason": str(reason),
        "error": error.to_json(),
        "attempts": meta.attempt,
        "recoveries": meta.recoveries,
        "first_attempt_ms": meta.first_attempt_ms,
        "dead_at_ms": dead_at_ms,
    }
    try:
        entry["job"] = raw_job.decode("utf-8")
    except UnicodeDecodeError:
        entry["job_b64"] = base64.b64encode(raw_job).decode("ascii")
    return _dumps(entry)


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """A parsed dead-letter entry. ``raw_entry`` is the list element, byte for byte."""

    raw_entry: bytes
    raw_job: bytes
    fields: Mapping[str, Any]

    @property
    def id(self) -> str | None:
        value = self.fields.get("id")
        return value if isinstance(value, str) else None


def decode_dead_entry(raw_entry: bytes) -> DeadEntry:
    try:
        fields = json.loads(raw_entry.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return DeadEntry(raw_entry, raw_entry, {"reason": "unreadable_entry"})
    if not isinstance(fields, dict):
        return DeadEntry(raw_entry, raw_entry, {"reason": "unreadable_entry"})
    if isinstance(fields.get("job"), str):
        raw_job = fields["job"].encode("utf-8", "surrogateescape")
    elif isinstance(fields.get("job_b64"), str):
        try:
            raw_job = base64.b64decode(fields["job_b64"], validate=True)
        except (binascii.Error, ValueError):
            raw_job = raw_entry
    else:
        raw_job = raw_entry
    return DeadEntry(raw_entry, raw_job, fields)


def encode_job(data: Mapping[str, Any], *, job_id: str, enqueued_at: float) -> bytes:
    """A producer job exactly as docs/protocol.md describes it."""
    clash = RESERVED_FIELDS.intersection(data)
    if clash:
        raise ValueError(f"reserved field(s) in job data: {', '.join(sorted(clash))}")
    if not 0 < len(job_id) <= MAX_ID_LENGTH:
        raise ValueError(f"job id must have 1-{MAX_ID_LENGTH} characters")
    return _dumps({"id": job_id, "enqueued_at": enqueued_at, **data})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogateescape"
    )
