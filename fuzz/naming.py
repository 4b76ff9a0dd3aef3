"""Atheris harness: warehouse naming of arbitrary unicode event and property names.

Oracles: never raises; deterministic; at most 63 bytes of valid UTF-8; lower case letters,
digits and ``_`` or characters beyond ASCII (a PostgreSQL identifier needing no quotes); never
starting with an ASCII digit, never a reserved word; names whose snake_case differs stay
distinct; a track event's table is never a standard table.
"""

from __future__ import annotations

import sys

import _setup  # noqa: F401 - puts the repository on sys.path
import atheris

with atheris.instrument_imports():
    from tests.fuzz.naming_oracles import check_names


def test_one_input(data: bytes) -> None:
    """Check the names of two keys (and a nested path) taken from ``data``."""
    fdp = atheris.FuzzedDataProvider(data)
    first = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200))
    second = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200))
    check_names(first, second)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
