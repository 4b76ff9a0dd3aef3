"""Segment's warehouse naming: snake_case table and column names that need no quoting.

``snake_case`` turns a key into a name: a lower-to-upper case boundary becomes ``_``
(``sampleText`` -> ``sample_text``, ``CStringRef`` -> ``cstring_ref``), every run of characters
that are neither letters nor digits becomes one ``_`` (``2FA Enabled`` -> ``2fa_enabled``), and
the result is lower case without leading or trailing ``_``. ``identifier`` then makes it safe to
write unquoted: a name that starts with a digit or is an SQL reserved word gets a ``_`` prefix, and
a name longer than the database allows is cut and given a hash of the whole name, so two long
names that share a prefix still differ.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "STANDARD_TABLES",
    "column_name",
    "identifier",
    "snake_case",
    "table_name",
]

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's limit; DuckDB has none, but both backends use it so queries port between them."""

STANDARD_TABLES = frozenset(
    {"tracks", "identifies", "users", "pages", "screens", "groups", "aliases"}
)

_CASE_BOUNDARY = re.compile(r"([a-z])([A-Z])")
_NOT_ALNUM = re.compile(r"[\W_]+")
_HASH_CHARS = 8

# PostgreSQL's reserved key words (including those allowed as function or type names) and
# DuckDB's additions: a column with one of these names would need quotes in every query.
_RESERVED_WORDS = """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric system_user table tablesample then to trailing true union unique
    user using variadic verbose when where window with
    anti asof pivot pivot_longer pivot_wider positional qualify semi unpivot
"""
_RESERVED = frozenset(_RESERVED_WORDS.split())


def snake_case(key: str) -> str:
    """``key`` in Segment's snake_case (possibly empty, possibly starting with a digit)."""
    spaced = _CASE_BOUNDARY.sub(r"\1_\2", key)
    return _NOT_ALNUM.sub("_", spaced).strip("_").lower()


def identifier(name: str, max_bytes: int = MAX_IDENTIFIER_BYTES) -> str:
    """``name`` (already snake_case) made safe to write unquoted, within ``max_bytes``."""
    if not name or name[0].isdigit() or name in _RESERVED:
        name = "_" + name
    if len(name.encode()) <= max_bytes:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:_HASH_CHARS]
    head = name.encode()[: max_bytes - _HASH_CHARS - 1].decode(errors="ignore").rstrip("_")
    return f"{head}_{digest}"


def column_name(path: tuple[str, ...], max_bytes: int = MAX_IDENTIFIER_BYTES) -> str:
    """The column of a (possibly nested) key: each part snake_cased, joined with ``_``."""
    return identifier("_".join(filter(None, map(snake_case, path))), max_bytes)


@functools.lru_cache(maxsize=4096)
def table_name(event: str, max_bytes: int = MAX_IDENTIFIER_BYTES) -> str:
    """The table of a track event named ``event``; never one of :data:`STANDARD_TABLES`."""
    slug = snake_case(event)
    if slug in STANDARD_TABLES:
        slug = "_" + slug
    return identifier(slug, max_bytes)
