"""The job envelope, dead-letter entries and backoff as pure functions."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import tracemalloc
from typing import Any

import pytest

from alchemy.queue import job as job_module
from alchemy.queue.backoff import backoff_delay
from alchemy.queue.job import (
    DEAD_JOB_HEAD,
    BadJob,
    DeadReason,
    Decoded,
    ErrorInfo,
    Meta,
    decode_dead_entry,
    decode_item,
    encode_dead_entry,
    encode_envelope,
    encode_job,
    max_item_bytes,
)


def test_backoff_grows_caps_and_jitters_downwards() -> None:
    delays = [
        backoff_delay(n, initial=5, multiplier=2, maximum=60, jitter=0.0) for n in range(1, 7)
    ]
    assert delays == [5, 10, 20, 40, 60, 60]
    rng = random.Random(7)
    jittered = [
        backoff_delay(3, initial=5, multiplier=2, maximum=60, jitter=0.5, rng=rng)
        for _ in range(200)
    ]
    assert all(10.0 <= d <= 20.0 for d in jittered)
    assert max(jittered) - min(jittered) > 5  # it really spreads
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(0, initial=1, multiplier=2, maximum=2, jitter=0)


def test_producer_job_decodes_to_data_without_reserved_fields() -> None:
    raw = encode_job({"brand": 7, "tags": []}, job_id="abc", enqueued_at=1.5)
    assert json.loads(raw) == {"id": "abc", "enqueued_at": 1.5, "brand": 7, "tags": []}
    decoded = decode_item(raw, queue="q", max_bytes=1000)
    assert isinstance(decoded, Decoded)
    assert decoded.job.id == "abc"
    assert decoded.job.attempt == 1
    assert decoded.job.data == {"brand": 7, "tags": []}
    assert decoded.job.enqueued_at == 1.5
    with pytest.raises(ValueError, match="reserved"):
        encode_job({"id": "x"}, job_id="abc", enqueued_at=0)


def test_envelope_carries_the_raw_job_byte_for_byte() -> None:
    raw = b'{"id":"e1", "x": 1.0, "big": 12345678901234567890, "s": "\\u00e9/"}'
    envelope = encode_envelope(raw, Meta(id="e1", attempt=3, recoveries=1))
    decoded = decode_item(envelope, queue="q", max_bytes=1000)
    assert isinstance(decoded, Decoded)
    assert decoded.raw_job == raw
    assert (decoded.job.attempt, decoded.job.recoveries) == (3, 1)
    assert decoded.job.data["big"] == 12345678901234567890


def test_a_job_without_id_gets_one_named_by_its_bytes() -> None:
    decoded = decode_item(b'{"a": 1}', queue="q", max_bytes=100)
    again = decode_item(b'{"a": 1}', queue="q", max_bytes=100)
    other = decode_item(b'{"a": 2}', queue="q", max_bytes=100)
    assert isinstance(decoded, Decoded)
    assert isinstance(again, Decoded)
    assert isinstance(other, Decoded)
    assert decoded.job.id.startswith("sha256-")
    assert len(decoded.job.id) == len("sha256-") + 32
    assert again.job.id == decoded.job.id  # the same job (an LPUSH sent twice) keeps its id
    assert other.job.id != decoded.job.id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", DeadReason.INVALID_JSON),
        (b"null", DeadReason.NOT_AN_OBJECT),
        (b"\xc3\x28", DeadReason.INVALID_ENCODING),
        (b'{"id": ""}', DeadReason.INVALID_FIELD),
        (b'{"enqueued_at": true}', DeadReason.INVALID_FIELD),
        (b'{"pad": "' + b"x" * 200 + b'"}', DeadReason.TOO_LARGE),
    ],
)
def test_bad_items(raw: bytes, reason: DeadReason) -> None:
    result = decode_item(raw, queue="q", max_bytes=100)
    assert isinstance(result, BadJob)
    assert result.reason is reason
    assert result.raw_job == raw


def test_dead_entry_round_trips_any_bytes() -> None:
    for raw in (b'{"id":"a"}', b"\xff\x00binary"):
        entry = encode_dead_entry(
            queue="q",
            raw_job=raw,
            reason=DeadReason.INVALID_ENCODING,
            error=ErrorInfo("BadJob", "m"),
            meta=Meta(id="a"),
            dead_at_ms=5,
        )
        parsed = decode_dead_entry(entry)
        assert parsed.raw_job == raw
        assert parsed.fields["reason"] == "invalid_encoding"


# -- bounded input: whatever an item holds, reading it ends in a result, never a raise ------
DEEP = b"[" * 5000 + b"]" * 5000
HUGE_INT = b'{"id":"h","n":' + b"7" * 5000 + b"}"


@pytest.mark.parametrize(
    ("raw", "reason", "words"),
    [
        (DEEP, DeadReason.INVALID_JSON, "nested too deeply"),
        (b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}", DeadReason.INVALID_JSON, "nested"),
        (HUGE_INT, DeadReason.INVALID_JSON, "an integer of more than 4300 digits"),
        (b'{"enqueued_at": NaN}', DeadReason.INVALID_FIELD, "enqueued_at"),
        (b'{"enqueued_at": ' + b"9" * 400 + b"}", DeadReason.INVALID_FIELD, "enqueued_at"),
        (b'{"id": "\\ud800"}', DeadReason.INVALID_FIELD, "valid Unicode"),
        # Envelopes whose bookkeeping or job cannot be read are read as producer's jobs.
        (
            b'{"_alchemy":{"id":"e","attempt":' + b"1" * 5000 + b'},"job":"{}"}',
            DeadReason.INVALID_JSON,
            "4300 digits",
        ),
        (
            json.dumps({"_alchemy": {"v": 1}, "job": DEEP.decode()}).encode(),
            DeadReason.INVALID_JSON,
            "nested",
        ),
    ],
)
def test_unreadable_json_is_a_bad_job_that_says_why(
    raw: bytes, reason: DeadReason, words: str
) -> None:
    result = decode_item(raw, queue="q", max_bytes=1_000_000)
    assert isinstance(result, BadJob)
    assert (result.reason, words in result.message) == (reason, True), result.message
    entry = json.loads(
        encode_dead_entry(
            queue="q",
            raw_job=result.raw_job,
            reason=result.reason,
            error=ErrorInfo("BadJob", result.message),
            meta=result.meta,
            dead_at_ms=1,
        )
    )
    assert entry["reason"] == str(reason)


def test_an_envelope_with_bad_numbers_in_its_bookkeeping_still_runs() -> None:
    raw = b'{"_alchemy":{"id":"e","attempt":Infinity,"recoveries":NaN},"job":"{\\"a\\":1}"}'
    decoded = decode_item(raw, queue="q", max_bytes=100)
    assert isinstance(decoded, Decoded)
    assert (decoded.job.id, decoded.job.attempt, decoded.job.recoveries) == ("e", 1, 0)


def test_the_size_is_checked_before_anything_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(job_module.orjson, "loads", no_parsing)
    monkeypatch.setattr(job_module.json, "loads", no_parsing)
    plain = b'{"pad":"' + b"x" * 1000 + b'"}'
    result = decode_item(plain, queue="q", max_bytes=1000)
    assert isinstance(result, BadJob)
    assert (result.reason, result.raw_job) == (DeadReason.TOO_LARGE, plain)
    # An envelope may hold a job within the limit escaped up to six times over, plus 64 KiB.
    limit = max_item_bytes(1000)
    assert limit == 6 * 1000 + 64 * 1024
    envelope = b'{"_alchemy":{"id":"e"},"job":"' + b"x" * limit + b'"}'
    result = decode_item(envelope, queue="q", max_bytes=1000)
    assert isinstance(result, BadJob)
    assert result.reason is DeadReason.TOO_LARGE
    assert "an envelope of" in result.message


def test_an_opened_envelope_holds_its_job_to_the_limit() -> None:
    inner = b'{"id":"big","pad":"' + b"x" * 2000 + b'"}'
    result = decode_item(encode_envelope(inner, Meta(id="big")), queue="q", max_bytes=1000)
    assert isinstance(result, BadJob)
    assert (result.reason, result.raw_job, result.meta.id) == (DeadReason.TOO_LARGE, inner, "big")
    # A job of control characters escapes six-fold (cjson's \u0001), and is still within.
    escaped = b'{"_alchemy":{"id":"c"},"job":"' + b"\\u0001" * 1000 + b'"}'
    result = decode_item(escaped, queue="q", max_bytes=1000)
    assert isinstance(result, BadJob)
    assert result.reason is DeadReason.INVALID_JSON  # read, and found to be no JSON object


def test_decode_item_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(job_module.orjson, "loads", broken)
    result = decode_item(b'{"id":"x"}', queue="q", max_bytes=100)
    assert isinstance(result, BadJob)
    assert result.reason is DeadReason.INVALID_JSON
    assert result.message == "could not be read: RuntimeError: a parser bug"


def test_a_large_job_is_read_and_dead_lettered_quickly_with_little_memory() -> None:
    payload = b'{"id":"big","pad":"' + b"x" * 50_000_000 + b'"}'
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = decode_item(payload, queue="q", max_bytes=1_048_576)
        decoded_in = time.perf_counter() - started
        _, decode_peak = tracemalloc.get_traced_memory()
        assert isinstance(result, BadJob)
        entry = encode_dead_entry(
            queue="q",
            raw_job=result.raw_job,
            reason=result.reason,
            error=ErrorInfo("BadJob", result.message),
            meta=result.meta,
            dead_at_ms=1,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.reason is DeadReason.TOO_LARGE
    assert decoded_in < 0.05
    assert decode_peak < 100_000  # bytes: nothing was copied or parsed
    assert peak < 1_000_000  # the entry: the head, its JSON, and little else
    assert len(entry) < DEAD_JOB_HEAD + 1024


# -- too_large entries keep the head, the size and the digest --------------------------------
def too_large_entry(raw: bytes) -> dict[str, Any]:
    entry = encode_dead_entry(
        queue="q",
        raw_job=raw,
        reason=DeadReason.TOO_LARGE,
        error=ErrorInfo("BadJob", "too big"),
        meta=Meta(id=""),
        dead_at_ms=1,
    )
    assert len(entry) < DEAD_JOB_HEAD * 4 / 3 + 1000
    fields: dict[str, Any] = json.loads(entry)
    return fields


def test_a_too_large_entry_keeps_the_first_64_kib_the_size_and_the_sha256() -> None:
    raw = b'{"pad":"' + b"x" * 200_000 + b'"}'
    fields = too_large_entry(raw)
    assert fields["job"].encode() == raw[:65_536]
    assert fields["truncated"] is True
    assert fields["job_bytes"] == len(raw)
    assert fields["job_sha256"] == hashlib.sha256(raw).hexdigest()
    assert "job_b64" not in fields
    parsed = decode_dead_entry(json.dumps(fields).encode())
    assert parsed.truncated
    assert parsed.raw_job == raw[:65_536]


def test_a_too_large_head_is_cut_before_a_split_character() -> None:
    raw = b'{"ab":"' + "é".encode() * 40_000 + b'"}'  # 7 + 2n: byte 65,536 splits an é
    fields = too_large_entry(raw)
    head = fields["job"].encode()
    assert head == raw[:65_535]
    assert fields["job_bytes"] == len(raw)


def test_a_too_large_head_that_is_not_utf8_is_base64() -> None:
    raw = b"\xff" + b"x" * 100_000
    fields = too_large_entry(raw)
    assert "job" not in fields
    assert base64.b64decode(fields["job_b64"]) == raw[:65_536]
    assert fields["job_sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_too_large_job_within_64_kib_is_kept_whole() -> None:
    raw = b'{"pad":"' + b"x" * 5000 + b'"}'
    fields = too_large_entry(raw)
    assert fields["job"].encode() == raw
    assert "truncated" not in fields


# -- entries and envelopes are always written, and read back as valid Unicode ----------------
def test_a_lone_surrogate_in_an_error_never_stops_an_entry_or_envelope() -> None:
    error = ErrorInfo("ValueError", "bad \ud800 char")
    envelope = encode_envelope(b'{"id":"x"}', Meta(id="x", last_error=error))
    assert json.loads(envelope)["_alchemy"]["last_error"]["message"] == "bad \ufffd char"
    entry = encode_dead_entry(
        queue="q",
        raw_job=b"\xff",
        reason=DeadReason.MAX_ATTEMPTS,
        error=error,
        meta=Meta(id="x"),
        dead_at_ms=1,
    )
    assert decode_dead_entry(entry).fields["error"]["message"] == "bad \ufffd char"


def test_an_entry_that_is_not_utf8_is_read_with_job_b64() -> None:
    # As RECOVER writes a poison entry: the job's raw bytes inside a JSON string.
    raw_entry = b'{"v":1,"id":"p\xff1","reason":"poison","job":"{\\"x\\":\\"\xfe\\"}","n":1}'
    entry = decode_dead_entry(raw_entry)
    assert entry.raw_job == b'{"x":"\xfe"}'
    assert entry.fields == {
        "v": 1,
        "id": "p\ufffd1",
        "reason": "poison",
        "job_b64": base64.b64encode(b'{"x":"\xfe"}').decode(),
        "n": 1,
    }
    json.dumps(entry.fields, ensure_ascii=False).encode("utf-8")  # printable, servable


@pytest.mark.parametrize("raw", [b"nope", b"[1]", b'{"a":' + b"1" * 5000 + b"}", DEEP])
def test_an_unreadable_entry_is_said_so(raw: bytes) -> None:
    entry = decode_dead_entry(raw)
    assert entry.fields == {"reason": "unreadable_entry"}
    assert entry.raw_job == raw
