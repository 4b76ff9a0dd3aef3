"""The embedded log: SQLite in WAL mode, one writer thread that group-commits.

Every write (appends, cursor saves, dead letters, compaction) is queued to one writer thread.
The thread takes everything queued since its last commit, runs it in one transaction and commits
with ``synchronous=FULL``, so the WAL is fsync'd before any of those callers is answered. While it
commits, new writes queue up for the next commit: concurrent requests share one fsync.
Reads use a second connection on a reader thread; WAL lets them run beside the writer.

Several processes may open the same file (``eventgate serve`` runs one per ingress process and
one for the router): SQLite serializes their commits with its write lock, and sequence numbers
come from ``AUTOINCREMENT`` inside that lock, so they are unique and in commit order. A process
learns of other processes' commits by polling (``wait_beyond``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from gateway import failpoints
from gateway.destination import Event
from gateway.errors import StorageFullError, StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log.base import DeadLetter, PendingRetry, ReadResult

__all__ = ["SqliteEventLog", "shard_path", "shards_in"]

log = structlog.get_logger("eventgate.log")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    destination TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt_at REAL NOT NULL,
    last_attempt_at REAL NOT NULL,
    request TEXT,
    response TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_by_destination ON dead_letters (destination, id);
CREATE TABLE IF NOT EXISTS retries (
    destination TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at REAL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    reason TEXT NOT NULL,
    request TEXT,
    response TEXT,
    user_key TEXT,
    PRIMARY KEY (destination, seq)
);
CREATE INDEX IF NOT EXISTS retries_due ON retries (destination, next_attempt_at);
CREATE INDEX IF NOT EXISTS retries_by_user ON retries (destination, user_key, seq);
CREATE TABLE IF NOT EXISTS seen (
    message_id TEXT NOT NULL UNIQUE,
    at REAL NOT NULL
);
"""

_INSERT_EVENT = "INSERT INTO events (source, message_id, received_at, body) VALUES (?, ?, ?, ?)"

_Op = Callable[[sqlite3.Connection], Any]
_Row = tuple[str, str, float, bytes]

# Per-row bytes SQLite spends beyond the body (seq, source, message_id, received_at, b-tree).
_ROW_OVERHEAD = 80
# How often the writer replaces its running estimate of the log's size by a real measurement.
_MEASURE_EVERY_S = 1.0
# How often a reader waiting for new events looks for commits made by other processes.
_POLL_S = 0.01
# Compaction deletes at most this many events per transaction, so it never holds the write lock
# long enough to delay ingress.
_COMPACT_CHUNK = 1_000
_COMPACT_PAUSE_S = 0.005
_RECORD_SQL = (
    "INSERT INTO seen (message_id, at) SELECT value, ?1 FROM json_each(?2) WHERE true "
    "ON CONFLICT (message_id) DO UPDATE SET at = excluded.at WHERE seen.at < ?3 "
    "RETURNING message_id"
)
_SEEN_SQL = (
    "SELECT message_id FROM {schema}.seen "
    "WHERE message_id IN (SELECT value FROM json_each(?)) AND at >= ?"
)
# How long a write waits for another process to release SQLite's write lock before failing.
_LOCK_TIMEOUT_S = 5.0
_BUSY_TIMEOUT_MS = 5000
# How long compaction's WAL checkpoint waits for other processes' transactions.
_CHECKPOINT_WAIT_MS = 1000


class _Write:
    """One caller's write: rows to append, or another operation; answered through ``future``."""

    __slots__ = ("future", "op", "rows")

    def __init__(
        self, future: asyncio.Future[Any], *, rows: list[_Row] | None = None, op: _Op | None = None
    ) -> None:
        self.future = future
        self.rows = rows
        self.op = op


class SqliteEventLog:
    """The embedded :class:`~gateway.log.EventLog`: a SQLite WAL file in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        disk_quota_bytes: int,
        shard: int = 0,
        dedup_window_s: float = 0.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.dedup_window_s = dedup_window_s
        self.shard = shard
        self.path = shard_path(self.data_dir, shard)
        self.disk_quota_bytes = disk_quota_bytes
        # Writes for the writer thread; ``None`` tells it to stop. A SimpleQueue (C, one futex
        # per wake-up) costs less per request than a list behind a lock and an Event.
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closing = False
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="eventgate-log-reader")
        self._reader_conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_seq = 0
        self._new_data = asyncio.Event()
        self._used_bytes = 0
        self._measured_at = 0.0
        self._peers: sqlite3.Connection | None = None
        self._peer_schemas: list[str] = []
        self.commits = 0
        """How many transactions the writer has committed (each is one fsync)."""

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file and schema, then start the writer and reader threads."""
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        conn.executescript(_SCHEMA)
        conn.execute("PRAGMA busy_timeout=0")  # the writer waits in _begin_immediate instead
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_seq = max(row[0], seq_row[0] if seq_row else 0)
        self._used_bytes = self._measure(conn)
        peers = self._connect_peers() if self.dedup_window_s > 0 else None
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn, peers), name="eventgate-log-writer", daemon=True
        )
        self._writer.start()
        self._reader_conn = await self._on_reader(lambda: _connect(self.path))
        log.info("log.opened", path=str(self.path), last_seq=self._last_seq)

    async def close(self) -> None:
        """Commit what is queued, then stop both threads and close the connections."""
        self._closing = True
        self._queue.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._reader_conn is not None:
            conn = self._reader_conn
            await self._on_reader(conn.close)
        self._reader.shutdown(wait=True)

    # -- writes ------------------------------------------------------------------------------

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Store ``events`` durably (group-committed, fsync'd); return how many were duplicates.

        With a dedup window, an event whose messageId is already stored (in any shard, within
        the window) or repeats one earlier in the same commit is not stored again.
        """
        if not events:
            return 0
        rows = [(e.source, e.message_id, e.received_at, e.body) for e in events]
        duplicates: int = await self._submit(rows=rows)
        return duplicates

    async def set_cursor(self, destination: str, seq: int) -> None:
        """Durably save how far ``destination`` has got."""

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cursors (destination, seq) VALUES (?, ?) "
                "ON CONFLICT (destination) DO UPDATE SET seq = excluded.seq",
                (destination, seq),
            )

        await self._submit(op=save)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Durably keep events a destination gave up on."""
        rows = [
            (
                d.destination,
                d.event.seq,
                d.event.source,
                d.event.message_id,
                d.event.raw,
                d.reason,
                d.attempts,
                d.first_attempt_at,
                d.last_attempt_at,
                d.request,
                d.response,
            )
            for d in letters
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO dead_letters (destination, seq, source, message_id, body, reason, "
                "attempts, first_attempt_at, last_attempt_at, request, response) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "DELETE FROM retries WHERE destination = ? AND seq = ?",
                [(d.destination, d.event.seq) for d in letters],
            )

        await self._submit(op=insert)

    async def schedule_retries(self, retries: Sequence[PendingRetry]) -> None:
        """Durably record (or update) events to try again at their ``next_attempt_at``."""
        rows = [
            (
                r.destination,
                r.event.seq,
                r.event.source,
                r.event.message_id,
                r.event.received_at,
                r.event.raw,
                r.attempts,
                r.first_attempt_at,
                r.next_attempt_at,
                r.reason,
                r.request,
                r.response,
                r.user_key,
            )
            for r in retries
        ]

        def upsert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO retries (destination, seq, source, message_id, "
                "received_at, body, attempts, first_attempt_at, next_attempt_at, reason, "
                "request, response, user_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._submit(op=upsert)

    async def retries_done(self, destination: str, seqs: Sequence[int]) -> None:
        """Forget the destination's retries of these events (they were delivered)."""
        rows = [(destination, seq) for seq in seqs]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM retries WHERE destination = ? AND seq = ?", rows)

        await self._submit(op=delete)

    async def due_retries(self, destination: str, now: float, limit: int) -> list[PendingRetry]:
        """Up to ``limit`` of the destination's retries due at ``now``, oldest due first."""

        def query() -> list[PendingRetry]:
            assert self._reader_conn is not None
            rows = self._reader_conn.execute(
                "SELECT seq, source, message_id, received_at, body, attempts, first_attempt_at, "
                "next_attempt_at, reason, request, response, user_key FROM retries "
                "WHERE destination = ? AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, seq LIMIT ?",
                (destination, now, limit),
            ).fetchall()
            return [_pending_retry(destination, row) for row in rows]

        return await self._on_reader(query)

    async def first_pending_of(
        self, destination: str, user_keys: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        """Per user: seq and next attempt time of their earliest pending retry."""
        keys = orjson.dumps(list(user_keys)).decode()

        def query() -> dict[str, tuple[int, float]]:
            assert self._reader_conn is not None
            rows = self._reader_conn.execute(
                "SELECT user_key, MIN(seq), next_attempt_at FROM retries WHERE destination = ? "
                "AND user_key IN (SELECT value FROM json_each(?)) GROUP BY user_key",
                (destination, keys),
            ).fetchall()
            return {user: (int(seq), float(due)) for user, seq, due in rows}

        return await self._on_reader(query)

    async def next_retry_at(self, destination: str) -> float | None:
        """When the destination's next retry is due, or ``None`` if none is pending."""

        def query() -> float | None:
            assert self._reader_conn is not None
            row = self._reader_conn.execute(
                "SELECT MIN(next_attempt_at) FROM retries WHERE destination = ?", (destination,)
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._on_reader(query)

    async def count_retries(self, destination: str) -> int:
        """How many of the destination's events wait for a retry."""

        def query() -> int:
            assert self._reader_conn is not None
            row = self._reader_conn.execute(
                "SELECT COUNT(*) FROM retries WHERE destination = ?", (destination,)
            ).fetchone()
            return int(row[0])

        return await self._on_reader(query)

    async def compact(self, active_destinations: Collection[str]) -> int:
        """Delete the events every active destination's cursor has passed, and messageIds older
        than the dedup window.

        Deletes in chunks of at most ``_COMPACT_CHUNK`` events per transaction, so other writers
        (ingress in other processes) wait for the lock only briefly.
        """
        names = list(active_destinations)
        marks = ",".join("?" * len(names))

        def delete_chunk(conn: sqlite3.Connection) -> int:
            first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if first is None:
                return 0
            if names:
                count, bound = conn.execute(
                    f"SELECT COUNT(*), MIN(seq) FROM cursors WHERE destination IN ({marks})",  # noqa: S608 - placeholders only
                    names,
                ).fetchone()
                if count < len(names):
                    return 0  # a destination without a cursor has not started reading yet
            else:
                bound = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            bound = min(bound, first + _COMPACT_CHUNK - 1)
            return int(conn.execute("DELETE FROM events WHERE seq <= ?", (bound,)).rowcount)

        def release_pages(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA incremental_vacuum")

        cutoff = time.time() - self.dedup_window_s

        def forget_chunk(conn: sqlite3.Connection) -> int:
            # Oldest rows first in rowid order: the scan stops after the chunk.
            return int(
                conn.execute(
                    "DELETE FROM seen WHERE rowid IN "
                    "(SELECT rowid FROM seen WHERE at < ? ORDER BY rowid LIMIT ?)",
                    (cutoff, _COMPACT_CHUNK),
                ).rowcount
            )

        total = 0
        while deleted := await self._submit(op=delete_chunk):
            total += deleted
            await asyncio.sleep(_COMPACT_PAUSE_S)  # let ingress processes take the write lock
        if self.dedup_window_s > 0:
            while forgotten := await self._submit(op=forget_chunk):
                total += forgotten
                await asyncio.sleep(_COMPACT_PAUSE_S)
        if total:
            await self._submit(op=release_pages)
            await asyncio.to_thread(_truncate_wal, self.path)
        return total

    async def _submit(self, *, rows: list[_Row] | None = None, op: _Op | None = None) -> Any:
        if self._closing:
            raise StorageUnavailableError("the log is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Write(future, rows=rows, op=op))
        return await future

    def _connect_peers(self) -> sqlite3.Connection | None:
        """A read connection to the other shards, for deduplication across ingress processes.

        A separate connection: attached to the writer's own, they would all be write-locked by
        its ``BEGIN IMMEDIATE``.
        """
        others = [shard_path(self.data_dir, n) for n in shards_in(self.data_dir)]
        others = [path for path in others if path != self.path]
        if not others:
            return None
        peers = sqlite3.connect(
            "file::memory:", isolation_level=None, check_same_thread=False, uri=True
        )
        peers.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        for number, path in enumerate(others):
            peers.execute(f"ATTACH DATABASE ? AS peer{number}", (f"file:{path}?mode=ro",))
        self._peer_schemas = [f"peer{n}" for n in range(len(others))]
        return peers

    def _write_loop(self, conn: sqlite3.Connection, peers: sqlite3.Connection | None) -> None:
        self._peers = peers
        try:
            stopping = False
            while not stopping:
                # Block for the first write, then take everything queued behind it: one commit.
                batch: list[_Write] = []
                item = self._queue.get()
                while True:
                    if item is None:
                        stopping = True
                    else:
                        batch.append(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._commit(conn, batch)
        finally:
            conn.close()
            if peers is not None:
                peers.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        """Run ``batch`` in one transaction; answer each caller once the commit is durable.

        All appends of the batch become one ``executemany``, so a commit costs a handful of
        statements however many callers share it. A storage error fails every caller of the
        batch: nothing of it was committed.
        """
        full = self._used_bytes >= self.disk_quota_bytes
        rows: list[_Row] = []
        duplicates: dict[int, int] = {}
        if not full:
            for write in batch:
                if write.rows is not None:
                    rows.extend(write.rows)
        results: list[tuple[_Write, Any, BaseException | None]] = []
        seq = 0
        try:
            _begin_immediate(conn)
            if rows and self.dedup_window_s > 0:
                rows, duplicates = self._drop_duplicates(conn, batch)
            if rows:
                conn.executemany(_INSERT_EVENT, rows)
                seq = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            for write in batch:
                if write.op is not None:
                    results.append((write, write.op(conn), None))
                elif full:
                    results.append((write, None, StorageFullError("the disk quota is reached")))
                else:
                    results.append((write, duplicates.get(id(write), 0), None))
            failpoints.hit("log.commit")
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # noqa: BLE001 - every caller must be answered
            log.error("log.commit_failed", error=str(exc))
            if conn.in_transaction:
                conn.rollback()
            error = _storage_error(exc)
            results = [(w, None, error) for w in batch]
            rows = []
        if rows:
            self._last_seq = max(self._last_seq, seq)
            self._used_bytes += sum(len(r[3]) + _ROW_OVERHEAD for r in rows)
        now = time.monotonic()
        if now - self._measured_at >= _MEASURE_EVERY_S or full:
            self._used_bytes = self._measure(conn)
            self._measured_at = now
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting any more
            self._loop.call_soon_threadsafe(self._finish, results, bool(rows))

    def _drop_duplicates(
        self, conn: sqlite3.Connection, batch: list[_Write]
    ) -> tuple[list[_Row], dict[int, int]]:
        """The appends' rows without messageIds already stored (in any shard, within the window)
        or repeated in this batch, and how many each write lost that way.

        Runs inside the write transaction: one upsert records every messageId in this shard's
        ``seen`` table and returns the ones that were new (or older than the window), then the
        other shards are asked about those only.
        """
        ids = [row[1] for write in batch if write.rows is not None for row in write.rows]
        now = time.time()
        cutoff = now - self.dedup_window_s
        # One JSON array parameter keeps the SQL text fixed, so SQLite's prepared statement is
        # reused (an IN list of varying length would be compiled again for every commit).
        fresh = {r[0] for r in conn.execute(_RECORD_SQL, (now, orjson.dumps(ids).decode(), cutoff))}
        if self._peers is not None and fresh:
            params = (orjson.dumps(sorted(fresh)).decode(), cutoff)
            for schema in self._peer_schemas:
                found = self._peers.execute(_SEEN_SQL.format(schema=schema), params)
                fresh.difference_update(r[0] for r in found)
        kept: list[_Row] = []
        duplicates: dict[int, int] = {}
        for write in batch:
            if write.rows is None:
                continue
            for row in write.rows:
                if row[1] in fresh:
                    fresh.discard(row[1])  # a second copy in this batch is a duplicate
                    kept.append(row)
                else:
                    duplicates[id(write)] = duplicates.get(id(write), 0) + 1
        return kept, duplicates

    def _finish(self, results: list[tuple[_Write, Any, BaseException | None]], grew: bool) -> None:
        for write, value, error in results:
            if write.future.done():
                continue
            if error is None:
                write.future.set_result(value)
            else:
                write.future.set_exception(error)
        if grew:
            event, self._new_data = self._new_data, asyncio.Event()
            event.set()

    def _measure(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        others = 0
        for sibling in self.data_dir.glob("events-*.db*"):
            if sibling != self.path:
                with contextlib.suppress(FileNotFoundError):
                    others += sibling.stat().st_size
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            wal = 0
        return int((pages - free) * size + wal + others)

    # -- reads -------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The newest durable sequence number."""
        return self._last_seq

    def used_bytes(self) -> int:
        """Bytes the log occupies on disk (live pages plus the WAL), as of the last commit."""
        return self._used_bytes

    async def wait_beyond(self, seq: int, timeout_s: float) -> None:
        """Return once an event newer than ``seq`` is durable, or after ``timeout_s``.

        Commits of this process wake the caller at once; those of other processes are noticed
        within ``_POLL_S``.
        """
        deadline = time.monotonic() + timeout_s
        while self._last_seq <= seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._new_data.wait(), min(remaining, _POLL_S))
            except TimeoutError:
                await self.refresh()

    async def refresh(self) -> int:
        """Learn the newest sequence number, including other processes' commits; return it."""

        self._last_seq = max(self._last_seq, await self._on_reader(self._newest_seq))
        return self._last_seq

    def _newest_seq(self) -> int:
        """The newest committed sequence number (on the reader thread)."""
        assert self._reader_conn is not None
        row = self._reader_conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        ).fetchone()
        return int(row[0]) if row else 0

    async def read(self, after: int, limit: int, sources: Collection[str] | None) -> ReadResult:
        """Up to ``limit`` events after ``after``, from ``sources`` (``None``: every source)."""
        wanted = None if sources is None else frozenset(sources)

        def query() -> ReadResult:
            assert self._reader_conn is not None
            rows = self._reader_conn.execute(
                "SELECT seq, source, message_id, received_at, body FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            events = [
                Event(seq=seq, source=source, message_id=message_id, raw=body, received_at=at)
                for seq, source, message_id, at, body in rows
                if wanted is None or source in wanted
            ]
            scanned_to = rows[-1][0] if rows else after
            newest = max(self._newest_seq(), scanned_to)
            return ReadResult(
                events=events,
                scanned_to=scanned_to,
                newest=newest,
                skipped=len(rows) - len(events),
            )

        result = await self._on_reader(query)
        self._last_seq = max(self._last_seq, result.newest)
        return result

        return await self._on_reader(query)

    async def get_cursor(self, destination: str) -> int | None:
        """The saved position of ``destination``, or ``None``."""

        def query() -> int | None:
            assert self._reader_conn is not None
            row = self._reader_conn.execute(
                "SELECT seq FROM cursors WHERE destination = ?", (destination,)
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._on_reader(query)

    async def count_dead_letters(self, destination: str | None = None) -> int:
        """How many dead letters are kept (for one destination, or all)."""

        def query() -> int:
            assert self._reader_conn is not None
            if destination is None:
                row = self._reader_conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
            else:
                row = self._reader_conn.execute(
                    "SELECT COUNT(*) FROM dead_letters WHERE destination = ?", (destination,)
                ).fetchone()
            return int(row[0])

        return await self._on_reader(query)

    async def _on_reader(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn)


def _pending_retry(destination: str, row: tuple[Any, ...]) -> PendingRetry:
    seq, source, message_id, at, body, attempts, first, due, reason, request, response, user = row
    return PendingRetry(
        destination=destination,
        event=Event(seq=seq, source=source, message_id=message_id, raw=body, received_at=at),
        attempts=attempts,
        first_attempt_at=first,
        next_attempt_at=due,
        reason=reason,
        request=request,
        response=response,
        user_key=user,
    )


def shard_path(data_dir: Path, shard: int) -> Path:
    """The file of log shard ``shard``: each ingress process appends to its own shard."""
    return data_dir / f"events-{shard}.db"


def shards_in(data_dir: Path) -> list[int]:
    """The shard numbers that have a file in ``data_dir``, ascending."""
    found = []
    for path in data_dir.glob("events-*.db"):
        number = path.stem.removeprefix("events-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """Take SQLite's write lock, retrying every 100 µs while another process holds it.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between tries; another process's commit
    holds the lock for well under a millisecond, so those sleeps would be most of the latency
    when several ingress processes share the log. The writer's connection therefore has no busy
    timeout (in WAL mode nothing but ``BEGIN IMMEDIATE`` waits for a lock).
    """
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.0001)


def _truncate_wal(path: Path) -> None:
    """Copy the WAL into the database file and truncate it to nothing.

    A WAL file keeps its largest size until truncated, and the quota counts it: without this,
    a log that reached ``disk_quota_mb`` would stay there however much compaction deleted.
    Waits at most ``_CHECKPOINT_WAIT_MS`` for other processes' transactions; when they keep
    the file busy, the next compaction tries again.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={_CHECKPOINT_WAIT_MS}")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("log.checkpoint_busy", path=str(path))
    except sqlite3.Error as exc:
        log.warning("log.checkpoint_failed", path=str(path), error=str(exc))
    finally:
        conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Before anything else touches a new file: pages freed by compaction go back to the file
    # system (see compact), so file sizes track what the log holds and every process can check
    # the quota with stat(). Only on a new file: on an existing one it changes nothing but
    # still writes, so it would fail on a full disk and keep an ingress process from starting.
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return conn


def _storage_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return StorageFullError("the disk is full")
    return StorageUnavailableError(f"the log cannot be written: {exc}")
