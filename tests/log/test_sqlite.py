"""Tests for gateway/log/sqlite.py: the embedded group-commit log.

The behaviour every backend shares is in the storage conformance suite (tests/log/conformance.py);
this module runs it and adds what is SQLite's own: group commit, shards, the disk quota files,
the dedup window's expiry.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.errors import StorageFullError
from gateway.log import EventLog, SqliteEventLog
from tests.log.conformance import EventLogContract, OpenLog, events

MiB = 1024 * 1024
OpenSqliteLog = Callable[..., Awaitable[SqliteEventLog]]


@pytest.fixture(name="open_sqlite_log")
async def _open_sqlite_log(tmp_path: Path) -> AsyncIterator[OpenSqliteLog]:
    logs: list[SqliteEventLog] = []

    async def open_log(quota: int = 1024 * MiB, dedup_window_s: float = 0.0) -> SqliteEventLog:
        event_log = SqliteEventLog(tmp_path, disk_quota_bytes=quota, dedup_window_s=dedup_window_s)
        await event_log.open()
        logs.append(event_log)
        return event_log

    yield open_log
    for event_log in logs:
        if not event_log._closing:
            await event_log.close()


class TestSqliteEventLogContract(EventLogContract):
    """The embedded log passes the storage conformance suite."""

    @pytest.fixture(name="open_log")
    def _open_log(self, open_sqlite_log: OpenSqliteLog) -> OpenLog:
        async def open_log() -> EventLog:
            return await open_sqlite_log(dedup_window_s=3600)

        return open_log

    async def count_dead_letters(self, event_log: EventLog, destination: str) -> int:
        assert isinstance(event_log, SqliteEventLog)
        return await event_log.count_dead_letters(destination)


async def test_concurrent_appends_share_commits(open_sqlite_log: OpenSqliteLog) -> None:
    """Concurrent appends are group-committed: far fewer commits than callers, none lost."""
    event_log = await open_sqlite_log()
    await asyncio.gather(*(event_log.append(events(2, start=i * 2)) for i in range(200)))
    result = await event_log.read(0, 1000, None)
    assert len(result.events) == 400
    assert len({e.message_id for e in result.events}) == 400
    assert event_log.commits < 100


async def test_sequence_numbers_start_at_one(open_sqlite_log: OpenSqliteLog) -> None:
    """A new shard numbers its events 1, 2, 3... with no gaps."""
    event_log = await open_sqlite_log()
    await event_log.append(events(3))
    assert [e.seq for e in (await event_log.read(0, 10, None)).events] == [1, 2, 3]


async def test_without_a_dedup_window_every_copy_is_stored(
    open_sqlite_log: OpenSqliteLog,
) -> None:
    """With no dedup window (the default) a repeated messageId is stored again."""
    event_log = await open_sqlite_log()
    assert await event_log.append(events(1) + events(1)) == 0
    assert len((await event_log.read(0, 10, None)).events) == 2


async def test_quota_refuses_appends_but_not_progress(open_sqlite_log: OpenSqliteLog) -> None:
    """Past the disk quota appends raise StorageFullError; cursors still save."""
    event_log = await open_sqlite_log(quota=1)
    with pytest.raises(StorageFullError):
        await event_log.append(events(1))
    assert event_log.last_seq() == 0
    await event_log.set_cursor("files", 0)
    assert await event_log.get_cursor("files") == 0


async def test_quota_counts_every_shard(tmp_path: Path) -> None:
    """The disk quota covers the whole data directory: another shard's file counts too."""
    (tmp_path / "events-1.db").write_bytes(b"\0" * (2 * MiB))
    event_log = SqliteEventLog(tmp_path, disk_quota_bytes=MiB, shard=0)
    await event_log.open()
    try:
        with pytest.raises(StorageFullError):
            await event_log.append(events(1))
    finally:
        await event_log.close()


async def test_dedup_is_global_across_shards(tmp_path: Path) -> None:
    """An ingress process sees the messageIds another process's shard already holds."""
    first = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, shard=0, dedup_window_s=3600)
    await first.open()
    await first.append(events(2))
    second = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, shard=1, dedup_window_s=3600)
    await second.open()
    try:
        assert await second.append(events(3)) == 2
        assert [e.message_id for e in (await second.read(0, 10, None)).events] == ["m2"]
    finally:
        await second.close()
        await first.close()


async def test_dedup_window_expires_and_is_compacted(tmp_path: Path) -> None:
    """Past the window a messageId is accepted again; compaction forgets old ones."""
    event_log = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, dedup_window_s=0.2)
    await event_log.open()
    try:
        await event_log.append(events(2))
        await asyncio.sleep(0.3)
        assert await event_log.append(events(1)) == 0  # m0 is outside the window
        await event_log.set_cursor("files", 0)
        await event_log.compact(["files"])
        reader = sqlite3.connect(event_log.path)
        try:
            remaining = [r[0] for r in reader.execute("SELECT message_id FROM seen")]
        finally:
            reader.close()
        assert remaining == ["m0"]  # the new copy of m0 only; the old m0 and m1 are gone
    finally:
        await event_log.close()
