"""The job as producers write it, the engine's envelope around it, and dead-letter entries.

A wait list item is either a producer's job (a UTF-8 JSON object) or an engine envelope
``{"_alchemy": {...meta...}, "job": "<the producer's job, byte for byte>"}``. The producer's
bytes are never re-encoded, so a job comes out of the dead-letter list exactly as it went in.

Reading an item is bounded: its size is checked before anything parses it, and whatever it
holds (nesting a thousand levels deep, an integer of 5,000 digits, bytes that are not UTF-8)
ends as a :class:`BadJob` with a reason, never as an exception.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import math
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol, TypeGuard

import orjson

from alchemy.queue.keys import PROTOCOL_VERSION

RESERVED_FIELDS: Final = frozenset({"id", "enqueued_at", "_alchemy"})
MAX_ID_LENGTH: Final = 256
MAX_ERROR_MESSAGE: Final = 2000
MAX_STEP_LENGTH: Final = 200  # characters of a progress step kept
# An envelope holds the producer's job as a JSON string, in which a byte takes at most six
# (``\u007f``: Lua's cjson escapes DEL and control characters so), plus the engine's
# bookkeeping (a last error is at most 2,000 characters). An envelope larger than this,
# for a queue's max_payload_bytes, cannot hold a job within the limit: it is not opened.
ESCAPED_BYTES_PER_BYTE: Final = 6
ENVELOPE_ALLOWANCE: Final = 64 * 1024
# A too_large dead-letter entry keeps this much of the job, with its size and sha256.
DEAD_JOB_HEAD: Final = 64 * 1024


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


class ProgressReporter(Protocol):
    """Where :meth:`Job.progress` goes: set by the engine on the jobs it runs."""

    def report(self, job: Job, fraction: float, step: str) -> None: ...


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
    reporter: ProgressReporter | None = field(default=None, repr=False, compare=False)

    async def progress(self, fraction: float, step: str = "") -> None:
        """Tell how far this attempt is: ``fraction`` from 0 to 1 (clamped), ``step`` a short
        name of what it does now (at most 200 characters kept). Cheap enough to call often:
        a new step is reported at once, the same step at most every half second (the latest
        value is sent when that time is up). Goes to the job's record and the events stream
        (docs/protocol.md); does nothing outside the engine. A fraction that is not a
        number raises ``ValueError``."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if not math.isfinite(fraction):
            raise ValueError(f"progress must be a number from 0 to 1, got {fraction!r}")
        reporter = self.reporter
        if reporter is not None:
            text = step if isinstance(step, str) else str(step)
            reporter.report(self, min(1.0, max(0.0, float(fraction))), text[:MAX_STEP_LENGTH])


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


def max_item_bytes(max_bytes: int) -> int:
    """The largest wait-list item that is opened at all, for a queue's ``max_payload_bytes``:
    a producer's job is at most ``max_bytes``; an envelope (which escapes the job inside it)
    at most ``ESCAPED_BYTES_PER_BYTE`` times that plus ``ENVELOPE_ALLOWANCE``."""
    return ESCAPED_BYTES_PER_BYTE * max_bytes + ENVELOPE_ALLOWANCE


def decode_item(
    item: bytes,
    *,
    queue: str,
    max_bytes: int,
    runner: Runner = Runner(),
    reporter: ProgressReporter | None = None,
) -> Decoded | BadJob:
    """Parse one item taken from a wait list. Never raises: an item that cannot be read for
    any reason, foreseen or not, is a :class:`BadJob`. ``runner`` and ``reporter`` go into
    the :class:`Job` (the engine's, for the run it starts)."""
    try:
        return _decode_item(item, queue, max_bytes, runner, reporter)
    except Exception as exc:  # a case nobody foresaw is still this item's end, not a loop
        return BadJob(item, DeadReason.INVALID_JSON, f"could not be read: {_describe(exc)}")


def _decode_item(
    item: bytes, queue: str, max_bytes: int, runner: Runner, reporter: ProgressReporter | None
) -> Decoded | BadJob:
    meta: Meta | None = None
    raw_job = item
    if _looks_like_envelope(item):
        limit = max_item_bytes(max_bytes)
        if len(item) > limit:
            message = f"an envelope of {len(item)} bytes > {limit} (for the limit {max_bytes})"
            return BadJob(item, DeadReason.TOO_LARGE, message)
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
    obj, problem = _parse_json(text)
    if problem is not None:
        return BadJob(raw_job, DeadReason.INVALID_JSON, problem, _m(meta))
    if not isinstance(obj, dict):
        found = type(obj).__name__
        return BadJob(raw_job, DeadReason.NOT_AN_OBJECT, f"a JSON {found}, not an object", _m(meta))
    problem = _check_reserved(obj)
    if problem:
        return BadJob(raw_job, DeadReason.INVALID_FIELD, problem, _m(meta, obj))
    if meta is None:
        job_id = obj.get("id")  # valid when there (_check_reserved)
        meta = Meta(id=job_id if job_id is not None else derived_id(raw_job))
    data = {k: v for k, v in obj.items() if k not in RESERVED_FIELDS}
    job = Job(
        id=meta.id,
        queue=queue,
        attempt=meta.attempt,
        data=data,
        recoveries=meta.recoveries,
        enqueued_at=obj.get("enqueued_at"),
        runner=runner,
        reporter=reporter,
    )
    return Decoded(raw_job=raw_job, job=job, meta=meta)


def _looks_like_envelope(item: bytes) -> bool:
    return item.startswith(b"{") and item.find(b'"_alchemy"', 0, 4096) >= 0


def _parse_json(text: str) -> tuple[Any, str | None]:
    """The JSON value of ``text``, or why it has none."""
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON (integers it cannot hold, for one): ask json too, whose
    # own limits are the interpreter's recursion depth and int_max_str_digits.
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "not JSON that can be read: nested too deeply (the limit is ~1,000 levels)"
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            return None, f"not JSON: {exc}"
        digits = sys.get_int_max_str_digits()
        if "integer string conversion" in str(exc):
            return None, f"not JSON that can be read: an integer of more than {digits} digits"
        return None, f"not JSON that can be read: {exc}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_MESSAGE]


def _m(meta: Meta | None, obj: Mapping[str, Any] | None = None) -> Meta:
    if meta is not None:
        return meta
    job_id = obj.get("id") if obj else None
    return Meta(id=job_id if _valid_id(job_id) else "")


def _valid_id(value: Any) -> TypeGuard[str]:
    """A string of 1-256 characters that UTF-8 can encode (no lone surrogate from a
    ``\\ud800`` escape, which no entry, log line or envelope could hold)."""
    if not (isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_reserved(obj: Mapping[str, Any]) -> str | None:
    job_id = obj.get("id")
    if job_id is not None and not _valid_id(job_id):
        return f"'id' must be a string of 1-{MAX_ID_LENGTH} characters (valid Unicode)"
    enqueued_at = obj.get("enqueued_at")
    if enqueued_at is not None and not _finite_number(enqueued_at):
        return "'enqueued_at' must be a number (Unix time in milliseconds)"
    if "_alchemy" in obj:
        return "'_alchemy' is reserved for the engine"
    return None


def _finite_number(value: Any) -> bool:
    """An int or float that is a float too (``NaN``, ``Infinity`` and integers beyond 1e308
    are not: a pickup time could not be computed from them)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _unwrap_envelope(item: bytes) -> tuple[bytes, Meta] | None:
    """The producer's job and the bookkeeping of an envelope; None when ``item`` is not one
    (or cannot be read as one: then it is read as a producer's job, and fails there)."""
    try:
        return _open_envelope(item)
    except Exception:
        return None


def _open_envelope(item: bytes) -> tuple[bytes, Meta] | None:
    # Envelopes are written by the engine; a recovered job's raw bytes may not be UTF-8,
    # which surrogateescape carries through unchanged.
    obj = json.loads(item.decode("utf-8", "surrogateescape"))
    if not isinstance(obj, dict) or set(obj) != {"_alchemy", "job"}:
        return None
    meta, job = obj["_alchemy"], obj["job"]
    if not isinstance(meta, dict) or not isinstance(job, str):
        return None
    raw_job = job.encode("utf-8", "surrogateescape")
    error = meta.get("last_error")
    given = meta.get("id")
    job_id = given if _valid_id(given) else _inner_id(raw_job) or derived_id(raw_job)
    return raw_job, Meta(
        id=job_id,
        attempt=_int(meta.get("attempt"), 1),
        recoveries=_int(meta.get("recoveries"), 0),
        first_attempt_ms=_int(meta.get("first_attempt_ms"), 0) or None,
        last_error=ErrorInfo(_text(error.get("type")), _text(error.get("message")))
        if isinstance(error, dict)
        else None,
        deferrals=_int(meta.get("deferrals"), 0),
        deferred_ms=_int(meta.get("deferred_ms"), 0),
    )


def _inner_id(raw_job: bytes) -> str | None:
    try:
        obj = json.loads(raw_job)
    except Exception:  # not JSON, too deep, an integer too long: no id to find
        return None
    job_id = obj.get("id") if isinstance(obj, dict) else None
    return job_id if _valid_id(job_id) else None


def _int(value: Any, default: int) -> int:
    if _finite_number(value):
        return int(value)
    return default


def _text(value: Any) -> str:
    return value[:MAX_ERROR_MESSAGE] if isinstance(value, str) else str(value)[:MAX_ERROR_MESSAGE]


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
    """One dead-letter list entry (docs/protocol.md, "Dead-letter entries"). A ``too_large``
    job keeps its first ``DEAD_JOB_HEAD`` bytes, its size and its sha256 (hashing takes
    about 2 ms a megabyte: encode a large one off the event loop)."""
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
    if reason is DeadReason.TOO_LARGE and len(raw_job) > DEAD_JOB_HEAD:
        entry.update(_job_head(raw_job))
    else:
        entry.update(_job_field(raw_job))
    return _dumps(entry)


def _job_field(raw_job: bytes) -> dict[str, str]:
    try:
        return {"job": raw_job.decode("utf-8")}
    except UnicodeDecodeError:
        return {"job_b64": base64.b64encode(raw_job).decode("ascii")}


def _job_head(raw_job: bytes) -> dict[str, Any]:
    """The first DEAD_JOB_HEAD bytes of a job, cut before a character they would split, with
    what identifies the whole."""
    head = raw_job[:DEAD_JOB_HEAD]
    try:
        # Not final: a character cut at the end stays out; an invalid byte raises.
        fields: dict[str, Any] = {"job": codecs.getincrementaldecoder("utf-8")().decode(head)}
    except UnicodeDecodeError:
        fields = {"job_b64": base64.b64encode(head).decode("ascii")}
    fields["truncated"] = True
    fields["job_bytes"] = len(raw_job)
    fields["job_sha256"] = hashlib.sha256(raw_job).hexdigest()
    return fields


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """A parsed dead-letter entry. ``raw_entry`` is the list element, byte for byte;
    ``fields`` are valid Unicode throughout (see :func:`decode_dead_entry`)."""

    raw_entry: bytes
    raw_job: bytes
    fields: Mapping[str, Any]

    @property
    def id(self) -> str | None:
        value = self.fields.get("id")
        return value if isinstance(value, str) else None

    @property
    def truncated(self) -> bool:
        """Only the head of the job is kept (``too_large``): it cannot be retried."""
        return self.fields.get("truncated") is True


def decode_dead_entry(raw_entry: bytes) -> DeadEntry:
    """Read one entry. An entry that is not valid UTF-8 (a ``poison`` entry holds the job's
    bytes as they were) is served with ``job_b64`` in place of ``job``, and any other
    undecodable byte as U+FFFD, so that every reader can print and serve it."""
    unreadable = DeadEntry(raw_entry, raw_entry, {"reason": "unreadable_entry"})
    try:
        text, clean = raw_entry.decode("utf-8"), True
    except UnicodeDecodeError:
        text, clean = raw_entry.decode("utf-8", "surrogateescape"), False
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            return unreadable
        if not clean:
            fields = _normalized(fields)
    except Exception:  # not JSON, too deep, an integer too long: nothing to show but that
        return unreadable
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


def _normalized(fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "job" and isinstance(value, str) and not _encodable(value):
            out["job_b64"] = base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()
        else:
            out[_replaced(key)] = _replaced(value)
    return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        if _encodable(value):
            return value
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    if isinstance(value, dict):
        return {_replaced(k): _replaced(v) for k, v in value.items()}
    return value


def dead_entry_id_needles(job_id: str) -> list[bytes]:
    """Byte strings one of which an entry with this job id contains, as alchemy writes
    entries: ``"id":`` and the id as a JSON string, spelled by Python's json (raw UTF-8, or
    ASCII with \\u escapes) and by Redis's cjson (which also escapes ``/`` and DEL). A
    prefilter for scripts: an entry that contains one still has to be decoded to be sure."""
    spellings = (
        json.dumps(job_id, ensure_ascii=False),
        json.dumps(job_id),
        _cjson_string(job_id),
    )
    needles: list[bytes] = []
    for spelled in spellings:
        needle = b'"id":' + spelled.encode("utf-8", "surrogateescape")
        if needle not in needles:
            needles.append(needle)
    return needles


_CJSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _cjson_string(text: str) -> str:
    """``text`` as Redis's cjson.encode writes a string: bytes from 0x80 up as they are."""
    out = []
    for char in text:
        if char in _CJSON_ESCAPES:
            out.append(_CJSON_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


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
        "utf-8", _RAW_OR_REPLACED
    )


def _raw_or_replaced(exc: UnicodeError) -> tuple[bytes, int]:
    """An encoding error handler: surrogateescape's bytes back (a job's bytes that are not
    UTF-8, carried in a str), and U+FFFD for any other lone surrogate (a ``\\ud800`` escape in
    an error message), which UTF-8 cannot hold: writing an entry or envelope never fails."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for char in exc.object[exc.start : exc.end]:
        code = ord(char)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), exc.end


_RAW_OR_REPLACED: Final = "alchemy.raw_or_replaced"
codecs.register_error(_RAW_OR_REPLACED, _raw_or_replaced)
