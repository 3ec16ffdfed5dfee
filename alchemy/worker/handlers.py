"""Loading queue handlers named ``"module:callable"`` in the configuration."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from alchemy.queue.job import Job


class Handler(Protocol):
    """An async callable that runs one job. Raise an :mod:`alchemy.errors` JobError to
    steer retries; any other exception is a failed attempt."""

    def __call__(self, job: Job, /) -> Awaitable[object]: ...


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a queue has no working handler."""

    reason: str


def load_handler(path: str) -> Handler | Unavailable:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure means "no working handler"
        return Unavailable(f"cannot import {module_name}: {type(exc).__name__}: {exc}")
    handler = getattr(module, attribute, None)
    if handler is None:
        return Unavailable(f"{module_name} has no attribute {attribute}")
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects count too
    )
    if not is_async:
        return Unavailable(f"{path} is not an async callable")
    result: Handler = handler
    return result
