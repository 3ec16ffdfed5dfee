"""Loading queue handlers named ``"module:callable"`` in the configuration.

A handler module gives the engine up to four things:

- the handler itself (the named async callable): runs one job; raise an
  :mod:`alchemy.errors` JobError to steer what happens next;
- ``on_dead`` (optional): ``async def on_dead(job: Job, death: Death) -> None``, called in
  the process that dead-letters one of its jobs, for every reason the engine decides
  (permanent error, attempts exhausted, poison after process deaths, a last attempt
  cancelled at the queue timeout, deferred too long), before the job goes to the
  dead-letter list; what it raises is logged and otherwise ignored;
- ``REQUIRES`` (optional): the names of the dependencies it needs (``("postgres",)``). A
  handler that raises :class:`~alchemy.errors.DependencyUnavailableError` for one of them
  holds every queue that requires it until the dependency's probe answers;
- ``warm`` (optional): ``async def warm() -> None``, awaited once per process after the
  services are open and before the first fetch (and so before systemd hears READY=1): it
  loads and builds what a first job would otherwise load on the event loop (SDK clients,
  schemas, dictionaries, a database connection), so the first job runs like the
  thousandth. What it raises is logged and otherwise ignored (the first job loads it).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from alchemy.queue.job import Death, Job


class Handler(Protocol):
    """An async callable that runs one job. Raise an :mod:`alchemy.errors` JobError to
    steer retries; any other exception is a failed attempt."""

    def __call__(self, job: Job, /) -> Awaitable[object]: ...


DeadHook = Callable[[Job, Death], Awaitable[object]]
WarmHook = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class HandlerModule:
    """A loaded handler and what its module tells the engine."""

    handle: Handler
    on_dead: DeadHook | None = None
    requires: tuple[str, ...] = ()
    warm: WarmHook | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a queue has no working handler."""

    reason: str


def _is_async(value: Any) -> bool:
    return inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - async callable objects count too
    )


def load_handler(path: str) -> HandlerModule | Unavailable:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure means "no working handler"
        return Unavailable(f"cannot import {module_name}: {type(exc).__name__}: {exc}")
    handler = getattr(module, attribute, None)
    if handler is None:
        return Unavailable(f"{module_name} has no attribute {attribute}")
    if not _is_async(handler):
        return Unavailable(f"{path} is not an async callable")
    on_dead = getattr(module, "on_dead", None)
    if on_dead is not None and not _is_async(on_dead):
        return Unavailable(f"{module_name}.on_dead is not an async callable")
    warm = getattr(module, "warm", None)
    if warm is not None and not _is_async(warm):
        return Unavailable(f"{module_name}.warm is not an async callable")
    requires = getattr(module, "REQUIRES", ())
    if isinstance(requires, str) or not all(isinstance(name, str) for name in requires):
        return Unavailable(f"{module_name}.REQUIRES must be a tuple of dependency names")
    return HandlerModule(handle=handler, on_dead=on_dead, requires=tuple(requires), warm=warm)
