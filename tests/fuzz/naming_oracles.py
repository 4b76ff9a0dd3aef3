"""What every warehouse name must satisfy, for the naming fuzz test and ``fuzz/naming.py``."""

from __future__ import annotations

import re
from typing import Any

from destinations.warehouse import naming, schema
from destinations.warehouse.naming import (
    MAX_IDENTIFIER_BYTES,
    STANDARD_TABLES,
    column_name,
    identifier,
    snake_case,
    table_name,
)
from destinations.warehouse.schema import rows_of

__all__ = ["check_identifier", "check_names", "check_row_columns"]

# What PostgreSQL (and DuckDB, which uses its parser) reads unquoted without folding case:
# ASCII lower case, digits and "_", and any character beyond ASCII.
_UNQUOTED = re.compile(r"[a-z0-9_\u0080-\U0010ffff]+")
_RESERVED: frozenset[str] = naming._RESERVED


def check_identifier(name: str) -> None:
    """``name`` is a usable identifier: non-empty, at most 63 bytes of valid UTF-8, needing no
    quotes, not starting with a digit, not a reserved word."""
    assert name, "empty identifier"
    assert len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES, name
    assert _UNQUOTED.fullmatch(name), name
    assert name[0] not in "0123456789", name
    assert name not in _RESERVED, name


def check_names(first: str, second: str) -> None:
    """The names of ``first`` and ``second`` as keys, paths and events are valid, deterministic,
    and distinct when their snake_case differs."""
    for key in (first, second):
        snake = snake_case(key)
        assert snake == snake_case(key)
        assert not snake.startswith("_"), snake
        assert not snake.endswith("_"), snake
        for name in (identifier(snake), column_name((key,)), table_name(key)):
            check_identifier(name)
        assert column_name((key,)) == column_name((key,))
        assert table_name(key) not in STANDARD_TABLES
        check_identifier(column_name((key, first, second)))
    if snake_case(first) != snake_case(second):
        assert column_name((first,)) != column_name((second,)), (first, second)
        assert table_name(first) != table_name(second), (first, second)


def check_row_columns(
    properties: dict[str, Any], context: dict[str, Any], *, strict: bool = False
) -> None:
    """In a track's own table, a property and a context field never share a column, and two
    properties share one only when their keys snake_case alike.

    Unless ``strict``, the open finding (a property named ``channel`` or ``context_*`` takes the
    column of the top-level channel or of that context field) is let through.
    """
    message = {
        "type": "track",
        "event": "Fuzzed",
        "messageId": "m",
        "userId": "u",
        "properties": properties,
        "context": context,
        "channel": "server",
    }
    _tracks, own = rows_of(message)
    for column in own.values:
        check_identifier(column)
    scalar_properties = {
        snake_case(k) for k, v in properties.items() if v is not None and not isinstance(v, dict)
    }
    context_columns = {
        schema._column("context", k, MAX_IDENTIFIER_BYTES, False)
        for k, v in context.items()
        if v is not None and not isinstance(v, dict)
    }
    property_columns = {
        schema._column("", k, MAX_IDENTIFIER_BYTES, True)
        for k, v in properties.items()
        if v is not None and not isinstance(v, dict)
    }
    assert len(property_columns) == len(scalar_properties), properties
    if not strict:
        property_columns = {
            c for c in property_columns if c != "channel" and not c.startswith("context")
        }
    clash = property_columns & (context_columns | {"channel"})
    assert not clash, f"properties overwrite {sorted(clash)}"
