"""Dead letters across every log shard: list, show, replay and purge.

Works on the data directory's SQLite files directly, so the CLI can use it beside a running
gateway (SQLite serializes the writes). A replay moves the letter to the shard's retry table,
due now, for that destination only; the router delivers it like any retry and counts it in
``eventgate_dead_letters_replayed_total``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.log.sqlite import shard_path, shards_in

__all__ = [
    "DeadLetterFilter",
    "DeadLetterRow",
    "count_by_destination",
    "delivery_state",
    "letter_json",
    "list_letters",
    "purge",
    "replay",
    "replay_one",
    "show",
]

_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; ``None`` fields match everything."""

    destination: str | None = None
    since: float | None = None
    """Unix seconds: last attempt at or after."""
    until: float | None = None
    """Unix seconds: last attempt before."""
    reason: str | None = None
    """A substring of the reason."""

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses: list[str] = ["1 = 1"]
        params: list[Any] = []
        if self.destination is not None:
            clauses.append("destination = ?")
            params.append(self.destination)
        if self.since is not None:
            clauses.append("last_attempt_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("last_attempt_at < ?")
            params.append(self.until)
        if self.reason is not None:
            clauses.append("instr(reason, ?) > 0")
            params.append(self.reason)
        return " AND ".join(clauses), params


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter; ``key`` (``<shard>:<id>``) names it for ``show``."""

    key: str
    destination: str
    source: str
    message_id: str
    reason: str
    attempts: int
    first_attempt_at: float
    last_attempt_at: float
    request: str | None
    response: str | None
    body: bytes


_COLUMNS = (
    "id, destination, source, message_id, reason, attempts, first_attempt_at, last_attempt_at, "
    "request, response, body"
)


# Attempts restart at 0 (the router counts a retry with 0 attempts as a replay).
_REPLAY_SQL = (
    "INSERT OR REPLACE INTO retries (destination, seq, source, message_id, received_at, body, "
    "attempts, first_attempt_at, next_attempt_at, reason, request, response) "
    "SELECT destination, seq, source, message_id, NULL, body, 0, ?, ?, 'replayed', NULL, NULL "
    "FROM dead_letters WHERE {where}"
)


@contextmanager
def _shard(data_dir: Path, shard: int) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(shard_path(data_dir, shard), isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        yield conn


def _row(shard: int, row: tuple[Any, ...]) -> DeadLetterRow:
    key, destination, source, message_id, reason, attempts, first, last, req, resp, body = row
    return DeadLetterRow(
        f"{shard}:{key}",
        destination,
        source,
        message_id,
        reason,
        attempts,
        first,
        last,
        req,
        resp,
        bytes(body),
    )


def list_letters(data_dir: Path, match: DeadLetterFilter, limit: int = 100) -> list[DeadLetterRow]:
    """The newest ``limit`` dead letters matching ``match``, newest first."""
    where, params = match.where()
    rows: list[DeadLetterRow] = []
    for shard in shards_in(data_dir):
        with _shard(data_dir, shard) as conn:
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE {where} "  # noqa: S608 - fixed SQL, placeholders
                "ORDER BY last_attempt_at DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        rows.extend(_row(shard, r) for r in found)
    rows.sort(key=lambda r: r.last_attempt_at, reverse=True)
    return rows[:limit]


def show(data_dir: Path, key: str) -> DeadLetterRow | None:
    """The dead letter named ``key`` (``<shard>:<id>``), or ``None``."""
    shard, _, number = key.partition(":")
    if not (shard.isdigit() and number.isdigit()) or int(shard) not in shards_in(data_dir):
        return None
    with _shard(data_dir, int(shard)) as conn:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?",  # noqa: S608 - fixed SQL
            (int(number),),
        ).fetchone()
    return None if row is None else _row(int(shard), row)


def replay(data_dir: Path, match: DeadLetterFilter) -> int:
    """Re-enqueue the matching dead letters for their own destination; return how many."""
    where, params = match.where()
    now = time.time()
    total = 0
    for shard in shards_in(data_dir):
        with _shard(data_dir, shard) as conn:
            conn.execute("BEGIN IMMEDIATE")
            moved = conn.execute(_REPLAY_SQL.format(where=where), [now, now, *params]).rowcount
            conn.execute(f"DELETE FROM dead_letters WHERE {where}", params)  # noqa: S608
            conn.execute("COMMIT")
        total += moved
    return total


def count_by_destination(data_dir: Path) -> dict[str, int]:
    """How many dead letters each destination has, over every shard."""
    counts: dict[str, int] = {}
    for shard in shards_in(data_dir):
        with _shard(data_dir, shard) as conn:
            for destination, count in conn.execute(
                "SELECT destination, COUNT(*) FROM dead_letters GROUP BY destination"
            ):
                counts[destination] = counts.get(destination, 0) + count
    return counts


def replay_one(data_dir: Path, key: str) -> tuple[str, str] | None:
    """Re-enqueue the dead letter named ``key``; return its destination and its event's
    reference (``<shard>:<seq>``, for :func:`delivery_state`), or ``None`` if there is none."""
    shard, _, number = key.partition(":")
    if not (shard.isdigit() and number.isdigit()) or int(shard) not in shards_in(data_dir):
        return None
    now = time.time()
    with _shard(data_dir, int(shard)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT destination, seq FROM dead_letters WHERE id = ?", (int(number),)
        ).fetchone()
        if row is not None:
            conn.execute(_REPLAY_SQL.format(where="id = ?"), (now, now, int(number)))
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (int(number),))
        conn.execute("COMMIT")
    return None if row is None else (row[0], f"{shard}:{row[1]}")


def delivery_state(data_dir: Path, destination: str, ref: str) -> str | None:
    """Where the event ``ref`` (``<shard>:<seq>``) stands for ``destination``.

    ``dead_lettered``, ``retrying`` (a retry or a replay is pending), ``pending`` (the
    destination has not reached it yet) or ``done`` (delivered, or left out by the
    destination's rules); ``None`` when ``ref`` names no shard.
    """
    shard, _, number = ref.partition(":")
    if not (shard.isdigit() and number.isdigit()) or int(shard) not in shards_in(data_dir):
        return None
    seq = int(number)
    with _shard(data_dir, int(shard)) as conn:
        if conn.execute(
            "SELECT 1 FROM dead_letters WHERE destination = ? AND seq = ?", (destination, seq)
        ).fetchone():
            return "dead_lettered"
        if conn.execute(
            "SELECT 1 FROM retries WHERE destination = ? AND seq = ?", (destination, seq)
        ).fetchone():
            return "retrying"
        cursor = conn.execute(
            "SELECT seq FROM cursors WHERE destination = ?", (destination,)
        ).fetchone()
    return "done" if cursor is not None and cursor[0] >= seq else "pending"


def purge(data_dir: Path, match: DeadLetterFilter) -> int:
    """Delete the matching dead letters for good; return how many."""
    where, params = match.where()
    total = 0
    for shard in shards_in(data_dir):
        with _shard(data_dir, shard) as conn:
            total += conn.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount  # noqa: S608
    return total


def letter_json(row: DeadLetterRow, *, with_body: bool) -> dict[str, Any]:
    """``row`` as the CLI and the admin API show it (times as ISO-8601 UTC)."""
    data: dict[str, Any] = {
        "key": row.key,
        "destination": row.destination,
        "source": row.source,
        "messageId": row.message_id,
        "reason": row.reason,
        "attempts": row.attempts,
        "firstAttemptAt": _iso(row.first_attempt_at),
        "lastAttemptAt": _iso(row.last_attempt_at),
    }
    if with_body:
        data["request"] = row.request
        data["response"] = row.response
        data["event"] = orjson.loads(row.body)
    return data


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
