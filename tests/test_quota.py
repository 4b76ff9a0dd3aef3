"""Tests for gateway/ingress/quota.py: per-source rate limits and monthly quotas, 429s."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.config import GatewayConfig
from gateway.ingress.quota import QuotaBook, SourceQuota
from tests.conftest import API_KEY, WRITE_KEY, basic
from tests.test_ingress_segment import post, stored

NOON = datetime(2026, 11, 23, 12, 0, 10, tzinfo=UTC).timestamp()


def test_requests_per_minute_resets_at_the_next_minute(tmp_path: Path) -> None:
    """The 61st request in a minute is refused until the minute ends, exactly."""
    book = QuotaBook(tmp_path, {"web": SourceQuota(60, None)})
    for _ in range(60):
        assert book.charge("web", 1, NOON) is None
    refused = book.charge("web", 1, NOON + 5)
    assert refused is not None
    assert refused.limit == "requests_per_minute"
    assert refused.retry_after_s == 45
    last = book.charge("web", 1, NOON + 49.5)
    assert last is not None
    assert last.retry_after_s == 1
    assert book.charge("web", 1, NOON + 50) is None  # 12:01:00, a new minute
    book.close()


def test_events_per_month_resets_at_the_next_month(tmp_path: Path) -> None:
    """Events over the monthly quota are refused until the first of the next month (UTC)."""
    book = QuotaBook(tmp_path, {"web": SourceQuota(None, 1000)})
    assert book.charge("web", 999, NOON) is None
    refused = book.charge("web", 2, NOON)
    assert refused is not None
    assert refused.limit == "events_per_month"
    december = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert refused.retry_after_s == december - NOON
    assert "1 remain" in refused.message
    assert book.charge("web", 1, NOON) is None  # what remains still fits
    assert book.charge("web", 1000, december) is None
    book.close()


def test_refused_requests_count_for_nothing(tmp_path: Path) -> None:
    """A client backing off from a 429 is not locked out by its refused attempts."""
    book = QuotaBook(tmp_path, {"web": SourceQuota(2, None)})
    for _ in range(2):
        assert book.charge("web", 1, NOON) is None
    for _ in range(5):
        assert book.charge("web", 1, NOON) is not None
    assert book.usage("web", NOON) == (2, 2)
    book.close()


def test_unlimited_sources_are_not_tracked(tmp_path: Path) -> None:
    """A source without limits needs no counter file and is never refused."""
    book = QuotaBook(tmp_path / "quotas", {"web": SourceQuota(None, None)})
    assert book.charge("web", 10**9, NOON) is None
    assert not (tmp_path / "quotas").exists()


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    """The monthly count is kept on disk: a new process continues where the last stopped."""
    first = QuotaBook(tmp_path, {"web": SourceQuota(None, 100)})
    assert first.charge("web", 70, NOON) is None
    first.close()
    second = QuotaBook(tmp_path, {"web": SourceQuota(None, 100)})
    assert second.charge("web", 31, NOON) is not None
    assert second.usage("web", NOON) == (1, 70)
    second.close()


async def test_processes_share_the_counters(tmp_path: Path) -> None:
    """Two processes charging at once never lose a count and never pass the limit together."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gateway.ingress.quota import QuotaBook, SourceQuota\n"
        "book = QuotaBook(Path(sys.argv[1]), {'web': SourceQuota(None, 3000)})\n"
        "print(sum(book.charge('web', 1, float(sys.argv[2])) is None for _ in range(2000)))\n"
    )

    async def charge() -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            str(tmp_path),
            str(NOON),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        return int(out)

    accepted = await asyncio.gather(charge(), charge())
    assert sum(accepted) == 3000
    book = QuotaBook(tmp_path, {"web": SourceQuota(None, 3000)})
    assert book.usage("web", NOON)[1] == 3000
    book.close()


async def test_ingress_answers_429_with_retry_after(
    make_config: Callable[..., GatewayConfig], make_client: Callable[..., Any]
) -> None:
    """Over the per-minute limit, /v1 answers 429 with Retry-After and a JSON reason."""
    config = make_config(
        sources=[{"name": "web", "write_keys": [WRITE_KEY], "quota": {"requests_per_minute": 2}}]
    )
    client: TestClient[Any, Any] = await make_client(config)
    body = {"userId": "u1", "event": "Clicked"}
    for _ in range(2):
        assert (await post(client, "/v1/track", body, headers=basic()))[0] == 200
    async with client.post("/v1/track", json=body, headers=basic()) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        answer = await response.json()
    assert answer["code"] == "rate_limited"
    assert "2 requests per minute" in answer["message"]
    assert len(await stored(client)) == 2


async def test_segops_plan_quota_refuses_the_batch(
    make_config: Callable[..., GatewayConfig], make_client: Callable[..., Any]
) -> None:
    """A SegOps batch that would pass the monthly quota is refused whole, nothing stored."""
    config = make_config(
        sources=[
            {"name": "web", "api_keys": [API_KEY], "quota": {"plan": "free", "events_per_month": 5}}
        ]
    )
    client: TestClient[Any, Any] = await make_client(config)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    events = [{"user_id": "u1", "event_type": "order_placed"} for _ in range(4)]
    status, _ = await post(client, "/api/ingestion/track/batch/", events, headers=headers)
    assert status == 202
    status, answer = await post(client, "/api/ingestion/track/batch/", events, headers=headers)
    assert status == 429
    assert answer["code"] == "over_quota"
    assert len(await stored(client)) == 4
