"""Hypothesis strategies for hostile input: JSON text that is almost valid, Segment events with
wrong fields, request bodies in every encoding, arbitrary JSON values.

JSON is generated as text (bytes), not as Python values, so it can hold what no encoder writes:
NaN, Infinity, numbers past any float, duplicate keys, lone surrogate escapes, bytes that are not
UTF-8 and nesting past every parser's limit.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import strategies as st

__all__ = [
    "ODD_TIMESTAMPS",
    "batch_bodies",
    "deep_json",
    "dumps",
    "event_bytes",
    "gzip_variants",
    "json_event_bytes",
    "json_text",
    "json_values",
    "segops_bodies",
    "valid_event",
]

SEGMENT_KEYS = [
    "type", "userId", "anonymousId", "messageId", "event", "name", "category", "groupId",
    "previousId", "timestamp", "originalTimestamp", "sentAt", "context", "integrations",
    "properties", "traits", "version", "channel", "writeKey", "batch", "ip", "direct", "All",
]  # fmt: skip
ODD_NUMBERS = [
    "0", "-0", "1e308", "1e309", "-1e999", "1.5e-400", "NaN", "Infinity", "-Infinity",
    "18446744073709551616", "-9223372036854775809", "123456789" * 60, "0x10", "01", "1.", ".5",
    "+1", "1e", "--1", "9" * 5000,
]  # fmt: skip
ODD_STRINGS = [
    b'""', b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\ude00"', b'"\\u0000"', b'"\xff"',
    b'"\xed\xa0\x80"', b'"\xc3"', b'"caf\xc3\xa9"', b'"\\"', b'"\\x41"', b'"a\nb"', b'"\\/"',
    b'"' + b"a" * 40_000 + b'"', b'"' + "\U0001f389".encode() * 2000 + b'"',
]  # fmt: skip
ODD_TIMESTAMPS = [
    "2024-01-01T00:00:00Z", "2024-01-01T00:00:00+02:00", "2024-01-01T00:00:00.123456Z",
    "2024-01-01T00:00:00.123456789Z", "2024-01-01", "2024-01-01T00:00:00", "2024-01-01 00:00:00",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z", "2024-13-45T99:99:99Z", "2024-02-30T00:00:00Z", "1700000000",
    "now", "", "2024-W01-1", "+002024-01-01T00:00:00Z", "2024-01-01T00:00:00+25:00",
    "2024-01-01T24:00:00Z", "2024-01-01T00:00:60Z", "2024-01-01T00:00:00z", "T00:00:00Z",
]  # fmt: skip
ODD_TIMESTAMP_JSON = [json.dumps(t).encode() for t in ODD_TIMESTAMPS] + [
    b"1700000000",
    b"1700000000000",
    b"-62135596800",
    b"1e20",
    b"253402300800",
    b"true",
    b"[]",
]
_UTF8 = st.characters(codec="utf-8")
KEY_TEXT = st.sampled_from([json.dumps(k).encode() for k in SEGMENT_KEYS]) | st.text(
    max_size=8
).map(lambda t: json.dumps(t).encode())


def _scalar_text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from([b"null", b"true", b"false"]),
        st.integers().map(lambda n: str(n).encode()),
        st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: json.dumps(f).encode()),
        st.sampled_from([n.encode() for n in ODD_NUMBERS]),
        st.text(max_size=20).map(
            lambda t: json.dumps(t, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ),
        st.sampled_from(ODD_STRINGS),
        st.sampled_from(ODD_TIMESTAMP_JSON),
    )


def dumps(value: Any) -> bytes:
    """``value`` as JSON text; integers of any size, lone surrogates as bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


def deep_json(max_depth: int = 1200) -> st.SearchStrategy[bytes]:
    """JSON nested ``1..max_depth`` levels deep (arrays, objects or both), around a scalar."""
    return st.tuples(
        st.integers(1, max_depth), st.sampled_from(["[", '{"a":', "mix"]), _scalar_text()
    ).map(_nest)


def _nest(spec: tuple[int, str, bytes]) -> bytes:
    depth, kind, leaf = spec
    opens = [("[" if i % 2 else '{"a":') if kind == "mix" else kind for i in range(depth)]
    closes = ["]" if o == "[" else "}" for o in reversed(opens)]
    return "".join(opens).encode() + leaf + "".join(closes).encode()


json_text: st.SearchStrategy[bytes] = (
    st.recursive(
        _scalar_text(),
        lambda children: (
            st.lists(children, max_size=4).map(_array)
            | st.lists(st.tuples(KEY_TEXT, children), max_size=4).map(_object)
        ),
        max_leaves=16,
    )
    | deep_json()
)
"""Almost-JSON text: any value, most of it valid, some of it not."""

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value orjson reads back (what a parsed body holds)."""


def valid_event(message_id: str, *, batch: bool = True) -> dict[str, Any]:
    """A small, valid track event with ``message_id``; with ``type`` when for a batch."""
    event: dict[str, Any] = {"userId": "fuzz-user", "event": "Fuzzed", "messageId": message_id}
    if batch:
        event["type"] = "track"
    return event


def _event_fields(*, valid_json: bool = False) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """A Segment event as (key, value) JSON pairs: valid fields, some replaced by odd ones (with
    ``valid_json``, only by values of the wrong type or shape, so the event stays JSON)."""
    good: dict[str, st.SearchStrategy[Any]] = {
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]),
        "userId": st.text(_UTF8, min_size=1, max_size=10),
        "anonymousId": st.text(_UTF8, max_size=10),
        "event": st.text(_UTF8, max_size=300),
        "groupId": st.text(_UTF8, max_size=5),
        "previousId": st.text(_UTF8, max_size=5),
        "messageId": st.text(_UTF8, max_size=110),
        "timestamp": st.sampled_from(ODD_TIMESTAMPS),
        "sentAt": st.sampled_from(ODD_TIMESTAMPS),
        "originalTimestamp": st.sampled_from(ODD_TIMESTAMPS),
        "properties": json_values,
        "traits": json_values,
        "context": st.fixed_dictionaries(
            {},
            optional={"ip": st.text(_UTF8, max_size=5), "direct": st.booleans(), "x": json_values},
        ),
        "integrations": st.dictionaries(st.text(_UTF8, max_size=5), json_values, max_size=3),
        "version": json_values,
        "writeKey": st.just("test-write-key"),
    }
    field = st.sampled_from(sorted(good)).flatmap(
        lambda key: st.tuples(
            st.just(json.dumps(key).encode()),
            good[key].map(dumps) | (json_values.map(dumps) if valid_json else json_text),
        )
    )
    if valid_json:
        return st.lists(field, max_size=10)
    return st.lists(field | st.tuples(KEY_TEXT, json_text), max_size=10)


event_bytes: st.SearchStrategy[bytes] = _event_fields().map(_object)
"""A Segment event as JSON text, near-valid: wrong types, odd timestamps, duplicate keys..."""
json_event_bytes: st.SearchStrategy[bytes] = _event_fields(valid_json=True).map(_object)
"""A Segment event that is valid JSON but maybe not a valid event: wrong types, odd timestamps,
duplicate keys, missing fields."""


@st.composite
def batch_bodies(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[bytes, list[int]]:
    """A ``/v1/batch`` body with a valid envelope: bad events mixed with valid ones.

    Returns the body and the indexes of the valid events (their messageIds are ``valid-<i>``).
    """
    items: list[bytes] = []
    valid: list[int] = []
    for index in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            valid.append(index)
            items.append(orjson.dumps(valid_event(f"valid-{index}")))
        else:
            items.append(draw(json_event_bytes | json_event_bytes | event_bytes | json_text))
    pairs = [(b'"batch"', _array(items)), (b'"writeKey"', b'"test-write-key"')]
    if draw(st.booleans()):
        pairs.append((b'"sentAt"', json.dumps(draw(st.sampled_from(_PARSEABLE))).encode()))
    if draw(st.booleans()):
        context = draw(st.dictionaries(st.text(_UTF8, max_size=4), json_values, max_size=3))
        pairs.append((b'"context"', dumps(context)))
    return _object(draw(st.permutations(pairs))), valid


# Timestamps pydantic takes as a batch's sentAt (the envelope must be valid for a 200).
_PARSEABLE = [t for t in ODD_TIMESTAMPS[:13] if t not in ("2024-13-45T99:99:99Z",)]


@st.composite
def segops_bodies(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """A SegOps event or batch, near-valid."""
    event = st.fixed_dictionaries(
        {},
        optional={
            "user_id": json_values | st.text(min_size=1, max_size=5),
            "event_type": st.sampled_from(["order_placed", "context_identified", "Bad Name", ""])
            | st.text(max_size=5),
            "occurred_at": st.sampled_from(ODD_TIMESTAMPS) | json_values,
            "payload": json_values,
        },
    ).map(dumps)
    one = event | json_text
    if draw(st.booleans()):
        return draw(one)
    events = _array(draw(st.lists(one, max_size=8)))
    return events if draw(st.booleans()) else _object([(b'"events"', events)])


def gzip_variants(body: bytes) -> dict[str, bytes]:
    """``body`` compressed in each way a client may (or may wrongly) send it."""
    packed = gzip.compress(body)
    return {
        "gzip": packed,
        "gzip-truncated": packed[: max(1, len(packed) // 2)],
        "gzip-trailing-garbage": packed + b"garbage",
        "gzip-two-members": packed + packed,
        "deflate": zlib.compress(body),
        "raw-deflate": _raw_deflate(body),
        "plain-but-says-gzip": body,
    }


def _raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(body) + compressor.flush()
