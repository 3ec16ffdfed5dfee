"""What PostgreSQL can store: text without NUL characters, valid UTF-8, and (in jsonb)
no NaN or infinity. Pure functions, for job data checked before any paid call and for
model output cleaned before it is stored."""

from __future__ import annotations

import math
import re
from typing import Final

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def storable_problem(value: object, path: str = "") -> str | None:
    """Why ``value`` cannot be written to PostgreSQL as text or jsonb (a NUL character, a
    NaN or an infinity, a lone surrogate), naming where it is; None when it can."""
    where = path or "the value"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where} holds a NUL character, which PostgreSQL cannot store"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where} holds a lone surrogate, which is not valid UTF-8"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}, which JSON and PostgreSQL's jsonb refuse"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = storable_problem(key, f"{where} key") or storable_problem(
                item, f"{path}.{key}" if path else str(key)
            )
            if problem:
                return problem
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = storable_problem(item, f"{where}[{index}]")
            if problem:
                return problem
    return None


def storable(value: object) -> object:
    """``value`` with what PostgreSQL refuses taken out: NUL characters removed, lone
    surrogates replaced by U+FFFD, NaN and infinities replaced by None."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
