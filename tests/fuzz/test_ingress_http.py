"""Fuzzing both ingress APIs over HTTP, in process: any path, headers, encoding and body.

No request may get a 5xx or a non-JSON answer; every refusal is ``{success: false, code,
message}``; a batch keeps its valid events beside the bad ones and lists the bad ones.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.harness import API_KEY, Answer, Gateway, basic, check_answer
from tests.fuzz.strategies import (
    batch_bodies,
    event_bytes,
    gzip_variants,
    json_event_bytes,
    json_text,
    segops_bodies,
    valid_event,
)
from tests.fuzz.test_body import bomb

SEGMENT_PATHS = [
    "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/t",
    "/v1/batch", "/v1/b", "/v1/import", "/v1/import/",
]  # fmt: skip
SEGOPS_PATHS = [
    "/api/ingestion/track/", "/api/ingestion/track", "/api/ingestion/track/batch/",
]  # fmt: skip
ODD_PATHS = ["/v1/unknown", "/v1/", "/v1/pixel/track", "/api/ingestion/", "/v1/track/"]
CONTENT_TYPES = [
    None, "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1", "",
]  # fmt: skip
ENCODINGS = [None, "gzip", "x-gzip", "GZIP", "deflate", "identity", "br", "gzip, gzip", " gzip "]


def _authorizations(path: str) -> st.SearchStrategy[str | None]:
    good = f"Bearer {API_KEY}" if path.startswith("/api/") else basic()
    return st.sampled_from(
        [
            *[good] * 10,
            None,
            basic("wrong-key"),
            basic(""),
            "Basic",
            "Basic !!!not-base64",
            "Basic " + "QUJD" * 1500,  # under aiohttp's header limit
            "Basic /w==",  # decodes to a byte that is not UTF-8
            "Basic é",  # not ASCII
            "Bearer ",
            f"bearer {API_KEY}",
            "Digest x",
            basic() + " trailing",
        ]
    )


Request = tuple[str, str, bytes, dict[str, str], bool, list[int], bool]


@st.composite
def requests(
    draw: Callable[[st.SearchStrategy[Any]], Any],
) -> tuple[str, str, bytes, dict[str, str], bool, list[int]]:
    """One request: (method, path, body, headers, chunked, indexes of the known-valid batch
    items, whether it must be accepted)."""
    # Weighted towards the real routes: unknown paths and methods need few cases.
    path = draw(st.sampled_from(SEGMENT_PATHS * 3 + SEGOPS_PATHS * 3 + ODD_PATHS))
    method = draw(st.sampled_from(["POST"] * 30 + ["GET", "PUT", "OPTIONS"]))
    valid: list[int] = []
    if path.startswith("/api/"):
        body = draw(segops_bodies() | json_text | st.binary(max_size=64))
    elif "batch" in path or path in ("/v1/b", "/v1/import", "/v1/import/"):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            body = draw(st.binary(max_size=64) | json_text)
        else:
            body, valid = draw(batch_bodies())
    else:
        single = orjson.dumps(valid_event("single", batch=False))
        body = draw(json_event_bytes | event_bytes | json_text | st.binary(max_size=64))
        body = single if draw(st.integers(0, 5)) == 0 else body
    headers: dict[str, str] = {}
    authorization = draw(_authorizations(path))
    if authorization is not None:
        headers["Authorization"] = authorization
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from(ENCODINGS))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
            variants = gzip_variants(body)
            body = variants[draw(st.sampled_from(sorted(variants)))]
    if draw(st.integers(0, 9)) == 0:
        headers["X-Forwarded-For"] = draw(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
        )
    chunked = draw(st.integers(0, 4)) == 0
    must_accept = (
        bool(valid)
        and method == "POST"
        and headers.get("Authorization") in (basic(), None)
        and headers.get("Content-Encoding") in (None, "identity")
        and len(body) <= 500 * 1024
        and _parses(body)
    )
    return method, path, body, headers, chunked, valid, must_accept


def _parses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.fixture(name="gateway", scope="module")
def _gateway() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


def check_batch(answer: Answer, payload: dict[str, Any], valid: list[int]) -> None:
    """A 200 batch stored each valid event and exactly the events it did not reject."""
    rejected = {item["index"] for item in payload.get("rejected", [])}
    assert not rejected & set(valid), (rejected, valid)
    stored_ids = {m["messageId"] for m in answer.stored}
    assert {f"valid-{i}" for i in valid} <= stored_ids, (valid, stored_ids)


@fuzz_settings(ci_examples=400, long_examples=2_000_000)
@given(request=requests())
def test_no_request_gets_a_5xx(gateway: Gateway, request: Request) -> None:
    """Any request to any ingress path gets a JSON answer below 500; refusals have code and
    message; a valid batch envelope gets 200 and keeps every valid event."""
    method, path, body, headers, chunked, valid, must_accept = request
    answer = gateway.request(method, path, body, headers, chunked=chunked)
    if method == "OPTIONS" and answer.status == 204:  # a CORS preflight: no body
        return
    if method == "GET" and path.startswith("/v1/pixel/"):  # always the gif
        assert (answer.status, answer.content_type) == (200, "image/gif")
        return
    payload = check_answer(path, answer)
    event(f"status {answer.status}")
    if method != "POST":
        assert answer.status in (404, 405), answer.status
        return
    if must_accept:
        assert answer.status == 200, payload
    if answer.status == 200 and valid:
        event("batch with valid items accepted")
        check_batch(answer, payload, valid)
    if answer.status == 200 and "rejected" not in payload and path in SEGMENT_PATHS:
        batch = "batch" in path or path.startswith(("/v1/b", "/v1/import"))
        assert batch or len(answer.stored) == 1, answer.stored


@fuzz_settings(ci_examples=80, long_examples=500_000)
@given(
    items=st.lists(event_bytes | json_text, max_size=30),
    encoding=st.sampled_from([None, "gzip"]),
)
def test_batch_counts_add_up(gateway: Gateway, items: list[bytes], encoding: str | None) -> None:
    """A batch of arbitrary items is answered 200 (or refused whole), and stored plus rejected
    events are exactly the items sent."""
    body = b'{"batch":[' + b",".join(items) + b"]}"
    headers = {"Authorization": basic()}
    if encoding:
        body, headers["Content-Encoding"] = gzip.compress(body), encoding
    answer = gateway.request("POST", "/v1/batch", body, headers)
    payload = check_answer("/v1/batch", answer)
    if answer.status == 200:
        assert len(answer.stored) + len(payload.get("rejected", [])) == len(items)
        try:
            parsed = orjson.loads(b"[" + b",".join(items) + b"]")
        except orjson.JSONDecodeError:
            return
        assert len(parsed) == len(items)


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track", "/api/ingestion/track/batch/"])
def test_gzip_bomb_over_http_is_a_413(gateway: Gateway, path: str) -> None:
    """A gzip bomb (16 MB of zeros in 16 KB) is answered 413 with a JSON refusal."""
    authorization = f"Bearer {API_KEY}" if path.startswith("/api/") else basic()
    headers = {"Authorization": authorization, "Content-Encoding": "gzip"}
    answer = gateway.request("POST", path, bomb(16 << 20), headers)
    payload = check_answer(path, answer)
    assert (answer.status, payload["code"]) == (413, "payload_too_large")
