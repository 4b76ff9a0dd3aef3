"""Tests for gateway/ingress/segment.py: the /v1 API as Segment's SDKs use it."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import LOG_KEY
from tests.conftest import WRITE_KEY, basic

Client = TestClient[Any, Any]


async def stored(client: Client) -> list[dict[str, Any]]:
    """Every message in the gateway's durable log, oldest first."""
    result = await client.app[LOG_KEY].read(0, 100_000, None)
    return [event.message for event in result.events]


def track(**fields: Any) -> dict[str, Any]:
    return {"userId": "u1", "event": "Clicked", **fields}


async def post(client: Client, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    data = body if isinstance(body, (bytes, AsyncIterator)) else orjson.dumps(body)
    async with client.post(path, data=data, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("path", "event_type", "body"),
    [
        pytest.param("/v1/track", "track", track(), id="track"),
        pytest.param("/v1/t", "track", track(), id="t"),
        pytest.param("/v1/identify", "identify", {"userId": "u"}, id="identify"),
        pytest.param("/v1/i", "identify", {"userId": "u"}, id="i"),
        pytest.param("/v1/page", "page", {"anonymousId": "a", "name": "Home"}, id="page"),
        pytest.param("/v1/p", "page", {"anonymousId": "a"}, id="p"),
        pytest.param("/v1/screen", "screen", {"userId": "u", "name": "Main"}, id="screen"),
        pytest.param("/v1/s", "screen", {"userId": "u"}, id="s"),
        pytest.param("/v1/group", "group", {"userId": "u", "groupId": "g"}, id="group"),
        pytest.param("/v1/g", "group", {"userId": "u", "groupId": "g"}, id="g"),
        pytest.param("/v1/alias", "alias", {"userId": "u", "previousId": "p"}, id="alias"),
        pytest.param("/v1/a", "alias", {"userId": "u", "previousId": "p"}, id="a"),
    ],
)
async def test_single_routes_store_their_type(
    client: Client, path: str, event_type: str, body: dict[str, Any]
) -> None:
    """Every single-call route answers exactly 200 {"success": true} and stores its type."""
    status, answer = await post(client, path, body, headers=basic())
    assert (status, answer) == (200, {"success": True})
    [message] = await stored(client)
    assert message["type"] == event_type


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import", "/v1/import/"])
async def test_batch_routes(client: Client, path: str) -> None:
    """Every batch alias stores all items."""
    batch = [{"type": "track", **track(messageId=f"m{i}")} for i in range(3)]
    status, answer = await post(client, path, {"batch": batch}, headers=basic())
    assert (status, answer) == (200, {"success": True})
    assert [m["messageId"] for m in await stored(client)] == ["m0", "m1", "m2"]


async def test_write_key_in_body_only(client: Client) -> None:
    """analytics-python >= 2.3 sends the key only as writeKey in the body."""
    status, _ = await post(client, "/v1/batch", {"writeKey": WRITE_KEY, "batch": []})
    assert status == 200


async def test_write_key_in_both_places(client: Client) -> None:
    """analytics-node 3.x sends Basic auth and the body writeKey together."""
    body = {"writeKey": WRITE_KEY, "batch": [{"type": "track", **track()}]}
    status, _ = await post(client, "/v1/batch", body, headers=basic())
    assert status == 200
    assert len(await stored(client)) == 1


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        pytest.param({}, track(), "missing_write_key", id="missing"),
        pytest.param(basic("nope"), track(), "invalid_write_key", id="unknown-basic"),
        pytest.param({}, track(writeKey="nope"), "invalid_write_key", id="unknown-body"),
        pytest.param({}, track(writeKey=""), "missing_write_key", id="empty-body"),
        pytest.param(basic(""), track(), "missing_write_key", id="empty-basic"),
        pytest.param({"Authorization": "Basic %%%"}, track(), "missing_write_key", id="garbled"),
        pytest.param({"Authorization": "Token x"}, track(), "invalid_auth", id="wrong-scheme"),
        pytest.param(basic(), track(writeKey="other"), "invalid_write_key", id="mismatch"),
        pytest.param({}, track(writeKey=5), "invalid_write_key", id="not-a-string"),
    ],
)
async def test_bad_keys_get_401(
    client: Client, headers: dict[str, str], body: dict[str, Any], code: str
) -> None:
    """A missing, empty or unknown key is a 401 with a JSON reason, and nothing is stored."""
    status, answer = await post(client, "/v1/track", body, headers=headers)
    assert status == 401
    assert answer["success"] is False
    assert answer["code"] == code
    assert WRITE_KEY not in answer["message"]
    assert await stored(client) == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
)
async def test_any_content_type(client: Client, content_type: str) -> None:
    """The browser and Kotlin send text/plain; any Content-Type is read as JSON."""
    headers = {**basic(), "Content-Type": content_type}
    status, _ = await post(client, "/v1/track", track(), headers=headers)
    assert status == 200


async def test_chunked_body(client: Client) -> None:
    """A chunked body without Content-Length is accepted."""

    async def chunks() -> AsyncIterator[bytes]:
        data = orjson.dumps({"batch": [{"type": "track", **track()}] * 5})
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    status, _ = await post(client, "/v1/batch", chunks(), headers=basic())
    assert status == 200
    assert len(await stored(client)) == 5


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
    ],
)
async def test_compressed_body(
    client: Client, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    """gzip (and deflate) bodies are inflated."""
    body = compress(orjson.dumps({"batch": [{"type": "track", **track()}]}))
    headers = {**basic(), "Content-Encoding": encoding}
    status, _ = await post(client, "/v1/batch", body, headers=headers)
    assert status == 200
    assert len(await stored(client)) == 1


async def test_body_claiming_gzip_that_is_not(client: Client) -> None:
    """A body that claims gzip but is not gets 400 invalid_encoding."""
    headers = {**basic(), "Content-Encoding": "gzip"}
    status, answer = await post(client, "/v1/track", orjson.dumps(track()), headers=headers)
    assert (status, answer["code"]) == (400, "invalid_encoding")


async def test_truncated_gzip(client: Client) -> None:
    """A gzip stream cut short is refused, not half-read."""
    body = gzip.compress(orjson.dumps(track()))[:-6]
    status, answer = await post(
        client, "/v1/track", body, headers={**basic(), "Content-Encoding": "gzip"}
    )
    assert (status, answer["code"]) == (400, "invalid_encoding")


async def test_unsupported_encoding(client: Client) -> None:
    """An encoding we cannot read is a 415."""
    status, answer = await post(
        client, "/v1/track", orjson.dumps(track()), headers={**basic(), "Content-Encoding": "br"}
    )
    assert (status, answer["code"]) == (415, "unsupported_encoding")


async def test_gzip_bomb_is_refused_while_inflating(client: Client) -> None:
    """A small gzip body that inflates past the limit is a 413, and nothing is stored."""
    bomb = gzip.compress(b"[" + b" " * (200 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 500 * 1024
    status, answer = await post(
        client, "/v1/batch", bomb, headers={**basic(), "Content-Encoding": "gzip"}
    )
    assert (status, answer["code"]) == (413, "payload_too_large")


async def test_single_event_over_32kb(client: Client) -> None:
    """A single call over 32 KB is a 413."""
    body = track(properties={"blob": "x" * 33_000})
    status, answer = await post(client, "/v1/track", body, headers=basic())
    assert (status, answer["code"]) == (413, "payload_too_large")


async def test_batch_over_500kb(client: Client) -> None:
    """A batch request over 500 KB is a 413."""
    item = {"type": "track", **track(properties={"blob": "x" * 20_000})}
    status, answer = await post(client, "/v1/batch", {"batch": [item] * 30}, headers=basic())
    assert (status, answer["code"]) == (413, "payload_too_large")
    assert await stored(client) == []


async def test_batch_over_2500_events(client: Client) -> None:
    """More than 2,500 events in one batch is a 413 too_many_events."""
    item = {"type": "identify", "userId": "u"}
    status, answer = await post(client, "/v1/batch", {"batch": [item] * 2501}, headers=basic())
    assert (status, answer["code"]) == (413, "too_many_events")


async def test_batch_keeps_valid_neighbours_of_bad_events(client: Client) -> None:
    """Per-event problems are reported by index in the 200 body; the valid events are kept."""
    big = {"type": "track", **track(messageId="big", properties={"blob": "x" * 33_000})}
    batch = [
        {"type": "track", **track(messageId="ok1")},
        {"type": "track", "event": "E", "messageId": "anon"},
        {"type": "track", "userId": "u", "messageId": "noevent"},
        {"type": "group", "userId": "u", "messageId": "nogroup"},
        {"type": "alias", "userId": "u", "messageId": "noprev"},
        big,
        {"type": "track", **track(messageId="badtime", timestamp="not a time")},
        {"type": "identify", "userId": "u", "messageId": "ok2"},
    ]
    status, answer = await post(client, "/v1/batch", {"batch": batch}, headers=basic())
    assert status == 200
    assert answer["success"] is True
    assert [(r["index"], r["messageId"], r["code"]) for r in answer["rejected"]] == [
        (1, "anon", "missing_identity"),
        (2, "noevent", "missing_event"),
        (3, "nogroup", "missing_group_id"),
        (4, "noprev", "missing_previous_id"),
        (5, "big", "event_too_large"),
        (6, "badtime", "invalid_timestamp"),
    ]
    assert [m["messageId"] for m in await stored(client)] == ["ok1", "ok2"]
    metrics = await (await client.get("/metrics")).text()
    assert 'eventgate_events_rejected_total{reason="missing_identity",source="web"} 1.0' in metrics
    assert 'eventgate_events_received_total{source="web"} 2.0' in metrics


async def test_batch_without_type_item(client: Client) -> None:
    """Every batch item must carry type."""
    status, answer = await post(client, "/v1/batch", {"batch": [track()]}, headers=basic())
    assert status == 200
    assert answer["rejected"][0]["code"] == "missing_type"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="broken"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="deeply-nested"),
    ],
)
async def test_malformed_json(client: Client, body: bytes) -> None:
    """Malformed JSON gets exactly the body analytics-python expects."""
    status, answer = await post(client, "/v1/batch", body, headers=basic())
    assert status == 400
    assert answer == {"success": False, "code": "invalid_request", "message": "malformed JSON"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([1, 2], id="array"),
        pytest.param({"batch": "x"}, id="batch-not-a-list"),
        pytest.param({"items": []}, id="no-batch"),
        pytest.param({"batch": [], "sentAt": "nope"}, id="bad-sent-at"),
    ],
)
async def test_batch_of_wrong_shape(client: Client, body: Any) -> None:
    """A batch body of the wrong shape is a 400 invalid_request naming the problem."""
    status, answer = await post(client, "/v1/batch", body, headers=basic())
    assert (status, answer["code"]) == (400, "invalid_request")


async def test_single_call_with_bad_event_is_400_with_code(client: Client) -> None:
    """A single call that breaks a Spec rule gets 400 with the rule's code."""
    status, answer = await post(client, "/v1/track", {"userId": "u"}, headers=basic())
    assert status == 400
    assert answer == {
        "success": False,
        "code": "missing_event",
        "message": "track needs event (the event name)",
    }


async def test_unknown_route_answers_json(client: Client) -> None:
    """Even a 404 body is JSON (Ruby's SDK parses every body)."""
    status, answer = await post(client, "/v1/nope", {}, headers=basic())
    assert status == 404
    assert answer["success"] is False


async def test_pixel_always_answers_a_gif(client: Client) -> None:
    """GET /v1/pixel/track stores a valid event and answers a gif, even for garbage."""
    import base64

    data = base64.b64encode(orjson.dumps({**track(), "writeKey": WRITE_KEY})).decode()
    for query in (f"data={data}", "data=%%%", ""):
        async with client.get(f"/v1/pixel/track?{query}") as response:
            assert response.status == 200
            assert response.content_type == "image/gif"
    assert len(await stored(client)) == 1


async def test_trusted_proxy_header(make_config: Any, make_client: Any) -> None:
    """With a trusted proxy header configured, its first address becomes context.ip."""
    client = await make_client(
        make_config(server={"port": 0, "trusted_proxy_header": "X-Forwarded-For"})
    )
    headers = {**basic(), "X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
    await post(client, "/v1/track", track(), headers=headers)
    [message] = await stored(client)
    assert message["context"]["ip"] == "203.0.113.9"


async def test_client_ip_without_proxy_header(client: Client) -> None:
    """Without a trusted header, an X-Forwarded-For is ignored and the peer address is used."""
    await post(client, "/v1/track", track(), headers={**basic(), "X-Forwarded-For": "6.6.6.6"})
    [message] = await stored(client)
    assert message["context"]["ip"] == "127.0.0.1"


async def test_storage_full_answers_503_with_retry_after(
    make_config: Any, make_client: Any, tmp_path: Any
) -> None:
    """At the disk quota, ingress answers 503 with Retry-After and stores nothing."""
    storage = {"data_dir": str(tmp_path / "data"), "disk_quota_mb": 0.001, "retry_after_s": 7}
    client = await make_client(make_config(storage=storage))
    async with client.post("/v1/track", data=orjson.dumps(track()), headers=basic()) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert (await response.json())["code"] == "storage_full"
    assert await stored(client) == []


async def test_wrong_method_answers_json_405(client: Client) -> None:
    """A known path with the wrong method is a JSON 405 with Allow; JSON 404 otherwise."""
    async with client.get("/v1/track") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "OPTIONS,POST"
        assert (await response.json())["code"] == "method_not_allowed"
    async with client.get("/nowhere") as response:
        assert response.status == 404
        assert (await response.json()) == {
            "success": False,
            "code": "not_found",
            "message": "Not Found",
        }


async def test_duplicate_message_ids_are_acknowledged_not_stored(client: Client) -> None:
    """A retried request (same messageIds) gets 200 again, but nothing is stored twice."""
    batch = {"batch": [{"type": "track", **track(messageId=f"dup-{i}")} for i in range(3)]}
    for _ in range(2):
        status, answer = await post(client, "/v1/batch", batch, headers=basic())
        assert (status, answer) == (200, {"success": True})
    status, _ = await post(client, "/v1/track", track(messageId="dup-1"), headers=basic())
    assert status == 200
    assert [m["messageId"] for m in await stored(client)] == ["dup-0", "dup-1", "dup-2"]
    metrics = await (await client.get("/metrics")).text()
    assert 'eventgate_events_deduplicated_total{source="web"} 4.0' in metrics
    assert 'eventgate_events_received_total{source="web"} 3.0' in metrics


async def test_browsers_may_read_every_answer(client: Client) -> None:
    """Every /v1 answer, refusals included, allows any origin, and preflights are answered."""
    async with client.post("/v1/t", data=b'{"userId":"u","event":"E"}', headers=basic()) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    async with client.post("/v1/batch", data=b"{", headers=basic()) as r:
        assert r.status == 400
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    preflight = {
        "Origin": "https://shop.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    async with client.options("/v1/batch", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]


async def test_analytics_js_settings_point_at_the_gateway(client: Client) -> None:
    """analytics.js's settings route names the gateway as its API host, for known keys only."""
    async with client.get(f"/v1/projects/{WRITE_KEY}/settings") as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        settings = await response.json()
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == WRITE_KEY
    assert segment["apiHost"] == f"{client.host}:{client.port}/v1"
    assert segment["protocol"] == "http"
    async with client.get("/v1/projects/nope/settings") as response:
        assert response.status == 401
        assert (await response.json())["code"] == "invalid_write_key"
