"""An example eventgate plugin: the ``example_sqlite`` destination stores events as SQLite rows.

It also registers the named transformation ``example_redact_ip`` (see :mod:`.transforms`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventgate_example.transforms import redact_ip
from gateway import BatchDestination, Destination, Event, RetryableDeliveryError, hookimpl

__all__ = [
    "SqliteDestination",
    "SqliteSettings",
    "redact_ip",
    "register_destination_types",
    "register_transforms",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    message_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL
)
"""


class SqliteSettings(BaseModel):
    """Settings of the ``example_sqlite`` destination."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="The SQLite database file; created if it does not exist.")


class SqliteDestination(BatchDestination[SqliteSettings]):
    """Writes each event as a row ``(message_id, source, type, body)`` of table ``events``.

    ``INSERT OR REPLACE`` keyed on ``message_id`` makes redelivery idempotent. sqlite3 blocks,
    so every call runs in a worker thread; the router never calls one instance concurrently.
    """

    type_name = "example_sqlite"
    display_name = "Example: SQLite"
    settings_model = SqliteSettings

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        """Create the destination; the database is opened by :meth:`open`."""
        super().__init__(name, settings)
        self._db: sqlite3.Connection | None = None
        # The router may deliver batches concurrently (one worker per log shard); one
        # connection runs one transaction at a time.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open (and if needed create) the database and its ``events`` table."""
        self._db = await asyncio.to_thread(self._connect)

    async def close(self) -> None:
        """Close the database."""
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    async def send_batch(self, events: Sequence[Event]) -> None:
        """Insert or replace one row per event in one committed transaction.

        Raises:
            RetryableDeliveryError: SQLite failed (locked, disk full, ...); the batch is retried.
        """
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__}.send_batch called before open()")
        rows = [(e.message_id, e.source, e.type, e.raw.decode()) for e in events]
        try:
            async with self._lock:
                await asyncio.to_thread(self._insert, self._db, rows)
        except sqlite3.Error as exc:
            raise RetryableDeliveryError(f"sqlite write failed: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.settings.path, check_same_thread=False)
        db.execute(_SCHEMA)
        db.commit()
        return db

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple[str, str, str, str]]) -> None:
        with db:  # commits, or rolls back on error
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)", rows)


@hookimpl
def register_destination_types() -> list[type[Destination[Any]]]:
    """Register ``example_sqlite``."""
    return [SqliteDestination]


@hookimpl
def register_transforms() -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]:
    """Register ``example_redact_ip``, usable in config as ``python: example_redact_ip``."""
    return {"example_redact_ip": redact_ip}
