"""Segment's warehouse naming rules (WIRE.md section 5)."""

from __future__ import annotations

import pytest

from destinations.warehouse.naming import (
    MAX_IDENTIFIER_BYTES,
    column_name,
    identifier,
    snake_case,
    table_name,
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("sampleText", "sample_text", id="camel-case"),
        pytest.param("2FA Enabled", "2fa_enabled", id="digits-and-space"),
        pytest.param("CStringRef", "cstring_ref", id="leading-capitals"),
        pytest.param("Order Completed", "order_completed", id="event-name"),
        pytest.param("already_snake", "already_snake", id="unchanged"),
        pytest.param("  spaced--out!!", "spaced_out", id="punctuation-runs"),
        pytest.param("URL", "url", id="all-capitals"),
        pytest.param("__x__", "x", id="edge-underscores"),
        pytest.param("🎉 Party", "party", id="emoji-dropped"),
    ],
)
def test_snake_case(key: str, expected: str) -> None:
    """Keys are snake_cased as Segment's warehouses name them."""
    assert snake_case(key) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(("2FA Enabled",), "_2fa_enabled", id="leading-digit-prefixed"),
        pytest.param(("user",), "_user", id="reserved-word-prefixed"),
        pytest.param(("select",), "_select", id="select-prefixed"),
        pytest.param(("address", "zipCode"), "address_zip_code", id="nested-joined"),
        pytest.param(("context", "library", "name"), "context_library_name", id="context"),
        pytest.param(("!!!",), "_", id="nothing-left"),
    ],
)
def test_column_name(path: tuple[str, ...], expected: str) -> None:
    """Column names are unquoted-safe: digits and reserved words get a ``_`` prefix."""
    assert column_name(path) == expected


def test_long_names_are_capped_without_collisions() -> None:
    """Names over 63 bytes are cut and hashed, so two long names sharing a prefix differ."""
    first = column_name(("a" * 70 + "_first",))
    second = column_name(("a" * 70 + "_second",))
    assert len(first.encode()) <= MAX_IDENTIFIER_BYTES
    assert len(second.encode()) <= MAX_IDENTIFIER_BYTES
    assert first != second
    assert first == column_name(("a" * 70 + "_first",))


def test_cap_counts_bytes_not_characters() -> None:
    """A multi-byte name is cut on a character boundary within the byte limit."""
    name = identifier("é" * 40)
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
    name.encode().decode()  # still valid UTF-8


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param("Order Completed", "order_completed", id="slug"),
        pytest.param("Pages", "_pages", id="standard-table-name-prefixed"),
        pytest.param("users", "_users", id="users-prefixed"),
        pytest.param("1st Purchase", "_1st_purchase", id="leading-digit"),
    ],
)
def test_table_name(event: str, expected: str) -> None:
    """A track event's table never collides with a standard table or starts with a digit."""
    assert table_name(event) == expected
