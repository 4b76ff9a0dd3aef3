"""Ingest statistics for the console's overview: volume, top events, unique users, errors.

Every ingress process counts what it stores and refuses (:class:`IngestRecorder`, told by
:class:`~gateway.ingress.common.IngressState` through one call per request that only keeps a
reference) and adds it to ``console.db`` in the data directory every couple of seconds, so any
process can answer for all of them (:func:`ingest_overview`).

Kept there: events received and refused per source and minute (7 days), event types per source
and hour, a K-minimum-values sketch of the users seen per source and hour (exact up to
``SKETCH_SIZE`` users, about 5% off beyond), refusals per code and hour, and the newest refusal
samples. Past ``DECODE_PER_S`` events a second in one process, event types and users are taken
from an even sample of the events (counts are scaled back up; users are then a lower bound).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.events import NormalizedEvent

__all__ = ["DECODE_PER_S", "SKETCH_SIZE", "IngestRecorder", "ingest_overview", "stats_path"]

SKETCH_SIZE = 512
DECODE_PER_S = 5_000
KEEP_MINUTES = 7 * 24 * 60
KEEP_ERROR_SAMPLES = 50
_MAX_NAMES_PER_FLUSH = 200
_OTHER = "(other)"
_MESSAGE_CHARS = 500
_HASH_SPACE = float(2**64)

_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS ingest_volume (
    source TEXT NOT NULL,
    minute INTEGER NOT NULL,
    received INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    PRIMARY KEY (source, minute)
);
CREATE TABLE IF NOT EXISTS ingest_types (
    source TEXT NOT NULL,
    hour INTEGER NOT NULL,
    type TEXT NOT NULL,
    event TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (source, hour, type, event)
);
CREATE TABLE IF NOT EXISTS ingest_users (
    source TEXT NOT NULL,
    hour INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    PRIMARY KEY (source, hour)
);
CREATE TABLE IF NOT EXISTS ingest_errors (
    source TEXT NOT NULL,
    hour INTEGER NOT NULL,
    code TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (source, hour, code)
);
CREATE TABLE IF NOT EXISTS ingest_error_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    status INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


def stats_path(data_dir: Path) -> Path:
    """The file every ingress process adds its ingest statistics to."""
    return data_dir / "console.db"


def user_hash(user: str) -> int:
    """A stable 64-bit hash of a user id (the same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little")


def merge_sketch(*sketches: Iterable[int]) -> list[int]:
    """The K-minimum-values sketch of the union of ``sketches``: the smallest hashes, sorted."""
    merged: set[int] = set()
    for sketch in sketches:
        merged.update(sketch)
    return sorted(merged)[:SKETCH_SIZE]


def estimate_users(sketch: Sequence[int]) -> int:
    """How many distinct users a sketch stands for: exact below ``SKETCH_SIZE``."""
    if len(sketch) < SKETCH_SIZE:
        return len(sketch)
    return round((SKETCH_SIZE - 1) * _HASH_SPACE / (sketch[-1] + 1))


def _pack(sketch: Sequence[int]) -> bytes:
    return array("Q", sketch).tobytes()


def _unpack(blob: bytes) -> list[int]:
    values = array("Q")
    values.frombytes(blob)
    return values.tolist()


def _name_of(message: dict[str, Any]) -> tuple[str, str]:
    kind = str(message.get("type", "?"))
    name = message.get("event") if kind == "track" else message.get("name")
    return kind, str(name) if name else ""


@dataclass(frozen=True, slots=True)
class _Tallies:
    volume: Counter[tuple[str, int]]
    refused: Counter[tuple[str, int]]
    types: Counter[tuple[str, int, str, str]]
    users: dict[tuple[str, int], set[str]]
    errors: Counter[tuple[str, int, str]]
    samples: list[tuple[float, str, int, str, str]]


class IngestRecorder:
    """Counts one ingress process's stored and refused events; see the module docstring.

    :meth:`stored` and :meth:`rejected` run on the request path and only append;
    :meth:`digest` (on the event loop, a few times a second) turns them into tallies,
    :meth:`take` hands them over and :meth:`write` (in a thread) adds them to ``console.db``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = stats_path(data_dir)
        self._stored: list[tuple[str, list[NormalizedEvent], int]] = []
        self._rejected: list[tuple[str | None, list[dict[str, Any]], int, float]] = []
        self._volume: Counter[tuple[str, int]] = Counter()
        self._refused: Counter[tuple[str, int]] = Counter()
        self._types: Counter[tuple[str, int, str, str]] = Counter()
        self._users: dict[tuple[str, int], set[str]] = {}
        self._errors: Counter[tuple[str, int, str]] = Counter()
        self._samples: list[tuple[float, str, int, str, str]] = []
        self._budget_at = 0.0
        self._budget = DECODE_PER_S
        self._write_lock = threading.Lock()

    # -- the request path --------------------------------------------------------------------

    def stored(self, source: str, events: list[NormalizedEvent], duplicates: int) -> None:
        """Keep a reference to a request's stored events (counted by :meth:`digest`)."""
        self._stored.append((source, events, duplicates))

    def rejected(self, source: str | None, items: list[dict[str, Any]], status: int) -> None:
        """Keep a reference to a request's refusals (counted by :meth:`digest`)."""
        self._rejected.append((source, items, status, time.time()))

    # -- a few times a second ----------------------------------------------------------------

    def digest(self, now: float | None = None) -> None:
        """Turn what was kept since the last call into per-minute and per-hour tallies."""
        now = time.time() if now is None else now
        if now - self._budget_at >= 1.0:
            self._budget_at, self._budget = now, DECODE_PER_S
        stored, self._stored = self._stored, []
        rejected, self._rejected = self._rejected, []
        total = sum(len(events) for _, events, _ in stored)
        # Decode every event while the budget lasts, else an even sample weighted back up.
        stride = 1 if total <= self._budget else -(-total // max(self._budget, 1))
        offset = 0
        for source, events, duplicates in stored:
            if not events:
                continue
            at = events[0].received_at
            self._volume[source, int(at // 60)] += len(events) - duplicates
            hour = int(at // 3600)
            users = self._users.setdefault((source, hour), set())
            start = (-offset) % stride
            for event in events[start::stride]:
                message = event.message if event.message is not None else orjson.loads(event.body)
                kind, name = _name_of(message)
                self._types[source, hour, kind, name] += stride
                user = message.get("userId") or message.get("anonymousId")
                if user:
                    users.add(str(user))
            decoded = len(range(start, len(events), stride))
            self._budget -= decoded
            offset += len(events)
        self._digest_rejected(rejected)

    def _digest_rejected(
        self, rejected: list[tuple[str | None, list[dict[str, Any]], int, float]]
    ) -> None:
        for source, items, status, at in rejected:
            who = source or ""
            self._refused[who, int(at // 60)] += len(items) if status == 200 else 1
            for item in items:
                code = str(item.get("code", "unknown"))
                self._errors[who, int(at // 3600), code] += 1
                if len(self._samples) < KEEP_ERROR_SAMPLES:
                    message = str(item.get("message", ""))[:_MESSAGE_CHARS]
                    self._samples.append((at, who, status, code, message))

    def take(self) -> _Tallies:
        """The tallies since the last call, and start new ones (on the event loop's thread,
        like :meth:`digest`, so no count is added to a tally being written)."""
        tallies = _Tallies(
            self._volume, self._refused, self._types, self._users, self._errors, self._samples
        )
        self._volume, self._refused, self._types = Counter(), Counter(), Counter()
        self._users, self._errors, self._samples = {}, Counter(), []
        return tallies

    def flush(self, now: float | None = None) -> None:
        """:meth:`take` and :meth:`write` at once (blocking; for the last flush and tests)."""
        self.write(self.take(), now)

    def write(self, tallies: _Tallies, now: float | None = None) -> None:
        """Add ``tallies`` to ``console.db`` in one transaction (blocking: call it in a thread).

        Writes of one recorder happen one at a time, in the order they were taken.
        """
        now = time.time() if now is None else now
        volume, refused, types = tallies.volume, tallies.refused, tallies.types
        users, errors, samples = tallies.users, tallies.errors, tallies.samples
        if not (volume or refused or types or users or errors or samples):
            return
        with self._write_lock, closing(_connect(self.path)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO ingest_volume VALUES (?, ?, ?, 0) ON CONFLICT (source, minute) "
                "DO UPDATE SET received = received + excluded.received",
                [(s, m, n) for (s, m), n in volume.items()],
            )
            conn.executemany(
                "INSERT INTO ingest_volume VALUES (?, ?, 0, ?) ON CONFLICT (source, minute) "
                "DO UPDATE SET rejected = rejected + excluded.rejected",
                [(s, m, n) for (s, m), n in refused.items()],
            )
            conn.executemany(
                "INSERT INTO ingest_types VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source, hour, type, event) DO UPDATE SET count = count + "
                "excluded.count",
                [(s, h, k, e, n) for (s, h, k, e), n in _capped(types).items()],
            )
            for (source, hour), seen in users.items():
                if not seen:
                    continue
                row = conn.execute(
                    "SELECT sketch FROM ingest_users WHERE source = ? AND hour = ?",
                    (source, hour),
                ).fetchone()
                sketch = merge_sketch(_unpack(row[0]) if row else (), (user_hash(u) for u in seen))
                conn.execute(
                    "INSERT OR REPLACE INTO ingest_users VALUES (?, ?, ?)",
                    (source, hour, _pack(sketch)),
                )
            conn.executemany(
                "INSERT INTO ingest_errors VALUES (?, ?, ?, ?) ON CONFLICT (source, hour, code) "
                "DO UPDATE SET count = count + excluded.count",
                [(s, h, c, n) for (s, h, c), n in errors.items()],
            )
            conn.executemany(
                "INSERT INTO ingest_error_samples (at, source, status, code, message) "
                "VALUES (?, ?, ?, ?, ?)",
                samples,
            )
            oldest_minute = int(now // 60) - KEEP_MINUTES
            oldest_hour = oldest_minute // 60
            conn.execute("DELETE FROM ingest_volume WHERE minute < ?", (oldest_minute,))
            for table in ("ingest_types", "ingest_users", "ingest_errors"):
                conn.execute(f"DELETE FROM {table} WHERE hour < ?", (oldest_hour,))  # noqa: S608 - fixed names
            conn.execute(
                "DELETE FROM ingest_error_samples WHERE id <= "
                "(SELECT MAX(id) FROM ingest_error_samples) - ?",
                (KEEP_ERROR_SAMPLES,),
            )
            conn.execute("COMMIT")


def _capped(types: Counter[tuple[str, int, str, str]]) -> Counter[tuple[str, int, str, str]]:
    """At most ``_MAX_NAMES_PER_FLUSH`` names per source and hour; the rest as ``(other)``.

    A client inventing a new event name per event must not grow the table without bound.
    """
    kept: Counter[tuple[str, int, str, str]] = Counter()
    per_bucket: Counter[tuple[str, int]] = Counter()
    for (source, hour, kind, name), count in types.most_common():
        if per_bucket[source, hour] < _MAX_NAMES_PER_FLUSH:
            per_bucket[source, hour] += 1
            kept[source, hour, kind, name] += count
        else:
            kept[source, hour, kind, _OTHER] += count
    return kept


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(_SCHEMA)
    return conn


def _series(
    rows: Sequence[tuple[int, int, int]], start_minute: int, bucket_minutes: int, buckets: int
) -> dict[str, Any]:
    received = [0] * buckets
    rejected = [0] * buckets
    for minute, got, refused in rows:
        index = (minute - start_minute) // bucket_minutes
        if 0 <= index < buckets:
            received[index] += got
            rejected[index] += refused
    return {
        "start": start_minute * 60,
        "bucketS": bucket_minutes * 60,
        "received": received,
        "rejected": rejected,
    }


def ingest_overview(data_dir: Path, source: str | None = None, now: float | None = None) -> Any:
    """The overview's ingest half: volume series, totals, top events, users and errors over the
    last 24 hours and 7 days (of ``source``, or of every source)."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    hour = minute // 60
    windows = {"24h": (24 * 60, 15, 96), "7d": (KEEP_MINUTES, 60, 168)}
    where, params = ("source = ?", [source]) if source is not None else ("1 = 1", [])
    result: dict[str, Any] = {"volume": {}, "totals": {}, "topEvents": {}, "uniqueUsers": {}}
    path = stats_path(data_dir)
    with closing(_connect(path)) as conn:
        for name, (span, bucket, buckets) in windows.items():
            first = minute - span + 1
            start = first - first % bucket
            rows = conn.execute(
                "SELECT minute, SUM(received), SUM(rejected) FROM ingest_volume "  # noqa: S608 - fixed SQL, placeholders
                f"WHERE {where} AND minute >= ? GROUP BY minute",
                [*params, start],
            ).fetchall()
            series = _series(rows, start, bucket, buckets + 1)
            result["volume"][name] = series
            in_window = [r for r in rows if r[0] >= first]
            result["totals"][name] = {
                "received": sum(r[1] for r in in_window),
                "rejected": sum(r[2] for r in in_window),
            }
            first_hour = hour - span // 60 + 1
            result["topEvents"][name] = [
                {"source": s, "type": k, "event": e, "count": n}
                for s, k, e, n in conn.execute(
                    "SELECT source, type, event, SUM(count) AS n FROM ingest_types "  # noqa: S608 - fixed SQL, placeholders
                    f"WHERE {where} AND hour >= ? GROUP BY source, type, event "
                    "ORDER BY n DESC, type, event LIMIT 20",
                    [*params, first_hour],
                )
            ]
            sketches = [
                _unpack(blob)
                for (blob,) in conn.execute(
                    f"SELECT sketch FROM ingest_users WHERE {where} AND hour >= ?",  # noqa: S608 - fixed SQL, placeholders
                    [*params, first_hour],
                )
            ]
            result["uniqueUsers"][name] = estimate_users(merge_sketch(*sketches))
        first_hour = hour - 23
        result["errorCounts"] = [
            {"source": s or None, "code": c, "count": n}
            for s, c, n in conn.execute(
                "SELECT source, code, SUM(count) AS n FROM ingest_errors "  # noqa: S608 - fixed SQL, placeholders
                f"WHERE ({where} OR source = '') AND hour >= ? GROUP BY source, code "
                "ORDER BY n DESC LIMIT 50",
                [*params, first_hour],
            )
        ]
        result["recentErrors"] = [
            {"at": at, "source": s or None, "status": status, "code": c, "message": m}
            for at, s, status, c, m in conn.execute(
                "SELECT at, source, status, code, message FROM ingest_error_samples "  # noqa: S608 - fixed SQL, placeholders
                f"WHERE {where} OR source = '' ORDER BY id DESC LIMIT ?",
                [*params, KEEP_ERROR_SAMPLES],
            )
        ]
    return result
