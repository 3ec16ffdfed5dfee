"""Preparing the SQL a first job runs, on every pooled connection, before the first job.

asyncpg keeps a cache of prepared statements per connection and fills it on a statement's
first run there. That first run costs a Parse/Describe round trip and, for each type the
connection has not met yet (``uuid``, ``jsonb``, ``numeric``, the schema's own), an
introspection query: about 2 ms a statement on the development machine (37 statements on 7
connections took 585 ms), against about 0.25 ms once cached. A content job runs a dozen
statements, so the first jobs after a start each paid several milliseconds more than the
thousandth, once per connection they happened to get.

A handler module's statements are its module-level SQL constants (a string whose first word
is SELECT, INSERT, UPDATE, DELETE or WITH): a new constant is prepared without being listed
anywhere. SQL written inline in a call is not seen, and is prepared by its first run, as
before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any, Final

SQL_START: Final = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s", re.IGNORECASE)


def sql_constants(modules: Iterable[ModuleType]) -> list[str]:
    """The module-level SQL strings of ``modules``, in order, each once."""
    found: dict[str, None] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, str) and SQL_START.match(value):
                found[value] = None
    return list(found)


async def prepare_on(connection: Any, statements: Sequence[str]) -> None:
    """Put each of ``statements`` into ``connection``'s statement cache, as its first run
    would. ``Connection.prepare()`` would not: it returns a statement of its own and leaves
    the cache that ``fetch``/``execute`` read empty, so this calls the step those methods
    take before they run a query (asyncpg's ``_get_statement``, there since 0.10)."""
    for sql in statements:
        await connection._get_statement(sql, None)
