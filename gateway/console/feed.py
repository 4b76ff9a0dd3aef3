"""The debugger's window on the event log: the newest events of a source, then each new one.

This is the one place the console reads events. Any ingress process may serve a console
request, and each writes its own log shard, so the feed opens every shard of the data directory
through the :class:`~gateway.log.base.EventLog` protocol (``refresh``, ``last_seq``, ``read``)
and keeps a position per shard. Another storage backend only has to change :meth:`_logs`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.config import JetStreamConfig
from gateway.destination import Event
from gateway.log.base import EventLog
from gateway.log.jetstream import JetStreamStorage
from gateway.log.sqlite import SqliteEventLog, shards_in

__all__ = ["MAX_EVENTS", "EventFeed", "FeedEvent", "Position"]

MAX_EVENTS = 500
"""The debugger shows at most this many events (Segment's Debugger shows 500 too)."""
_LOOK_BACK = 4 * MAX_EVENTS
_RESCAN_EVERY_S = 2.0

Position = dict[int, int]
"""Per log shard, the sequence number the reader has seen up to."""


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event as the debugger shows it."""

    shard: int
    seq: int
    source: str
    message_id: str
    received_at: float | None
    message: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The event for the API: identity, the fields a list shows, and the whole message."""
        message = self.message
        kind = message.get("type")
        name = message.get("event") if kind == "track" else message.get("name")
        return {
            "id": f"{self.shard}:{self.seq}",
            "source": self.source,
            "messageId": self.message_id,
            "receivedAt": message.get("receivedAt"),
            "type": kind,
            "event": name,
            "userId": message.get("userId"),
            "anonymousId": message.get("anonymousId"),
            "message": message,
        }


def _feed_event(shard: int, event: Event) -> FeedEvent:
    try:
        message = orjson.loads(event.raw)
    except orjson.JSONDecodeError:
        message = {"undecodable": event.raw[:1000].decode("utf-8", "replace")}
    return FeedEvent(shard, event.seq, event.source, event.message_id, event.received_at, message)


def encode_position(position: Position) -> str:
    """``position`` as ``<shard>:<seq>,...`` (an SSE event id, sent back as Last-Event-ID)."""
    return ",".join(f"{shard}:{seq}" for shard, seq in sorted(position.items()))


def decode_position(text: str) -> Position | None:
    """The position ``text`` names, or ``None`` if it is not one."""
    position: Position = {}
    for part in filter(None, text.split(",")):
        shard, _, seq = part.partition(":")
        if not (shard.isdigit() and seq.isdigit()):
            return None
        position[int(shard)] = int(seq)
    return position


class EventFeed:
    """Reads the newest events of a source across every log shard (opened on first use)."""

    def __init__(self, data_dir: Path, jetstream: JetStreamConfig | None = None) -> None:
        self.data_dir = data_dir
        self.jetstream = jetstream
        self._open: dict[int, EventLog] = {}
        self._scanned_at = 0.0
        self._lock = asyncio.Lock()

    async def _logs(self) -> dict[int, EventLog]:
        """Every log shard (or JetStream partition), opened for reading; new shards are
        noticed within a few seconds.

        Raises:
            StorageUnavailableError: JetStream cannot be reached.
        """
        async with self._lock:
            now = time.monotonic()
            if self.jetstream is not None:
                if not self._open:  # JetStream's partitions: a fixed number, all in one stream
                    storage = JetStreamStorage(self.jetstream)
                    for partition in storage.partitions():
                        await partition.open()
                        self._open[partition.partition] = partition
            elif now - self._scanned_at >= _RESCAN_EVERY_S:
                self._scanned_at = now
                for shard in shards_in(self.data_dir):
                    if shard not in self._open:
                        # Opened here only to read; the quota matters to appends alone.
                        event_log = SqliteEventLog(self.data_dir, disk_quota_bytes=1, shard=shard)
                        await event_log.open()
                        self._open[shard] = event_log
            return dict(self._open)

    async def newest(
        self, source: str, limit: int = MAX_EVENTS
    ) -> tuple[list[FeedEvent], Position]:
        """The source's newest events (at most ``limit``, newest last) and where they end.

        Looks back a few times ``limit`` events per shard: a source that sent nothing lately
        while others were busy shows fewer.
        """
        found: list[FeedEvent] = []
        position: Position = {}
        for shard, event_log in (await self._logs()).items():
            last = await event_log.refresh()
            position[shard] = last
            result = await event_log.read(max(last - _LOOK_BACK, 0), _LOOK_BACK, [source])
            found.extend(_feed_event(shard, e) for e in result.events[-limit:])
        found.sort(key=lambda e: (e.received_at or 0.0, e.shard, e.seq))
        return found[-limit:], position

    async def after(
        self, position: Position, source: str, limit: int = MAX_EVENTS
    ) -> tuple[list[FeedEvent], Position]:
        """The source's events after ``position`` (at most ``limit``, newest last), and the new
        position. A reader that fell far behind skips ahead: the debugger shows the newest."""
        found: list[FeedEvent] = []
        moved = dict(position)
        for shard, event_log in (await self._logs()).items():
            last = await event_log.refresh()
            after = position.get(shard, 0)
            if last <= after:
                moved[shard] = last  # below ``after`` only when the shard was started anew
                continue
            after = max(after, last - _LOOK_BACK)
            result = await event_log.read(after, _LOOK_BACK, [source])
            moved[shard] = result.scanned_to
            found.extend(_feed_event(shard, e) for e in result.events[-limit:])
        found.sort(key=lambda e: (e.received_at or 0.0, e.shard, e.seq))
        return found[-limit:], moved

    async def close(self) -> None:
        """Close every shard this feed opened."""
        async with self._lock:
            for event_log in self._open.values():
                await event_log.close()
            self._open.clear()
