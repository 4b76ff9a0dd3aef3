"""The control store: suppressed users, deletion requests and tracking-plan violations.

A small SQLite file (``<data_dir>/control.db``, WAL) beside the event log, shared by every
gateway process and by the CLI: the admin API and ``eventgate privacy`` write to it, ingress
processes read the suppression list from it (re-read when another process changed it) and add
violation counts to it, and the router process works through the deletion requests.
Every method is synchronous and short; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ControlStore", "DeletionRequest", "DeletionStep", "ViolationKey"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    user_id TEXT PRIMARY KEY, reason TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS deletion_steps (
    request_id INTEGER NOT NULL, destination TEXT NOT NULL, status TEXT NOT NULL,
    detail TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (request_id, destination)
);
CREATE TABLE IF NOT EXISTS violations (
    source TEXT NOT NULL, tracking_plan TEXT NOT NULL, event_type TEXT NOT NULL,
    event_name TEXT NOT NULL, violation_type TEXT NOT NULL, field TEXT NOT NULL,
    count INTEGER NOT NULL, last_seen REAL NOT NULL, description TEXT NOT NULL,
    PRIMARY KEY (source, tracking_plan, event_type, event_name, violation_type, field)
);
"""


@dataclass(frozen=True, slots=True)
class DeletionStep:
    """One destination's part of a deletion request."""

    request_id: int
    user_id: str
    destination: str
    status: str
    """``pending``, ``done``, ``unsupported`` or ``failed``."""
    detail: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class DeletionRequest:
    """A request to forget a user, and where each destination stands."""

    id: int
    user_id: str
    status: str
    """``pending`` until every step is settled; then ``completed`` or ``failed``."""
    created_at: float
    finished_at: float | None
    steps: Sequence[DeletionStep]

    def as_json(self) -> dict[str, Any]:
        """The request as the admin API and the CLI show it."""
        return {
            "id": self.id,
            "userId": self.user_id,
            "status": self.status,
            "createdAt": self.created_at,
            "finishedAt": self.finished_at,
            "destinations": {
                s.destination: {"status": s.status, "detail": s.detail, "attempts": s.attempts}
                for s in self.steps
            },
        }


@dataclass(frozen=True, slots=True)
class ViolationKey:
    """What a violation count is kept by."""

    source: str
    tracking_plan: str
    event_type: str
    event_name: str
    violation_type: str
    field: str


class ControlStore:
    """Access to ``control.db``; one connection per store, guarded for use from threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "control.db"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._suppressed: frozenset[str] = frozenset()
        self._suppressed_version: tuple[int, int] = (-1, -1)

    def open(self) -> None:
        """Create the file and its tables if needed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # Suppression ---------------------------------------------------------------------------

    def suppress(self, user_ids: Iterable[str], reason: str) -> int:
        """Block these users' events at ingress; the number newly suppressed."""
        now = time.time()
        rows = [(user_id, reason, now) for user_id in user_ids]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO suppressions VALUES (?, ?, ?) ON CONFLICT (user_id) DO NOTHING", rows
            )
            return conn.total_changes - before

    def unsuppress(self, user_id: str) -> bool:
        """Let this user's events in again; whether they were suppressed."""
        with self._write() as conn:
            return (
                conn.execute("DELETE FROM suppressions WHERE user_id = ?", (user_id,)).rowcount > 0
            )

    def suppressions(self) -> list[dict[str, Any]]:
        """Every suppressed user, newest first."""
        rows = self._read(
            "SELECT user_id, reason, created_at FROM suppressions ORDER BY created_at DESC"
        )
        return [{"userId": u, "reason": r, "createdAt": c} for u, r, c in rows]

    def suppressed_ids(self) -> frozenset[str]:
        """The suppressed user ids, re-read only when the file changed since the last call."""
        with self._lock:
            conn = self._connection()
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            changes = conn.total_changes
            if (version, changes) != self._suppressed_version:
                rows = conn.execute("SELECT user_id FROM suppressions").fetchall()
                self._suppressed = frozenset(row[0] for row in rows)
                self._suppressed_version = (version, changes)
            return self._suppressed

    # Deletion requests ---------------------------------------------------------------------

    def request_deletion(self, user_id: str, destinations: Sequence[str]) -> DeletionRequest:
        """Record a request to delete ``user_id`` everywhere; the user is suppressed too."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO suppressions VALUES (?, 'deletion requested', ?) "
                "ON CONFLICT (user_id) DO NOTHING",
                (user_id, now),
            )
            request_id = conn.execute(
                "INSERT INTO deletions (user_id, status, created_at) VALUES (?, ?, ?)",
                (user_id, "pending" if destinations else "completed", now),
            ).lastrowid
            conn.executemany(
                "INSERT INTO deletion_steps (request_id, destination, status, next_attempt_at, "
                "updated_at) VALUES (?, ?, 'pending', ?, ?)",
                [(request_id, name, now, now) for name in destinations],
            )
        request = self.deletion(int(request_id or 0))
        assert request is not None
        return request

    def deletion(self, request_id: int) -> DeletionRequest | None:
        """One deletion request with its steps, or ``None``."""
        found = self.deletions(request_id=request_id)
        return found[0] if found else None

    def deletions(self, limit: int = 100, request_id: int | None = None) -> list[DeletionRequest]:
        """The newest deletion requests (or the one with ``request_id``)."""
        rows = self._read(
            "SELECT id, user_id, status, created_at, finished_at FROM deletions "
            "WHERE ? IS NULL OR id = ? ORDER BY id DESC LIMIT ?",
            (request_id, request_id, limit),
        )
        steps: dict[int, list[DeletionStep]] = {}
        if rows:
            for row in self._read(
                "SELECT s.request_id, d.user_id, s.destination, s.status, s.detail, s.attempts "
                "FROM deletion_steps s JOIN deletions d ON d.id = s.request_id "
                "WHERE s.request_id BETWEEN ? AND ? ORDER BY s.destination",
                (rows[-1][0], rows[0][0]),
            ):
                steps.setdefault(row[0], []).append(DeletionStep(*row))
        return [
            DeletionRequest(
                id=row[0],
                user_id=row[1],
                status=row[2],
                created_at=row[3],
                finished_at=row[4],
                steps=steps.get(row[0], []),
            )
            for row in rows
        ]

    def due_deletion_steps(self, now: float) -> list[DeletionStep]:
        """Pending steps whose next attempt is due, oldest request first."""
        rows = self._read(
            "SELECT s.request_id, d.user_id, s.destination, s.status, s.detail, s.attempts "
            "FROM deletion_steps s JOIN deletions d ON d.id = s.request_id "
            "WHERE s.status = 'pending' AND s.next_attempt_at <= ? ORDER BY s.request_id",
            (now,),
        )
        return [DeletionStep(*row) for row in rows]

    def settle_deletion_step(
        self, step: DeletionStep, status: str, detail: str | None, retry_at: float | None = None
    ) -> None:
        """Record a step's outcome (``retry_at``: still pending, next attempt then); when every
        step of the request is settled, the request is ``completed`` or ``failed``."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "UPDATE deletion_steps SET status = ?, detail = ?, attempts = attempts + 1, "
                "next_attempt_at = ?, updated_at = ? WHERE request_id = ? AND destination = ?",
                (status, detail, retry_at or now, now, step.request_id, step.destination),
            )
            states = {
                row[0]
                for row in conn.execute(
                    "SELECT status FROM deletion_steps WHERE request_id = ?", (step.request_id,)
                )
            }
            if "pending" not in states:
                conn.execute(
                    "UPDATE deletions SET status = ?, finished_at = ? WHERE id = ?",
                    ("failed" if "failed" in states else "completed", now, step.request_id),
                )

    # Tracking-plan violations --------------------------------------------------------------

    def add_violations(self, counts: Mapping[ViolationKey, tuple[int, float, str]]) -> None:
        """Add ``(count, last_seen, description)`` to each key's running totals."""
        rows = [
            (*(getattr(key, f) for f in ViolationKey.__slots__), n, seen, description)
            for key, (n, seen, description) in counts.items()
        ]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO violations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count, "
                "last_seen = max(last_seen, excluded.last_seen), "
                "description = excluded.description",
                rows,
            )

    def violations(self, source: str | None = None) -> list[dict[str, Any]]:
        """Violation counts per source, plan, event, type and field; most frequent first."""
        rows = self._read(
            "SELECT source, tracking_plan, event_type, event_name, violation_type, field, count, "
            "last_seen, description FROM violations WHERE ? IS NULL OR source = ? "
            "ORDER BY count DESC",
            (source, source),
        )
        keys = ("source", "trackingPlan", "eventType", "eventName", "violationType", "field",
                "count", "lastSeen", "description")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # ---------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the control store is not open")
        return self._conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _write(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """``with store._write() as conn``: one ``BEGIN IMMEDIATE`` transaction under the lock."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        conn = self.store._connection()
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        conn = self.store._connection()
        try:
            conn.execute("COMMIT" if error is None else "ROLLBACK")
        finally:
            self.store._lock.release()
