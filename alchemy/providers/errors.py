"""SDK exceptions mapped into the engine's error tree.

    what the SDK raised                                   job error
    the provider's own spend limit: OpenAI 429            ProviderPausedError: the queue
    insufficient_quota; Anthropic 402 billing_error, or   holds (no attempt spent) until
    400 "usage limits" / "credit balance is too low"      resumed or [budgets] provider_pause
    429 rate limit (not insufficient_quota)               RateLimitedError(retry-after)
    408 / 409 / 5xx / 529 overloaded                      RetryableError (delay = retry-after)
    timeout, connection refused/reset, garbled body       RetryableError
    400 content_policy_violation / moderation_blocked     ContentPolicyError (permanent)
    400 / 401 / 403 / 404 / 413 / 422                     PermanentError
    reply that fails the SDK's schema (strict mode)       PermanentError

Messages are short and readable ("anthropic 401 authentication_error: invalid x-api-key"),
are saved on the job's row, and never carry an API key: every key the process knows is
replaced by ``***`` first.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import anthropic
import openai

from alchemy.errors import (
    JobError,
    PermanentError,
    ProviderPausedError,
    RateLimitedError,
    RetryableError,
)
from alchemy.providers.base import ContentPolicyError

DEFAULT_RETRY_AFTER: Final = 30.0  # seconds, when a 429 names no retry-after
MAX_RETRY_AFTER: Final = 3600.0
MAX_MESSAGE: Final = 500
POLICY_CODES: Final = frozenset(
    {"content_policy_violation", "moderation_blocked", "content_filter"}
)
RETRYABLE_STATUS: Final = frozenset({408, 409})
# Anthropic's refusals for money (the workspace's spend limit, an empty credit balance):
# 400 invalid_request_error with one of these in the message (as reported by its users;
# the wire-format reference does not show them), or 402 billing_error.
ANTHROPIC_SPEND_LIMIT: Final = ("usage limit", "credit balance")


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), capped at an hour."""
    if not headers:
        return None
    value = _number(headers.get("retry-after-ms"), scale=0.001)
    if value is None:
        raw = headers.get("retry-after")
        value = _number(raw)
        if value is None and raw:
            value = _seconds_until(raw)
    if value is None:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


def _number(raw: str | None, scale: float = 1.0) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw) * scale
    except ValueError:
        return None
    return value if value == value else None  # NaN is no number


def _seconds_until(http_date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def map_provider_error(provider: str, exc: Exception, secrets: Iterable[str] = ()) -> JobError:
    """The job error for an exception raised by the anthropic or openai SDK."""
    mapped = _map(provider, exc)
    message = scrub(str(mapped), list(secrets))[:MAX_MESSAGE]
    if isinstance(mapped, ProviderPausedError):
        return ProviderPausedError(provider, message)
    if isinstance(mapped, RateLimitedError):
        return RateLimitedError(mapped.retry_after, message)
    if isinstance(mapped, RetryableError):
        return RetryableError(message, delay=mapped.delay)
    return type(mapped)(message)


def call_outcome(exc: BaseException) -> str:
    """The ledger's outcome of a call that raised ``exc`` (a mapped job error):
    ``rate_limited``, ``timeout`` or ``error``."""
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    cause = exc.__cause__
    if isinstance(cause, anthropic.APITimeoutError | openai.APITimeoutError):
        return "timeout"
    return "error"


def answered_with_an_error(exc: BaseException) -> bool:
    """The API answered the call with an error status (not billed), as opposed to a call
    that timed out or lost its connection (it may have been processed, and billed)."""
    return isinstance(exc.__cause__, anthropic.APIStatusError | openai.APIStatusError)


def _map(provider: str, exc: Exception) -> JobError:
    if isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        return _map_status(provider, exc)
    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError):
        return RetryableError(f"{provider}: request timed out")
    if isinstance(exc, anthropic.APIConnectionError | openai.APIConnectionError):
        return RetryableError(f"{provider}: connection failed: {exc}")
    if isinstance(exc, anthropic.APIResponseValidationError | openai.APIResponseValidationError):
        return PermanentError(
            f"{provider}: the reply did not match the SDK's schema (API/SDK drift?): {exc}"
        )
    if isinstance(exc, json.JSONDecodeError):
        return RetryableError(f"{provider}: the reply was not valid JSON: {exc}")
    return PermanentError(f"{provider}: {type(exc).__name__}: {exc}")


def _map_status(provider: str, exc: Any) -> JobError:
    status: int = exc.status_code
    kind, code, detail = _error_fields(exc)
    label = " ".join(part for part in (f"{provider} {status}", kind or code) if part)
    text = f"{label}: {detail}" if detail else label
    headers = exc.response.headers if exc.response is not None else None
    if _spend_limit(status, kind, code, detail):
        return ProviderPausedError(provider, f"spend limit: {text}")
    if status == 429 and "insufficient_quota" not in (kind, code):
        delay = retry_after_seconds(headers)
        return RateLimitedError(DEFAULT_RETRY_AFTER if delay is None else delay, text)
    if status >= 500 or status in RETRYABLE_STATUS:
        return RetryableError(text, delay=retry_after_seconds(headers))
    if code in POLICY_CODES or kind in POLICY_CODES:
        return ContentPolicyError(f"refused by the content policy: {text}")
    return PermanentError(text)


def _spend_limit(status: int, kind: str | None, code: str | None, detail: str) -> bool:
    """The provider refused because the account's money ran out, not because of the call."""
    if "insufficient_quota" in (kind, code):
        return True
    if status == 402 or kind == "billing_error":
        return True
    lowered = detail.lower()
    return status == 400 and any(phrase in lowered for phrase in ANTHROPIC_SPEND_LIMIT)


def _error_fields(exc: Any) -> tuple[str | None, str | None, str]:
    """(error type, error code, human message) from either SDK's error body."""
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]  # Anthropic keeps the whole body; OpenAI the inner object
    if not isinstance(body, Mapping):
        raw = body if isinstance(body, str) else ""
        return None, None, raw.strip()[:MAX_MESSAGE]
    kind = body.get("type")
    code = body.get("code") or getattr(exc, "error_code", None)
    message = body.get("message")
    return (
        kind if isinstance(kind, str) else None,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else "",
    )
