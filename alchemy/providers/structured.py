"""Structured output: the JSON schema sent to a provider, parsing and validating the reply,
and the single repair round.

The schema comes from a pydantic model. Both APIs' strict modes accept a subset of JSON
Schema (objects with every property required and no others, arrays, enums, plain types),
so :func:`strict_schema` moves bounds such as ``minimum`` or ``maxLength`` into the field's
description; pydantic still enforces them when the reply is validated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from alchemy.providers.base import OutputInvalidError, Repair, TextProvider, TextRequest, Usage
from alchemy.storable import storable

T = TypeVar("T", bound=BaseModel)

_MOVED_TO_DESCRIPTION: Final = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)
_DROPPED: Final = ("title", "default", "format", "examples", "uniqueItems")
_FENCE: Final = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
MAX_PROBLEMS: Final = 5


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema for ``model`` in the subset both providers' strict modes accept."""
    converted: dict[str, Any] = _strict(model.model_json_schema())
    return converted


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    bounds = []
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key in _MOVED_TO_DESCRIPTION:
            bounds.append(f"{key}: {value}")
            continue
        if key == "properties":
            out[key] = {name: _strict(prop) for name, prop in value.items()}
        elif key == "$defs":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if out.get("type") == "object" and "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    if bounds:
        note = "{" + ", ".join(bounds) + "}"
        out["description"] = f"{out['description']} {note}" if "description" in out else note
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_output(model: type[T], text: str) -> T:
    """The reply as a validated ``model`` (its strings cleaned of what PostgreSQL cannot
    store), or :class:`ValueError` saying what is wrong."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        value = json.loads(stripped, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, or NaN / Infinity
        raise ValueError(f"not valid JSON: {exc}") from None
    try:
        # What PostgreSQL refuses (a NUL character, a lone surrogate) is taken out here, so
        # a reply that was paid for is never lost to the write that stores it.
        return model.model_validate(storable(value))
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()[:MAX_PROBLEMS]
        ]
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise ValueError("does not match the schema: " + "; ".join(problems) + suffix) from None


@dataclass(frozen=True, slots=True)
class Structured(Generic[T]):
    value: T
    raw_text: str
    provider: str
    model: str
    usage: Usage
    repaired: bool


async def generate_structured(provider: TextProvider, request: TextRequest) -> Structured[Any]:
    """Generate, validate, and on an invalid reply ask once for a corrected one.

    A second invalid reply raises :class:`OutputInvalidError` (permanent) with the raw text.
    """
    first = await provider.generate(request)
    try:
        value = parse_output(request.output, first.text)
        return Structured(value, first.text, first.provider, first.model, first.usage, False)
    except ValueError as exc:
        problem = str(exc)
    second = await provider.generate(replace(request, repair=Repair(first.text, problem)))
    usage = first.usage + second.usage
    try:
        value = parse_output(request.output, second.text)
    except ValueError as exc:
        raise OutputInvalidError(
            f"{first.provider} {first.model}: the reply was not valid after one repair: {exc}",
            raw_text=second.text,
        ) from None
    return Structured(value, second.text, second.provider, second.model, usage, True)


def repair_prompt(repair: Repair) -> str:
    return (
        f"Your previous reply could not be used: {repair.problem}.\n"
        "Reply again with only the corrected JSON object, matching the schema exactly."
    )
