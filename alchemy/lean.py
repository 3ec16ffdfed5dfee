"""Modules the worker keeps out because nothing it runs uses them (issue 12: memory).

Both rely on the import system's rule that a ``None`` entry in ``sys.modules`` makes
``import NAME`` raise ``ImportError``: a library that guards an optional import then takes
its not-installed branch. Neither is used by a handler or by alchemy itself."""

from __future__ import annotations

import sys


def keep_out_otel_metrics() -> None:
    """redis-py imports OpenTelemetry's metrics API whenever it is installed (the Anthropic
    SDK brings ``opentelemetry-api``) for an instrumentation that is off unless a program
    turns it on, which alchemy never does: ~0.4 MB of every process. The Anthropic SDK's
    tracing imports ``opentelemetry.trace``, which stays importable. Must run before
    ``redis`` is imported (``python -m alchemy`` calls it first)."""
    if "opentelemetry.metrics" not in sys.modules:
        sys.modules["opentelemetry.metrics"] = None  # type: ignore[assignment]


def keep_out_trio() -> None:
    """The worker runs on asyncio only, but httpcore2 (under both SDKs) imports trio
    whenever it is installed (selenium, a test tool, brings it): 94 modules and ~3 MB no
    worker uses."""
    if "trio" not in sys.modules:
        sys.modules["trio"] = None  # type: ignore[assignment]
