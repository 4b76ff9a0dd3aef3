"""Tests for gateway/stats.py: the Event Delivery view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.stats import DeliveryTally, delivery_report

NOW = 1_800_000_000.0


def test_tally_flushes_into_windows_with_p95_and_samples(tmp_path: Path) -> None:
    """Delivered counts, failures and the p95 latency bucket add up per window; error samples
    keep what was sent, the request and the response."""
    tally = DeliveryTally()
    tally.delivered("hook", [0.02] * 90 + [2.0] * 10, NOW - 30)
    tally.delivered("hook", [0.02] * 5, NOW - 7200)  # outside 5m and 1h
    tally.failed("hook", NOW - 20, "m1", "HTTP 500", b'{"a":1}', "POST /x", "500 oops", dead=False)
    tally.failed("hook", NOW - 10, "m2", "HTTP 400", b'{"b":2}', "POST /x", "400", dead=True)
    tally.flush(tmp_path)
    tally.delivered("hook", [0.02], NOW - 30)  # a second flush adds to the same minute
    tally.flush(tmp_path)

    report = delivery_report(tmp_path, "hook", now=NOW)
    assert report["windows"]["5m"] == {
        "delivered": 101,
        "failedAttempts": 2,
        "notDelivered": 1,
        "p95LatencyS": 2.5,
    }
    assert report["windows"]["24h"]["delivered"] == 106
    [newest, oldest] = report["errorSamples"]
    assert newest["messageId"] == "m2"
    assert (
        oldest["youSent"],
        oldest["requestToDestination"],
        oldest["responseFromDestination"],
    ) == (
        '{"a":1}',
        "POST /x",
        "500 oops",
    )
    assert delivery_report(tmp_path, "other", now=NOW)["windows"]["1h"]["delivered"] == 0


def test_report_without_data(tmp_path: Path) -> None:
    """A data directory without statistics yet reports zeros, not an error."""
    report = delivery_report(tmp_path, "hook", now=NOW)
    assert report["windows"]["5m"] == {
        "delivered": 0,
        "failedAttempts": 0,
        "notDelivered": 0,
        "p95LatencyS": None,
    }


async def test_admin_delivery_view(make_config: Any, make_client: Any, tmp_path: Path) -> None:
    """GET /admin/destinations/{name}/delivery serves the view; unknown destinations are 404."""
    client: TestClient[Any, Any] = await make_client(
        make_config(server={"port": 0, "admin_token": "t0ken-for-tests"})
    )
    tally = DeliveryTally()
    tally.delivered("files", [0.1, 0.2], NOW)
    tally.flush(tmp_path / "data")
    auth = {"Authorization": "Bearer t0ken-for-tests"}
    async with client.get("/admin/destinations/files/delivery", headers=auth) as response:
        assert response.status == 200
        report = await response.json()
    assert report["destination"] == "files"
    assert set(report["windows"]) == {"5m", "1h", "24h"}
    async with client.get("/admin/destinations/nope/delivery", headers=auth) as response:
        assert response.status == 404
