"""Tests for gateway/log/sqlite.py: the embedded group-commit log."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.errors import StorageFullError, StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log import DeadLetter, SqliteEventLog

MiB = 1024 * 1024
OpenLog = Callable[..., Awaitable[SqliteEventLog]]


def events(n: int, source: str = "web", start: int = 0) -> list[NormalizedEvent]:
    return [
        NormalizedEvent(
            source=source,
            message_id=f"m{start + i}",
            received_at=time.time(),
            body=b'{"messageId":"m%d"}' % (start + i),
        )
        for i in range(n)
    ]


@pytest.fixture(name="open_log")
async def _open_log(tmp_path: Path) -> AsyncIterator[OpenLog]:
    logs: list[SqliteEventLog] = []

    async def open_log(quota: int = 1024 * MiB) -> SqliteEventLog:
        event_log = SqliteEventLog(tmp_path, disk_quota_bytes=quota)
        await event_log.open()
        logs.append(event_log)
        return event_log

    yield open_log
    for event_log in logs:
        if not event_log._closing:
            await event_log.close()


async def test_append_then_read_in_order(open_log: OpenLog) -> None:
    """Appended events read back in order with their source, id and body."""
    event_log = await open_log()
    await event_log.append(events(3))
    result = await event_log.read(0, 10, None)
    assert [e.message_id for e in result.events] == ["m0", "m1", "m2"]
    assert [e.seq for e in result.events] == [1, 2, 3]
    assert result.events[0].message == {"messageId": "m0"}
    assert result.events[0].received_at is not None
    assert result.scanned_to == 3
    assert event_log.last_seq() == 3


async def test_concurrent_appends_share_commits(open_log: OpenLog) -> None:
    """Concurrent appends are group-committed: far fewer commits than callers, none lost."""
    event_log = await open_log()
    await asyncio.gather(*(event_log.append(events(2, start=i * 2)) for i in range(200)))
    result = await event_log.read(0, 1000, None)
    assert len(result.events) == 400
    assert len({e.message_id for e in result.events}) == 400
    assert event_log.commits < 100


async def test_restart_keeps_events_and_cursors(open_log: OpenLog) -> None:
    """After close and reopen, events, last_seq and cursors are as they were."""
    first = await open_log()
    await first.append(events(5))
    await first.set_cursor("files", 3)
    await first.close()
    second = await open_log()
    assert second.last_seq() == 5
    assert await second.get_cursor("files") == 3
    assert await second.get_cursor("other") is None
    result = await second.read(3, 10, None)
    assert [e.message_id for e in result.events] == ["m3", "m4"]


async def test_sequence_numbers_never_reused_after_compaction(
    open_log: OpenLog,
) -> None:
    """Compacting every event away does not let new events reuse old sequence numbers."""
    first = await open_log()
    await first.append(events(4))
    await first.set_cursor("files", 4)
    assert await first.compact(["files"]) == 4
    await first.close()
    second = await open_log()
    assert second.last_seq() == 4
    await second.append(events(1, start=9))
    result = await second.read(4, 10, None)
    assert [e.seq for e in result.events] == [5]


async def test_compaction_stops_at_the_slowest_cursor(open_log: OpenLog) -> None:
    """Only events every active destination has passed are deleted."""
    event_log = await open_log()
    await event_log.append(events(10))
    await event_log.set_cursor("fast", 9)
    await event_log.set_cursor("slow", 4)
    assert await event_log.compact(["fast", "slow", "new"]) == 0  # "new" has no cursor yet
    assert await event_log.compact(["fast", "slow"]) == 4
    assert [e.seq for e in (await event_log.read(0, 100, None)).events] == list(range(5, 11))


async def test_read_filters_sources_and_reports_scan(open_log: OpenLog) -> None:
    """A source filter skips other sources' events but reports how far it scanned."""
    event_log = await open_log()
    await event_log.append(events(2, "web") + events(3, "ios", start=2))
    result = await event_log.read(0, 100, {"web"})
    assert [e.message_id for e in result.events] == ["m0", "m1"]
    assert result.scanned_to == 5
    limited = await event_log.read(0, 1, {"ios"})
    assert (limited.events, limited.scanned_to) == ([], 1)


async def test_quota_refuses_appends_but_not_progress(open_log: OpenLog) -> None:
    """Past the disk quota appends raise StorageFullError; cursors still save."""
    event_log = await open_log(quota=1)
    with pytest.raises(StorageFullError):
        await event_log.append(events(1))
    assert event_log.last_seq() == 0
    await event_log.set_cursor("files", 0)
    assert await event_log.get_cursor("files") == 0


async def test_dead_letters_are_kept(open_log: OpenLog) -> None:
    """Dead letters are stored with their reason and counted per destination."""
    event_log = await open_log()
    await event_log.append(events(1))
    [event] = (await event_log.read(0, 1, None)).events
    letter = DeadLetter("hook", event, "HTTP 400", 1, 1.0, 2.0, "POST /", "400 bad")
    await event_log.dead_letter([letter])
    assert await event_log.count_dead_letters("hook") == 1
    assert await event_log.count_dead_letters("files") == 0


async def test_wait_beyond_wakes_on_append(open_log: OpenLog) -> None:
    """A reader waiting for new events is woken by the commit, not by its timeout."""
    event_log = await open_log()
    waiter = asyncio.create_task(event_log.wait_beyond(0, timeout_s=30))
    await asyncio.sleep(0)
    await event_log.append(events(1))
    await asyncio.wait_for(waiter, timeout=10)
    assert event_log.last_seq() == 1


async def test_append_after_close_is_refused(open_log: OpenLog) -> None:
    """Once closing, the log refuses writes instead of losing them."""
    event_log = await open_log()
    await event_log.close()
    with pytest.raises(StorageUnavailableError):
        await event_log.append(events(1))


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


async def test_dedup_drops_repeated_message_ids(tmp_path: Path) -> None:
    """With a dedup window, a messageId already stored, or repeated in one commit, is counted
    as a duplicate and not stored again."""
    event_log = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, dedup_window_s=3600)
    await event_log.open()
    try:
        assert await event_log.append(events(3)) == 0
        assert await event_log.append(events(2, start=2)) == 1  # m2 again, m3 new
        assert await event_log.append(events(1, start=9) + events(1, start=9)) == 1
        stored = [e.message_id for e in (await event_log.read(0, 100, None)).events]
        assert stored == ["m0", "m1", "m2", "m3", "m9"]
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
