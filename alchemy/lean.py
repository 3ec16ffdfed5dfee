"""Modules the worker keeps out, or loads late, because nothing it runs needs them at start
(issue 12: memory).

Two rely on the import system's rule that a ``None`` entry in ``sys.modules`` makes
``import NAME`` raise ``ImportError``: a library that guards an optional import then takes
its not-installed branch. Neither is used by a handler or by alchemy itself. The third gives
a module that is imported everywhere but rarely read a stand-in that loads it on first
use."""

from __future__ import annotations

import importlib
import importlib.util
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


def defer_importlib_metadata() -> None:
    """redis-py imports ``importlib.metadata`` when it is imported (it reads its own version
    from it when a client names itself to Redis, which alchemy's clients do from
    ``redis.__version__``: :mod:`alchemy.worker.connections`), and with it ``email``,
    ``zipfile`` and more: ~1.4 MB of a worker that never reads package metadata. This puts
    the standard library's lazy stand-in (``importlib.util.LazyLoader``) in its place: the
    module runs the first time anything reads from it, so code that uses it (the SDKs do,
    when they are imported at start) sees no difference. Must run before ``redis`` is
    imported (``python -m alchemy`` calls it first)."""
    if "importlib.metadata" in sys.modules:
        return
    spec = importlib.util.find_spec("importlib.metadata")
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["importlib.metadata"] = module
    importlib.metadata = module  # as an import would set it
    loader.exec_module(module)
