"""The job envelope and backoff as pure functions."""

from __future__ import annotations

import json
import random

import pytest

from alchemy.queue.backoff import backoff_delay
from alchemy.queue.job import (
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
