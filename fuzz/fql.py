"""Atheris harness: FQL on arbitrary text, evaluated on arbitrary JSON messages.

Oracles: parse() raises nothing but FqlSyntaxError (with a position inside the text), never
RecursionError; an expression's value is a JSON value or FqlEvaluationError.
"""

from __future__ import annotations

import sys

import _setup  # noqa: F401 - puts the repository on sys.path
import atheris

with atheris.instrument_imports():
    import orjson

    from tests.fuzz.fql_oracles import check_evaluation, check_parse

FALLBACK = {"type": "track", "event": "Order Completed", "properties": {"plan": "pro", "n": 3}}


def test_one_input(data: bytes) -> None:
    """Parse the first part of ``data`` as FQL and evaluate it on the rest as a JSON message."""
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 400))
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    expression = check_parse(text)
    if expression is None:
        return
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = FALLBACK
    if not isinstance(message, dict):
        message = {"properties": message}
    check_evaluation(expression, message)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
