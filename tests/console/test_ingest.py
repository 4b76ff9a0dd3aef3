"""Tests for gateway/console/ingest.py: the overview's ingest statistics."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.console.ingest import (
    DECODE_PER_S,
    SKETCH_SIZE,
    IngestRecorder,
    estimate_users,
    ingest_overview,
    merge_sketch,
    user_hash,
)
from gateway.events import NormalizedEvent

NOW = 1_800_000_000.0


def events(count: int, users: int, name: str = "Clicked", at: float = NOW) -> list[NormalizedEvent]:
    """``count`` track events from ``users`` distinct users, received at ``at``."""
    return [
        NormalizedEvent(
            source="web",
            message_id=f"m{i}",
            received_at=at,
            body=orjson.dumps({"type": "track", "event": name, "userId": f"u{i % users}"}),
        )
        for i in range(count)
    ]


def test_sketch_is_exact_for_few_users_and_close_for_many() -> None:
    """Below the sketch size the user count is exact; far above it, within 15%."""
    few = merge_sketch(user_hash(f"u{i}") for i in range(100))
    assert estimate_users(few) == 100
    many = merge_sketch(user_hash(f"user-{i}") for i in range(50_000))
    assert len(many) == SKETCH_SIZE
    assert abs(estimate_users(many) - 50_000) < 0.15 * 50_000


def test_sketches_merge_across_processes(tmp_path: Path) -> None:
    """Two processes seeing overlapping users add up to the distinct users, not the sum."""
    for first in (0, 50):
        recorder = IngestRecorder(tmp_path)
        recorder.stored("web", events(100, 100)[first : first + 100], 0)
        recorder.digest(NOW)
        recorder.flush(NOW)
    overview = ingest_overview(tmp_path, "web", now=NOW)
    assert overview["uniqueUsers"]["24h"] == 100
    assert overview["totals"]["24h"]["received"] == 150


def test_duplicates_are_not_counted_as_received(tmp_path: Path) -> None:
    """Events deduplicated at ingress do not add to the volume."""
    recorder = IngestRecorder(tmp_path)
    recorder.stored("web", events(10, 2), 4)
    recorder.digest(NOW)
    recorder.flush(NOW)
    assert ingest_overview(tmp_path, now=NOW)["totals"]["24h"]["received"] == 6


def test_past_the_budget_types_come_from_a_weighted_sample(tmp_path: Path) -> None:
    """More events than the decode budget are sampled evenly and scaled back up."""
    recorder = IngestRecorder(tmp_path)
    total = DECODE_PER_S * 3
    recorder.stored("web", events(total, 10), 0)
    recorder.digest(NOW)
    recorder.flush(NOW)
    overview = ingest_overview(tmp_path, now=NOW)
    (top,) = overview["topEvents"]["24h"]
    assert top["event"] == "Clicked"
    assert total * 0.9 <= top["count"] <= total * 1.1
    assert overview["totals"]["24h"]["received"] == total


def test_old_minutes_fall_out_of_the_windows(tmp_path: Path) -> None:
    """An event two days old counts for 7 days but not for 24 hours."""
    recorder = IngestRecorder(tmp_path)
    recorder.stored("web", events(3, 1, at=NOW - 2 * 86_400), 0)
    recorder.digest(NOW)
    recorder.flush(NOW)
    overview = ingest_overview(tmp_path, now=NOW)
    assert overview["totals"]["24h"]["received"] == 0
    assert overview["totals"]["7d"]["received"] == 3
    assert sum(overview["volume"]["7d"]["received"]) == 3


def test_refusals_keep_codes_and_samples(tmp_path: Path) -> None:
    """Refused events and requests are counted per code and kept as samples, newest first."""
    recorder = IngestRecorder(tmp_path)
    recorder.rejected("web", [{"code": "missing_event", "message": "track needs event"}], 200)
    recorder.rejected(None, [{"code": "invalid_write_key", "message": "unknown key"}], 401)
    recorder.digest()
    recorder.flush()
    overview = ingest_overview(tmp_path)
    assert overview["totals"]["24h"]["rejected"] == 2
    assert [e["code"] for e in overview["recentErrors"]] == ["invalid_write_key", "missing_event"]
    assert overview["recentErrors"][0]["source"] is None
