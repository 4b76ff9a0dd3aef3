"""Every fuzzing finding, kept as a named test with its minimal input (docs/fuzzing.md).

The ones marked ``xfail(strict=True)`` are findings in files other engineers were editing; the
docs say the fix. Once it lands, the test passes, strict xfail fails, and the mark comes off.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from destinations.warehouse.schema import rows_of
from gateway.errors import EventRejectedError, FqlEvaluationError, FqlSyntaxError
from gateway.events import RequestContext, normalize
from gateway.ingress.auth import KeyRing, basic_auth_key
from gateway.pipeline.fql import parse
from tests.fuzz.harness import Gateway, basic, check_answer


@pytest.fixture(name="gateway", scope="module")
def _gateway() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


def nested(depth: int) -> bytes:
    """A JSON array ``depth`` levels deep."""
    return b"[" * depth + b"]" * depth


def raw(path: str, body: bytes, *headers: bytes) -> bytes:
    """An HTTP/1.1 POST as bytes, headers exactly as given."""
    head = [f"POST {path} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close", *headers]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# Finding 1: orjson reads 1024 levels of nesting but writes only 254; normalize's dumps raised.


def test_event_nested_300_deep_is_a_400_not_a_500(gateway: Gateway) -> None:
    """A single event with properties nested 300 deep is refused as invalid_event, not a 500."""
    body = b'{"userId":"u","event":"e","properties":{"a":' + nested(300) + b"}}"
    answer = gateway.request("POST", "/v1/track", body, {"Authorization": basic()})
    payload = check_answer("/v1/track", answer)
    assert (answer.status, payload["code"]) == (400, "invalid_event")


@pytest.mark.parametrize("padding", [0, 33_000], ids=["small-batch", "batch-over-32KB"])
def test_batch_item_nested_300_deep_is_rejected_beside_a_stored_one(
    gateway: Gateway, padding: int
) -> None:
    """In a batch, the too-deep item is rejected and the valid ones beside it stored (over 32 KB
    each item's size is checked first, which encoded it too)."""
    deep = b'{"type":"track","userId":"u","event":"e","properties":{"a":' + nested(300) + b"}}"
    kept = [
        b'{"type":"track","userId":"u","event":"e","messageId":"kept-%d",' % i
        + b'"properties":{"p":"'
        + b"x" * (padding // 2)
        + b'"}}'
        for i in (1, 2)
    ]
    body = b'{"batch":[' + b",".join([deep, *kept]) + b"]}"
    answer = gateway.request("POST", "/v1/batch", body, {"Authorization": basic()})
    payload = check_answer("/v1/batch", answer)
    assert answer.status == 200
    assert [(r["index"], r["code"]) for r in payload["rejected"]] == [(0, "invalid_event")]
    assert [m["messageId"] for m in answer.stored] == ["kept-1", "kept-2"]


def test_normalize_refuses_an_unencodable_event() -> None:
    """normalize() raises EventRejectedError (not orjson's TypeError) for a too-deep event."""
    request = RequestContext(source="web", received_at=datetime.now(UTC), client_ip=None)
    item = {"userId": "u", "event": "e", "properties": {"a": orjson.loads(nested(300))}}
    with pytest.raises(EventRejectedError, match="nested too deeply"):
        normalize(item, request, route_type="track")


# Finding 2: a batch's sentAt out of range once converted to UTC made RequestContext overflow.


@pytest.mark.parametrize("sent_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_batch_sent_at_out_of_utc_range_is_a_400(gateway: Gateway, sent_at: str) -> None:
    """A batch-level sentAt that overflows in UTC is refused as invalid_request, not a 500."""
    body = orjson.dumps({"batch": [], "sentAt": sent_at})
    answer = gateway.request("POST", "/v1/batch", body, {"Authorization": basic()})
    payload = check_answer("/v1/batch", answer)
    assert (answer.status, payload["code"]) == (400, "invalid_request")


# Finding 3: base64.b64decode raises ValueError (not binascii.Error) for a str that is not ASCII.


@pytest.mark.parametrize("value", [b"Basic \xc3\xa9", b"Basic \xff"])
def test_basic_auth_that_is_not_ascii_is_a_401(gateway: Gateway, value: bytes) -> None:
    """``Authorization: Basic`` with bytes that are not ASCII is a JSON 401, not a 500."""
    status, head, body = gateway.raw_request(
        raw("/v1/track", b'{"userId":"u","event":"e"}', b"Authorization: " + value)
    )
    assert status == 401, head
    assert orjson.loads(body)["code"] == "missing_write_key"  # what a Basic that won't decode is


def test_basic_auth_key_of_non_ascii_text_is_empty() -> None:
    """basic_auth_key() returns "" (a Basic header that does not decode) for non-ASCII text."""
    assert basic_auth_key("Basic é") == ""


# Finding 4: KeyRing encoded keys with "surrogateescape", which raises for most lone surrogates.


def test_key_lookup_of_a_lone_surrogate_finds_nothing() -> None:
    """Looking up a key holding a lone surrogate returns None instead of raising."""
    assert KeyRing([("k", "web")]).source_for("\ud800") is None


# Finding 5 (gateway/ingress/common.py): the trusted proxy header's value is used as context.ip
# unchecked; bytes that are not UTF-8 made the event unencodable (a 500 before finding 1's fix,
# a 400 for every event of that client since).


def test_forwarded_address_that_is_not_utf8_is_ignored(gateway: Gateway) -> None:
    """An X-Forwarded-For (the trusted proxy header) that is not an address does not cost the
    event: it is stored with the connection's address as context.ip."""
    status, head, _ = gateway.raw_request(
        raw(
            "/v1/track",
            b'{"userId":"u","event":"e"}',
            b"Authorization: " + basic().encode(),
            b"X-Forwarded-For: \xff\xfe",
        )
    )
    assert status == 200, head


# Finding 6 (gateway/app.py, aiohttp's parser): a header line over 8190 bytes was refused by
# aiohttp before any handler ran, with a text/plain 400 that Ruby's SDK cannot parse; header
# lines up to 64 KiB now reach the handlers.


def test_header_over_aiohttp_limit_gets_a_json_answer(gateway: Gateway) -> None:
    """A request whose Authorization header is 12 KB long gets a JSON refusal."""
    value = b"Basic " + base64.b64encode(b"k" * 9000)
    status, head, body = gateway.raw_request(raw("/v1/track", b"{}", b"Authorization: " + value))
    assert 400 <= status < 500
    assert b"application/json" in head.lower()
    assert orjson.loads(body)["success"] is False


# Finding 7 (gateway/pipeline/fql_semantics.py): strict equality recursed once per level of
# nesting, so comparing two ~600-deep arrays raised RecursionError instead of evaluating.


def test_fql_equality_of_deeply_nested_values_evaluates() -> None:
    """``a = b`` on two 600-deep arrays gives true (or FqlEvaluationError), not RecursionError."""
    deep = orjson.loads(nested(600))
    expression = parse("properties.a = properties.b")
    try:
        result = expression.value({"properties": {"a": deep, "b": deep}})
    except FqlEvaluationError:
        return
    assert result is True


# Finding 8 (gateway/pipeline/fql_syntax.py, fql_codegen.py): match() compiles a glob into a
# backtracking regex; with several stars the time grows as a power of the subject's length, so
# one event (a user agent, a 32 KB property) holds a core for hours.

_GLOB_PROBE = """
from gateway.pipeline.fql import parse
print(parse("match(x, 'a*a*a*a*b')").value({"x": "a" * 5000}))
"""


def test_fql_glob_with_many_stars_is_linear() -> None:
    """``match(x, 'a*a*a*a*b')`` on 5,000 'a's answers false at once; as a backtracking regex it
    takes about 10^14 steps, so it is run in a child stopped after 10 s (a hang, not a slow case:
    the linear matcher takes milliseconds)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _GLOB_PROBE], capture_output=True, timeout=10, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("match() with four stars on 5,000 characters did not finish in 10 s")
    assert done.stdout.strip() == b"False"


# Finding 10 (gateway/pipeline/fql_syntax.py, glob): a class holding "--" after a member is
# passed to re as written, which warns "Possible set difference" (FutureWarning: its meaning
# will change in a future Python); under warnings-as-errors parse() raises it.


def test_glob_class_with_two_hyphens_parses_without_a_warning() -> None:
    """``match(x, '[a--]')`` parses (or is a syntax error) without re's FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with contextlib.suppress(FqlSyntaxError):
            parse("match(x, '[a--]')")


# Finding 9 (destinations/warehouse/schema.py): in an event's own table (and pages, screens,
# identifies, groups) properties are flattened after the common columns, and only the reserved
# columns are guarded, so a property whose name snake_cases to "channel" or "context_<x>"
# silently replaces the top-level channel or that context field.


def test_property_named_like_a_context_column_does_not_replace_it() -> None:
    """Properties "context_ip" and "channel" do not overwrite context.ip and the channel."""
    message = {
        "type": "track",
        "event": "Clicked",
        "messageId": "m",
        "userId": "u",
        "channel": "server",
        "context": {"ip": "10.0.0.1"},
        "properties": {"context_ip": "from a property", "channel": "from a property"},
    }
    _tracks, own = rows_of(message)
    assert own.values["context_ip"] == "10.0.0.1"
    assert own.values["channel"] == "server"
