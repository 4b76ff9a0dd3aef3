"""Every routing control through the real `eventgate serve` process: tracking plans and source
transformations, destination filters, transformations and the integrations object, rate limits
and quotas, suppression and deletion requests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY, WRITE_KEY, basic
from tests.e2e.conftest import Gateway
from tests.test_routing_controls import PLAN, PLANNED_SOURCE

TOKEN = "e2e-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FILTERED = "eventgate_events_filtered_total"
FAST_BATCH = {"max_events": 100, "max_age_s": 0.05}
FAST_RETRY = {"base_delay_s": 0.05, "max_delay_s": 0.2}

T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------------


def call(
    gateway: Gateway,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection; ``(status, headers, parsed JSON body)``."""
    request = urllib.request.Request(
        f"{gateway.url}{path}",
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), orjson.loads(exc.read())


def post_batch(gateway: Gateway, events: list[dict[str, Any]]) -> int:
    """POST one /v1/batch with the write key; return the status (200 expected)."""
    status, _, answer = call(gateway, "POST", "/v1/batch", {"batch": events}, basic(WRITE_KEY))
    assert status == 200, answer
    return status


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on /metrics whose labels include ``labels``."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_until(check: Callable[[], T], what: str, timeout_s: float = 20) -> T:
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {result!r})")
        time.sleep(0.05)


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (each ingress process has its own, SO_REUSEPORT)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def start(gateway: Gateway) -> None:
    """Start the gateway and wait until every ingress process listens, not only the first."""
    gateway.start()
    wanted = yaml.safe_load(gateway.config_path.read_text())["server"]["ingress_processes"]
    count = max(1, os.cpu_count() or 1) if wanted == "auto" else max(1, wanted)
    wait_until(lambda: listeners(gateway.port) == count, f"{count} ingress processes")


def jsonl(directory: Path) -> list[dict[str, Any]]:
    """Every message a file destination wrote under ``directory``."""
    return [
        orjson.loads(line)
        for path in sorted(directory.rglob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def ids_of(messages: list[dict[str, Any]]) -> set[str]:
    """The messageIds of ``messages``."""
    return {m["messageId"] for m in messages}


def files(name: str, directory: Path, **controls: Any) -> dict[str, Any]:
    """A file destination writing to ``directory``, with short batches."""
    return {
        "name": name,
        "type": "file",
        "batch": FAST_BATCH,
        "settings": {"directory": str(directory)},
        **controls,
    }


def webhook(name: str, url: str, **settings: Any) -> dict[str, Any]:
    """A webhook destination to ``url``, with short batches and retries."""
    return {
        "name": name,
        "type": "webhook",
        "batch": FAST_BATCH,
        "retry": FAST_RETRY,
        "settings": {"url": url, **settings},
    }


def sampled_in(value: str, percent: float) -> bool:
    """The documented sampling rule: md5 of the value, first 53 bits as a fraction < percent."""
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53 < percent / 100


class Receiver:
    """A webhook endpoint that keeps every message it is sent (one, or a batch's array)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.webhook_ids: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.messages.extend(body if isinstance(body, list) else [body])
        self.webhook_ids.append(request.headers.get("webhook-id", ""))
        return web.Response(status=204)

    def ids(self) -> set[str]:
        """The messageIds received so far."""
        return {m["messageId"] for m in list(self.messages) if "messageId" in m}


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[Receiver]:
    """A :class:`Receiver` listening on 127.0.0.1 for the test's duration."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.url = str(server.make_url("/hook"))
    yield receiver
    await server.close()


@pytest.fixture(name="make_gateway")
def _make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Build gateways in ``tmp_path``; any still running at the end is killed."""
    made: list[Gateway] = []

    def make(
        destinations: list[dict[str, Any]],
        ingress_processes: int | str = "auto",
        **sections: Any,
    ) -> Gateway:
        """A gateway in ``tmp_path`` with these destinations and extra top-level sections
        (``server`` is merged into the default one)."""
        gateway = Gateway(tmp_path, destinations=destinations, ingress_processes=ingress_processes)
        config = yaml.safe_load(gateway.config_path.read_text())
        config["server"].update(sections.pop("server", {}))
        config.update(sections)
        gateway.config_path.write_text(yaml.safe_dump(config))
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()


# --- 1. tracking plan and source transformation --------------------------------------------------


def test_tracking_plan_and_source_transformation(
    make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A planned event is stored without its unplanned property and with its email hashed, the
    invalid and the unplanned event never reach a destination, each violation arrives as a
    `Violation Generated` event, and the admin API and /metrics count them."""
    gateway = make_gateway(
        [files("files", tmp_path / "files")],
        server={"admin_token": TOKEN},
        tracking_plans=[PLAN],
        sources=[PLANNED_SOURCE],
    )
    start(gateway)

    post_batch(
        gateway,
        [
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "ok",
             "properties": {"order_id": "o1", "total": 5, "coupon": "X"},
             "context": {"traits": {"email": " Jane@Example.COM"}}},
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "bad",
             "properties": {"order_id": 7}},
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "unplanned"},
        ],
    )  # fmt: skip

    def forwarded_for_all() -> list[dict[str, Any]]:
        forwarded = [m for m in gateway.file_messages() if m["event"] == "Violation Generated"]
        sources = {m["properties"]["eventMessageID"] for m in forwarded}
        return forwarded if sources == {"ok", "bad", "unplanned"} else []

    gateway.wait_for_files({"ok"})
    forwarded = wait_until(forwarded_for_all, "a Violation Generated event per violation")
    messages = {m["messageId"]: m for m in gateway.file_messages()}
    kept = messages["ok"]
    assert kept["properties"] == {"order_id": "o1", "total": 5}
    assert kept["context"]["protocols"]["omitted"] == ["properties.coupon"]
    assert kept["context"]["traits"]["email"] == hashlib.sha256(b"jane@example.com").hexdigest()
    assert "bad" not in messages
    assert "unplanned" not in messages
    violations = {
        (v["properties"]["eventMessageID"], v["properties"]["violationType"]): v for v in forwarded
    }
    assert sorted(violations) == [
        ("bad", "Invalid Type"),
        ("ok", "Unplanned Property"),
        ("unplanned", "Unplanned Event"),
    ]
    for (original, _), violation in violations.items():
        assert violation["messageId"].startswith(f"{original}-violation-")
        assert violation["userId"] == "u1"
        assert violation["properties"]["trackingPlanName"] == "web-plan"
        assert violation["properties"]["sourceName"] == "web"
    assert violations["bad", "Invalid Type"]["properties"]["violationField"] == (
        "properties.order_id"
    )

    def counted() -> dict[tuple[str, str, str], int]:
        _, _, answer = call(gateway, "GET", "/admin/violations?source=web", headers=ADMIN)
        found = {
            (v["eventName"], v["violationType"], v["field"]): v["count"]
            for v in answer["violations"]
        }
        return found if len(found) == 3 else {}

    assert wait_until(counted, "the violations in the admin API") == {
        ("Order Completed", "Invalid Type", "properties.order_id"): 1,
        ("Order Completed", "Unplanned Property", "properties.coupon"): 1,
        ("Signed Up", "Unplanned Event", "event"): 1,
    }
    status, _, _ = call(gateway, "GET", "/admin/violations", headers={"Authorization": "Bearer x"})
    assert status == 401

    def plan_counts() -> tuple[float, float, float]:
        labels = {"source": "web", "destination": ""}
        return (
            metric(gateway, FILTERED, rule="tracking_plan:web-plan", action="blocked", **labels),
            metric(gateway, FILTERED, rule="tracking_plan:web-plan", action="omitted", **labels),
            metric(
                gateway, FILTERED, rule="transformation:hash-email", action="transformed", **labels
            ),
        )

    wait_until(lambda: plan_counts() == (2, 1, 1), "the tracking plan's counts in /metrics")


# --- 2. destination filters, transformations and the integrations object -------------------------

USERS = [f"user-{i}" for i in range(200)]


async def test_destination_filters_transformations_and_integrations(
    make_gateway: Callable[..., Gateway], receiver: Receiver, tmp_path: Path
) -> None:
    """A filtered destination drops, keeps only, strips properties and samples the same half of
    the users every time, then renames; a webhook misses only the events whose integrations
    object turns everything off; the archive gets everything; /metrics counts by rule."""
    curated = tmp_path / "curated"
    gateway = make_gateway(
        [
            files("archive", tmp_path / "files"),
            files(
                "curated",
                curated,
                filters=[
                    # Listed out of Segment's order on purpose: it must not matter.
                    {"name": "no-secrets", "drop_properties": {"properties": ["secret"]}},
                    {"name": "known-users", "if": "exists(userId)", "only_send": True},
                    {"name": "no-tests", "if": "event = 'Test Event'", "drop": True},
                    {
                        "name": "half-the-users",
                        "if": "event = 'Sampled'",
                        "sample": {"percent": 50, "path": "userId"},
                    },
                ],
                transformations=[
                    {"name": "rename-buy", "if": "event = 'Buy'", "new_event_name": "Purchase"}
                ],
            ),
            webhook("hook", receiver.url, mode="batch"),
        ]
    )
    await asyncio.to_thread(start, gateway)

    buy = {"type": "track", "userId": "u", "event": "Buy", "messageId": "buy",
           "properties": {"secret": "s3", "sku": "A1"}}  # fmt: skip
    test = {"type": "track", "userId": "u", "event": "Test Event", "messageId": "test"}
    anon = {"type": "track", "anonymousId": "a", "event": "Buy", "messageId": "anon"}
    private = {"type": "track", "userId": "u", "event": "Buy", "messageId": "private",
               "integrations": {"All": False}}  # fmt: skip
    await asyncio.to_thread(post_batch, gateway, [buy, test, anon, private])
    # Each user's two events go in separate requests, so they are sampled separately.
    for round_ in (1, 2):
        sampled = [
            {"type": "track", "userId": u, "event": "Sampled", "messageId": f"{u}-{round_}"}
            for u in USERS
        ]
        await asyncio.to_thread(post_batch, gateway, sampled)

    everything = {"buy", "test", "anon", "private"} | {f"{u}-{r}" for u in USERS for r in (1, 2)}
    kept_users = {u for u in USERS if sampled_in(u, 50)}
    expected_curated = {"buy", "private"} | {f"{u}-{r}" for u in kept_users for r in (1, 2)}
    await asyncio.to_thread(gateway.wait_for_files, everything)
    await asyncio.to_thread(
        wait_until, lambda: receiver.ids() >= everything - {"private"}, "the webhook's events"
    )
    await asyncio.to_thread(
        wait_until, lambda: ids_of(jsonl(curated)) >= expected_curated, "the curated events"
    )

    # The archive (a file destination) ignores the integrations object; the webhook obeys it.
    assert len(gateway.file_messages()) == len(everything)
    assert "private" not in receiver.ids()
    assert len(receiver.messages) == len(everything) - 1

    got = {m["messageId"]: m for m in jsonl(curated)}
    assert set(got) == expected_curated
    assert got["buy"]["event"] == "Purchase"
    assert got["buy"]["properties"] == {"sku": "A1"}
    assert got["private"]["event"] == "Purchase"  # files are archives: integrations ignored
    assert receiver.ids() >= {"buy", "test", "anon"}
    hooked = {m["messageId"]: m for m in receiver.messages}
    assert hooked["buy"]["event"] == "Buy"  # the rename is curated's alone
    assert hooked["buy"]["properties"] == {"secret": "s3", "sku": "A1"}
    # Sampling by userId keeps a user's every event or none, the same users every time.
    users_in = {m["userId"] for m in got.values() if m["event"] == "Sampled"}
    assert users_in == kept_users
    for user in users_in:
        assert {f"{user}-1", f"{user}-2"} <= set(got)
    assert 70 <= len(kept_users) <= 130

    want = {
        ("curated", "filter:no-tests", "dropped"): 1,
        ("curated", "filter:known-users", "dropped"): 1,
        ("curated", "filter:half-the-users", "sampled_out"): 2 * (len(USERS) - len(kept_users)),
        ("hook", "integrations", "disabled"): 1,
        ("archive", "integrations", "disabled"): 0,
    }

    def counted() -> bool:
        return want == {
            (destination, rule, action): metric(
                gateway, FILTERED, destination=destination, rule=rule, action=action
            )
            for destination, rule, action in want
        }

    await asyncio.to_thread(wait_until, counted, "the filter counts in /metrics")


# --- 3. rate limit and monthly quota -------------------------------------------------------------


def segops(gateway: Gateway, count: int) -> tuple[int, dict[str, str], Any]:
    """POST ``count`` events to the SegOps batch API."""
    events = [{"user_id": "ops-user", "event_type": "order_placed"} for _ in range(count)]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return call(gateway, "POST", "/api/ingestion/track/batch/", {"events": events}, headers)


def test_rate_limit_and_quota_hold_across_processes_and_restarts(
    make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    """Requests spread over two ingress processes share one per-minute limit (the sixth gets 429
    rate_limited with an exact Retry-After), and a SegOps source's monthly quota, once used up,
    stays used up after a restart."""
    gateway = make_gateway(
        [files("files", tmp_path / "files")],
        ingress_processes=2,
        sources=[
            {"name": "web", "write_keys": [WRITE_KEY], "quota": {"requests_per_minute": 5}},
            {"name": "ops", "api_keys": [API_KEY], "quota": {"events_per_month": 3}},
        ],
    )
    start(gateway)

    # The window is the UTC clock minute: keep the burst clear of its end.
    remaining_s = 60 - time.time() % 60
    if remaining_s < 3:
        time.sleep(remaining_s + 0.05)
    minute = time.time() // 60
    answers = []
    for i in range(10):  # each on a fresh connection, so the kernel spreads them over processes
        event = {"type": "track", "userId": "u", "event": "E", "messageId": f"rl-{i}"}
        answers.append(call(gateway, "POST", "/v1/batch", {"batch": [event]}, basic(WRITE_KEY)))
    seconds_left = 60 - time.time() % 60
    assert time.time() // 60 == minute, "the burst crossed a minute boundary"
    assert [status for status, _, _ in answers] == [200] * 5 + [429] * 5
    for _, headers, body in answers[5:]:
        assert body["success"] is False
        assert body["code"] == "rate_limited"
        assert "5 requests per minute" in body["message"]
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert abs(retry_after - seconds_left) <= 2
    limited = metric(gateway, "eventgate_requests_limited_total", source="web")
    assert limited == 5
    assert metric(gateway, "eventgate_requests_rejected_total", code="rate_limited") == 5

    status, _, body = segops(gateway, 2)
    assert (status, body) == (202, {"success": True, "accepted": 2})
    status, headers, body = segops(gateway, 2)
    assert status == 429
    assert body["code"] == "over_quota"
    assert "1 remain" in body["message"]
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert abs(int(headers["Retry-After"]) - (next_month - now).total_seconds()) <= 2

    assert gateway.terminate() == 0
    start(gateway)
    status, _, body = segops(gateway, 2)  # the count survived the restart
    assert (status, body["code"]) == (429, "over_quota")
    assert "1 remain" in body["message"]
    status, _, body = segops(gateway, 1)
    assert (status, body) == (202, {"success": True, "accepted": 1})
    status, _, body = segops(gateway, 1)
    assert (status, body["code"]) == (429, "over_quota")
    assert "0 remain" in body["message"]
    assert gateway.terminate() == 0

    stored = gateway.file_messages()
    assert {m["messageId"] for m in stored if m["userId"] == "u"} == {f"rl-{i}" for i in range(5)}
    assert len([m for m in stored if m["userId"] == "ops-user"]) == 3


# --- 4. privacy: suppression and deletion requests -----------------------------------------------


def warehouse_rows(path: Path, user_id: str) -> int:
    """Rows of ``user_id`` in every table of the DuckDB file (``users`` by its ``id``)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE column_name = 'user_id' OR (table_name = 'users' AND column_name = 'id')"
        ).fetchall()
        assert tables, "the warehouse has no tables"
        total = 0
        for schema, table, column in tables:
            sql = f'SELECT count(*) FROM "{schema}"."{table}" WHERE "{column}" = ?'
            row = conn.execute(sql, [user_id]).fetchone()
            assert row is not None
            total += row[0]
        return total


async def test_suppression_and_deletion_requests(
    make_gateway: Callable[..., Gateway], receiver: Receiver, tmp_path: Path
) -> None:
    """A user suppressed in the config or through the admin API is dropped while others flow;
    `eventgate privacy delete` against the running gateway reaches the webhook and empties the
    warehouse of the user, and the file destination reports it cannot delete."""
    database = tmp_path / "w.duckdb"
    gateway = make_gateway(
        [
            files("files", tmp_path / "files"),
            webhook("hook", receiver.url),
            {
                "name": "dw",
                "type": "warehouse",
                "batch": FAST_BATCH,
                "retry": FAST_RETRY,
                "circuit": {"enabled": False},
                "settings": {"path": str(database)},
            },
        ],
        server={"admin_token": TOKEN},
        privacy={"suppressed_user_ids": ["config-suppressed"]},
    )
    await asyncio.to_thread(start, gateway)

    def track(user: str, message_id: str) -> dict[str, Any]:
        return {"type": "track", "userId": user, "event": "Viewed", "messageId": message_id}

    def identify(user: str, message_id: str) -> dict[str, Any]:
        return {"type": "identify", "userId": user, "messageId": message_id,
                "traits": {"plan": "pro"}}  # fmt: skip

    first = [
        track("config-suppressed", "cs-1"),
        track("config-suppressed", "cs-2"),
        track("victim", "v-1"),
        identify("victim", "v-2"),
        track("other", "o-1"),
        identify("other", "o-2"),
    ]
    await asyncio.to_thread(post_batch, gateway, first)
    delivered = {"v-1", "v-2", "o-1", "o-2"}
    await asyncio.to_thread(gateway.wait_for_files, delivered)
    await asyncio.to_thread(wait_until, lambda: receiver.ids() >= delivered, "the webhook")
    await asyncio.to_thread(
        wait_until,
        lambda: metric(gateway, "eventgate_events_delivered_total", destination="dw") >= 4,
        "the warehouse load",
    )
    assert not {"cs-1", "cs-2"} & (ids_of(gateway.file_messages()) | receiver.ids())

    status, _, body = await asyncio.to_thread(
        call, gateway, "POST", "/admin/suppressions", {"userIds": ["late"]}, ADMIN
    )
    assert (status, body) == (200, {"suppressed": 1})
    _, _, body = await asyncio.to_thread(call, gateway, "GET", "/admin/suppressions", None, ADMIN)
    assert [s["userId"] for s in body["suppressions"]] == ["late"]
    assert body["configured"] == ["config-suppressed"]
    await asyncio.sleep(0.6)  # every ingress process re-reads the list every 0.25 s
    for i in range(4):  # fresh connections: every ingress process gets some
        await asyncio.to_thread(
            post_batch, gateway, [track("late", f"l-{i}"), track("x", f"x-{i}")]
        )
    others = {f"x-{i}" for i in range(4)}
    await asyncio.to_thread(gateway.wait_for_files, others)
    await asyncio.to_thread(wait_until, lambda: receiver.ids() >= others, "the webhook")
    seen = ids_of(gateway.file_messages()) | receiver.ids()
    assert not {m for m in seen if m.startswith(("l-", "cs-"))}
    await asyncio.to_thread(
        wait_until,
        lambda: metric(gateway, FILTERED, destination="", rule="suppression") == 6,
        "6 suppressed at ingress",
    )

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "privacy", "delete", "victim",
         "--config", str(gateway.config_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    request = orjson.loads(completed.stdout)
    assert request["userId"] == "victim"
    assert set(request["destinations"]) == {"files", "hook", "dw"}

    def settled() -> Any:
        _, _, body = call(gateway, "GET", f"/admin/deletions/{request['id']}", headers=ADMIN)
        return body if body["status"] != "pending" else None

    final = await asyncio.to_thread(wait_until, settled, "the deletion request to settle")
    assert final["status"] == "completed", final
    steps = final["destinations"]
    assert steps["hook"]["status"] == "done"
    assert steps["dw"]["status"] == "done"
    # tracks and viewed (the track), identifies and users (the identify)
    assert steps["dw"]["detail"] == "4 record(s) deleted"
    assert steps["files"] == {
        "status": "unsupported",
        "detail": "the file type cannot delete",
        "attempts": 1,
    }
    assert {"type": "delete", "userId": "victim"} in receiver.messages
    digest = hashlib.sha256(b"victim").hexdigest()[:32]
    assert f"delete-{digest}" in receiver.webhook_ids
    _, _, body = await asyncio.to_thread(call, gateway, "GET", "/admin/suppressions", None, ADMIN)
    assert {s["userId"]: s["reason"] for s in body["suppressions"]}["victim"] == (
        "deletion requested"
    )

    assert await asyncio.to_thread(gateway.terminate) == 0
    assert warehouse_rows(database, "victim") == 0
    assert warehouse_rows(database, "other") > 0
