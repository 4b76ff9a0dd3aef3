"""Tests for what the console adds to gateway/stats.py and gateway/dlq.py."""

from __future__ import annotations

from pathlib import Path

from gateway import dlq
from gateway.log import DeadLetter, SqliteEventLog
from gateway.stats import DeliveryTally, delivery_trends
from gateway.testing import make_event

NOW = 1_800_000_000.0  # on a minute and an hour boundary


def test_trends_bucket_per_minute_and_per_hour(tmp_path: Path) -> None:
    """The last hour comes per minute and the last day per hour, newest bucket last."""
    tally = DeliveryTally()
    tally.delivered("hook", [0.02] * 3, NOW - 30)
    tally.delivered("hook", [0.02] * 2, NOW - 3 * 3600)
    tally.failed("hook", NOW - 30, "m1", "HTTP 400", b"{}", None, None, dead=True)
    tally.flush(tmp_path)
    trends = delivery_trends(tmp_path, "hook", now=NOW)
    minutes, hours = trends["1h"], trends["24h"]
    assert (minutes["delivered"][-2], minutes["notDelivered"][-2]) == (3, 1)
    assert sum(minutes["delivered"]) == 3
    assert minutes["p95LatencyS"][-2] == 0.025
    assert minutes["p95LatencyS"][0] is None
    assert hours["delivered"][-2] == 3
    assert hours["delivered"][-4] == 2
    assert hours["bucketS"] == 3600
    assert hours["start"] + 24 * 3600 == NOW + 3600


def test_trends_of_an_empty_data_dir(tmp_path: Path) -> None:
    """Without any statistics the series are zeros, not an error."""
    assert sum(delivery_trends(tmp_path, "hook", now=NOW)["24h"]["delivered"]) == 0


async def test_replay_one_then_follow_to_done(tmp_path: Path) -> None:
    """One replayed letter is retrying until its retry is done; then, behind the cursor, done."""
    event_log = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30)
    await event_log.open()
    await event_log.dead_letter(
        [
            DeadLetter("hook", make_event(7), "HTTP 400", 1, 1.0, 2.0, None, None),
            DeadLetter("files", make_event(8), "disk full", 1, 1.0, 2.0, None, None),
        ]
    )
    assert dlq.count_by_destination(tmp_path) == {"hook": 1, "files": 1}
    assert dlq.delivery_state(tmp_path, "hook", "0:7") == "dead_lettered"
    assert dlq.replay_one(tmp_path, "0:1") == ("hook", "0:7")
    assert dlq.replay_one(tmp_path, "0:1") is None
    assert dlq.delivery_state(tmp_path, "hook", "0:7") == "retrying"
    await event_log.retries_done("hook", [7])
    assert dlq.delivery_state(tmp_path, "hook", "0:7") == "pending"
    await event_log.set_cursor("hook", 7)
    assert dlq.delivery_state(tmp_path, "hook", "0:7") == "done"
    assert dlq.delivery_state(tmp_path, "hook", "nope") is None
    await event_log.close()
