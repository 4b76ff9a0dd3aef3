"""Fuzzing the warehouse naming (destinations/warehouse/naming.py) with arbitrary unicode."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.naming_oracles import check_names, check_row_columns

# Segment-like keys, their neighbours, and anything unicode has (surrogates included).
ODD_KEYS = [
    "sampleText", "sample_text", "2FA Enabled", "user", "id", "Users", "select", "é" * 40,
    "a" * 70 + "_first", "İstanbul", "ǅ", "١٢٣", "²nd", "🎉", "\x00", "\ud800", "context_ip",
    "channel", "_", "", " ", "K",
]  # fmt: skip
keys = (
    st.text()
    | st.sampled_from(ODD_KEYS)
    | st.text(st.characters(codec="utf-8"), min_size=50, max_size=80)
)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=3)


@fuzz_settings(ci_examples=2000)
@given(first=keys, second=keys)
def test_names_are_valid_and_distinct(first: str, second: str) -> None:
    """Every key and event name gives a valid identifier of at most 63 bytes, deterministic,
    and keys that snake_case differently get different columns and tables."""
    check_names(first, second)


@fuzz_settings(ci_examples=400)
@given(
    properties=st.dictionaries(keys, scalars, max_size=6),
    context=st.dictionaries(
        st.sampled_from(["ip", "locale", "userAgent"]) | keys, scalars, max_size=3
    ),
)
def test_row_columns_never_clash(properties: dict[str, Any], context: dict[str, Any]) -> None:
    """In a track's table, properties never overwrite a context column, and distinct snake_case
    keys get distinct columns."""
    check_row_columns(properties, context)
