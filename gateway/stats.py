"""Segment's "Event Delivery" view per destination: counts and latency per minute, and samples
of recent errors, kept in the log's first shard so any process can answer for them.

The router adds to an in-memory tally as it delivers and writes it every few seconds (one small
transaction); the admin API reads it. At most 24 hours of minutes and 20 error samples per
destination are kept.
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.log.sqlite import shard_path

__all__ = ["LATENCY_BOUNDS_S", "DeliveryTally", "delivery_report", "delivery_trends"]

LATENCY_BOUNDS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
KEEP_MINUTES = 24 * 60
KEEP_SAMPLES = 20
_SAMPLE_CHARS = 2048

SCHEMA = """
CREATE TABLE IF NOT EXISTS delivery_stats (
    destination TEXT NOT NULL,
    minute INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL,
    latency TEXT NOT NULL,
    PRIMARY KEY (destination, minute)
);
CREATE TABLE IF NOT EXISTS error_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    at REAL NOT NULL,
    message_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    sent TEXT NOT NULL,
    request TEXT,
    response TEXT
);
"""


@dataclass
class _Minute:
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))


@dataclass
class DeliveryTally:
    """What the router delivered since the last flush, per destination and minute."""

    minutes: dict[tuple[str, int], _Minute] = field(default_factory=dict)
    samples: list[tuple[str, float, str, str, str, str | None, str | None]] = field(
        default_factory=list
    )

    def _minute(self, destination: str, now: float) -> _Minute:
        key = (destination, int(now // 60))
        minute = self.minutes.get(key)
        if minute is None:
            minute = self.minutes[key] = _Minute()
        return minute

    def delivered(self, destination: str, latencies_s: Sequence[float], now: float) -> None:
        """Count delivered events and their end-to-end latencies."""
        minute = self._minute(destination, now)
        minute.delivered += len(latencies_s)
        for latency in latencies_s:
            minute.latency[bisect.bisect_left(LATENCY_BOUNDS_S, latency)] += 1

    def failed(  # noqa: PLR0917 - one argument per column of a sample
        self,
        destination: str,
        now: float,
        message_id: str,
        reason: str,
        sent: bytes,
        request: str | None,
        response: str | None,
        *,
        dead: bool,
    ) -> None:
        """Count a failed attempt (and whether it was given up on); keep it as a sample."""
        minute = self._minute(destination, now)
        minute.failed += 1
        minute.dead_lettered += int(dead)
        if len(self.samples) < KEEP_SAMPLES * 4:
            sent_text = sent[:_SAMPLE_CHARS].decode("utf-8", "replace")
            self.samples.append(
                (destination, now, message_id, reason, sent_text, request, response)
            )

    def flush(self, data_dir: Path) -> None:
        """Add the tally to the first shard's tables and start a new one (blocking; a thread)."""
        minutes, self.minutes = self.minutes, {}
        samples, self.samples = self.samples, []
        if not minutes and not samples:
            return
        now_minute = int(time.time() // 60)
        with closing(sqlite3.connect(shard_path(data_dir, 0), isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            for (destination, minute), t in minutes.items():
                row = conn.execute(
                    "SELECT delivered, failed, dead_lettered, latency FROM delivery_stats "
                    "WHERE destination = ? AND minute = ?",
                    (destination, minute),
                ).fetchone()
                latency = t.latency
                if row is not None:
                    old = orjson.loads(row[3])
                    latency = [a + b for a, b in zip(latency, old, strict=True)]
                    t.delivered += row[0]
                    t.failed += row[1]
                    t.dead_lettered += row[2]
                conn.execute(
                    "INSERT OR REPLACE INTO delivery_stats VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        destination,
                        minute,
                        t.delivered,
                        t.failed,
                        t.dead_lettered,
                        orjson.dumps(latency).decode(),
                    ),
                )
            conn.executemany(
                "INSERT INTO error_samples (destination, at, message_id, reason, sent, request, "
                "response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                samples,
            )
            conn.execute(
                "DELETE FROM delivery_stats WHERE minute < ?", (now_minute - KEEP_MINUTES,)
            )
            conn.execute(
                "DELETE FROM error_samples WHERE id NOT IN (SELECT id FROM error_samples AS s "
                "WHERE s.destination = error_samples.destination ORDER BY id DESC LIMIT ?)",
                (KEEP_SAMPLES,),
            )
            conn.execute("COMMIT")


def _p95(latency: list[int]) -> float | None:
    total = sum(latency)
    if not total:
        return None
    running = 0
    for index, count in enumerate(latency):
        running += count
        if running >= 0.95 * total:
            return LATENCY_BOUNDS_S[index] if index < len(LATENCY_BOUNDS_S) else float("inf")
    return None


def delivery_report(data_dir: Path, destination: str, now: float | None = None) -> dict[str, Any]:
    """The Event Delivery view of ``destination``: per window delivered, not delivered and the
    p95 end-to-end latency (an upper bound: the histogram bucket it falls in), plus samples of
    the latest errors with what the source sent, the request and the response."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    path = shard_path(data_dir, 0)
    windows: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    rows: list[Any] = []
    if path.exists():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.execute("PRAGMA busy_timeout=10000")
            # Both, or neither yet: the writer creates them one after the other.
            has_tables = conn.execute(
                "SELECT COUNT(*) FROM sqlite_master "
                "WHERE name IN ('delivery_stats', 'error_samples')"
            ).fetchone()[0]
            if has_tables == 2:
                rows = conn.execute(
                    "SELECT minute, delivered, failed, dead_lettered, latency FROM "
                    "delivery_stats WHERE destination = ? AND minute > ?",
                    (destination, minute - KEEP_MINUTES),
                ).fetchall()
                samples = [
                    {
                        "at": at,
                        "messageId": message_id,
                        "reason": reason,
                        "youSent": sent,
                        "requestToDestination": request,
                        "responseFromDestination": response,
                    }
                    for at, message_id, reason, sent, request, response in conn.execute(
                        "SELECT at, message_id, reason, sent, request, response FROM "
                        "error_samples WHERE destination = ? ORDER BY id DESC LIMIT ?",
                        (destination, KEEP_SAMPLES),
                    )
                ]
    for name, minutes in (("5m", 5), ("1h", 60), ("24h", KEEP_MINUTES)):
        chosen = [r for r in rows if r[0] > minute - minutes]
        latency = [0] * (len(LATENCY_BOUNDS_S) + 1)
        for r in chosen:
            latency = [a + b for a, b in zip(latency, orjson.loads(r[4]), strict=True)]
        windows[name] = {
            "delivered": sum(r[1] for r in chosen),
            "failedAttempts": sum(r[2] for r in chosen),
            "notDelivered": sum(r[3] for r in chosen),
            "p95LatencyS": _p95(latency),
        }
    return {"destination": destination, "windows": windows, "errorSamples": samples}


def delivery_trends(data_dir: Path, destination: str, now: float | None = None) -> dict[str, Any]:
    """The Event Delivery charts of ``destination``: the last hour per minute and the last 24
    hours per hour, each bucket with delivered, failed attempts, not delivered and p95."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    path = shard_path(data_dir, 0)
    rows: list[Any] = []
    if path.exists():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.execute("PRAGMA busy_timeout=10000")
            # Both, or neither yet: the writer creates them one after the other.
            has_tables = conn.execute(
                "SELECT COUNT(*) FROM sqlite_master "
                "WHERE name IN ('delivery_stats', 'error_samples')"
            ).fetchone()[0]
            if has_tables == 2:
                rows = conn.execute(
                    "SELECT minute, delivered, failed, dead_lettered, latency FROM "
                    "delivery_stats WHERE destination = ? AND minute > ?",
                    (destination, minute - KEEP_MINUTES),
                ).fetchall()
    trends: dict[str, Any] = {}
    for name, bucket_minutes, buckets in (("1h", 1, 60), ("24h", 60, 24)):
        last = minute - minute % bucket_minutes
        start = last - (buckets - 1) * bucket_minutes
        series = [_Minute() for _ in range(buckets)]
        for row_minute, delivered, failed, dead, latency in rows:
            index = (row_minute - start) // bucket_minutes
            if 0 <= index < buckets:
                into = series[index]
                into.delivered += delivered
                into.failed += failed
                into.dead_lettered += dead
                into.latency = [
                    a + b for a, b in zip(into.latency, orjson.loads(latency), strict=True)
                ]
        trends[name] = {
            "start": start * 60,
            "bucketS": bucket_minutes * 60,
            "delivered": [b.delivered for b in series],
            "failedAttempts": [b.failed for b in series],
            "notDelivered": [b.dead_lettered for b in series],
            "p95LatencyS": [_p95(b.latency) for b in series],
        }
    return trends
