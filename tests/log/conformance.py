"""The storage conformance suite: what every :class:`~gateway.log.EventLog` backend must do.

Subclass the contract in a backend's test module and provide two things::

    class TestMyEventLogContract(EventLogContract):
        @pytest.fixture(name="open_log")
        async def _open_log(self, tmp_path: Path) -> AsyncIterator[OpenLog]:
            logs = []

            async def open_log() -> MyEventLog:
                event_log = MyEventLog(tmp_path, dedup_window_s=3600)
                await event_log.open()
                logs.append(event_log)
                return event_log

            yield open_log
            ...  # close the logs still open

        async def count_dead_letters(self, event_log: EventLog, destination: str) -> int:
            return await event_log.count_dead_letters(destination)

Each call of ``open_log()`` opens a new log object on the **same** storage (so closing one and
calling it again is a restart), empty at the start of each test, with messageId deduplication
enabled (a window of at least a minute). The fixture closes what is still open at teardown; a
test may close a log itself first.

The test methods use the ``EventLog`` protocol only. Sequence numbers are compared by order,
never by value: a backend may leave gaps (JetStream's stream sequence is shared by partitions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from gateway.destination import Event
from gateway.errors import StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log import DeadLetter, EventLog, PendingRetry

__all__ = ["EventLogContract", "OpenLog", "events"]

OpenLog = Callable[[], Awaitable[EventLog]]


def events(n: int, source: str = "web", start: int = 0) -> list[NormalizedEvent]:
    """``n`` events from ``source`` with messageIds ``m<start>``, ``m<start + 1>``, ..."""
    return [
        NormalizedEvent(
            source=source,
            message_id=f"m{start + i}",
            received_at=time.time(),
            body=b'{"messageId":"m%d","userId":"u%d"}' % (start + i, (start + i) % 2),
        )
        for i in range(n)
    ]


def retry(
    event: Event,
    due: float,
    *,
    destination: str = "hook",
    attempts: int = 1,
    user: str | None = None,
) -> PendingRetry:
    """A pending retry of ``event`` for ``destination``, due at ``due``."""
    return PendingRetry(
        destination=destination,
        event=event,
        attempts=attempts,
        first_attempt_at=due - 10,
        next_attempt_at=due,
        reason="HTTP 503",
        request="POST /",
        response="503 busy",
        user_key=user,
    )


def seqs(items: Sequence[Event] | Sequence[PendingRetry]) -> list[int]:
    """The sequence numbers of events, or of the events of pending retries."""
    return [item.seq if isinstance(item, Event) else item.event.seq for item in items]


class EventLogContract:
    """Conformance tests every storage backend passes; subclass it as ``Test<Name>Contract``.

    A subclass provides the ``open_log`` fixture and ``count_dead_letters`` (see the module
    docstring). Test methods inherit as-is; override one only to add a stricter variant.
    """

    async def count_dead_letters(self, event_log: EventLog, destination: str) -> int:
        """How many dead letters ``event_log`` keeps for ``destination`` (subclasses say how)."""
        raise NotImplementedError(f"{type(self).__name__} must implement count_dead_letters()")

    @staticmethod
    async def stored(
        event_log: EventLog, n: int, source: str = "web", start: int = 0
    ) -> list[Event]:
        """Append ``n`` events and return them as read back, in order."""
        last = event_log.last_seq()
        await event_log.append(events(n, source, start))
        return (await event_log.read(last, n, None)).events

    async def test_append_then_read_in_order(self, open_log: OpenLog) -> None:
        """Appended events read back in order, with increasing seqs, source, id, body and time."""
        event_log = await open_log()
        assert event_log.last_seq() == 0
        assert await event_log.append(events(3)) == 0
        result = await event_log.read(0, 10, None)
        assert [e.message_id for e in result.events] == ["m0", "m1", "m2"]
        numbers = seqs(result.events)
        assert numbers == sorted(set(numbers))
        assert numbers[0] > 0
        assert {e.source for e in result.events} == {"web"}
        assert result.events[0].message == {"messageId": "m0", "userId": "u0"}
        assert result.events[0].received_at is not None
        assert result.scanned_to == numbers[-1]
        assert result.newest == numbers[-1]
        assert result.skipped == 0
        assert event_log.last_seq() == numbers[-1]
        assert await event_log.refresh() == numbers[-1]

    async def test_read_resumes_after_a_seq_within_the_limit(self, open_log: OpenLog) -> None:
        """read(after, limit) returns only events after ``after``, at most ``limit`` of them."""
        event_log = await open_log()
        stored = await self.stored(event_log, 5)
        result = await event_log.read(stored[1].seq, 2, None)
        assert [e.message_id for e in result.events] == ["m2", "m3"]
        assert result.scanned_to == stored[3].seq
        assert result.newest == stored[4].seq
        empty = await event_log.read(stored[4].seq, 10, None)
        assert (empty.events, empty.scanned_to) == ([], stored[4].seq)

    async def test_concurrent_appends_lose_nothing(self, open_log: OpenLog) -> None:
        """Many concurrent appends all land, each event exactly once."""
        event_log = await open_log()
        await asyncio.gather(*(event_log.append(events(2, start=i * 2)) for i in range(50)))
        result = await event_log.read(0, 1000, None)
        assert sorted(e.message_id for e in result.events) == sorted(f"m{i}" for i in range(100))

    async def test_read_filters_sources_and_reports_scan(self, open_log: OpenLog) -> None:
        """A source filter leaves other sources' events out, counted as skipped, and reports how
        far it scanned."""
        event_log = await open_log()
        await event_log.append(events(2, "web") + events(3, "ios", start=2))
        everything = (await event_log.read(0, 100, None)).events
        result = await event_log.read(0, 100, {"web"})
        assert [e.message_id for e in result.events] == ["m0", "m1"]
        assert (result.scanned_to, result.skipped) == (everything[-1].seq, 3)
        limited = await event_log.read(0, 1, {"ios"})
        assert (limited.events, limited.scanned_to, limited.skipped) == ([], everything[0].seq, 1)

    async def test_restart_keeps_events_and_cursors(self, open_log: OpenLog) -> None:
        """After close and reopen, events, last_seq and cursors are as they were."""
        first = await open_log()
        stored = await self.stored(first, 5)
        assert await first.get_cursor("files") is None
        await first.set_cursor("files", stored[2].seq)
        await first.set_cursor("files", stored[3].seq)  # the newest save wins
        await first.close()
        second = await open_log()
        assert second.last_seq() == stored[-1].seq
        assert await second.get_cursor("files") == stored[3].seq
        assert await second.get_cursor("other") is None
        result = await second.read(stored[2].seq, 10, None)
        assert [e.message_id for e in result.events] == ["m3", "m4"]

    async def test_due_retries_oldest_due_first_within_limit(self, open_log: OpenLog) -> None:
        """due_retries returns only what is due, oldest due first, at most ``limit``, with the
        event and the retry's details."""
        event_log = await open_log()
        a, b, c, d = await self.stored(event_log, 4)
        now = time.time()
        await event_log.schedule_retries(
            [retry(a, now - 1), retry(b, now - 3), retry(c, now - 2), retry(d, now + 60)]
        )
        assert seqs(await event_log.due_retries("hook", now, 10)) == [b.seq, c.seq, a.seq]
        [first] = await event_log.due_retries("hook", now, 1)
        assert first.event.seq == b.seq
        assert (first.event.message_id, first.event.source, first.event.raw) == (
            b.message_id,
            b.source,
            b.raw,
        )
        assert (first.attempts, first.reason, first.request, first.response) == (
            1,
            "HTTP 503",
            "POST /",
            "503 busy",
        )
        assert first.next_attempt_at == pytest.approx(now - 3)
        assert first.first_attempt_at == pytest.approx(now - 13)
        assert await event_log.due_retries("other", now, 10) == []

    async def test_next_retry_at_and_rescheduling(self, open_log: OpenLog) -> None:
        """next_retry_at is the earliest due time; scheduling an event again replaces its retry."""
        event_log = await open_log()
        assert await event_log.next_retry_at("hook") is None
        a, b = await self.stored(event_log, 2)
        now = time.time()
        await event_log.schedule_retries([retry(a, now + 30), retry(b, now + 20)])
        assert await event_log.next_retry_at("hook") == pytest.approx(now + 20)
        await event_log.schedule_retries([retry(b, now + 40, attempts=2)])
        assert await event_log.next_retry_at("hook") == pytest.approx(now + 30)
        due = await event_log.due_retries("hook", now + 100, 10)
        assert seqs(due) == [a.seq, b.seq]
        assert [r.attempts for r in due] == [1, 2]
        assert await event_log.next_retry_at("other") is None

    async def test_retries_done_forgets_them(self, open_log: OpenLog) -> None:
        """retries_done drops the destination's retries of those events and no others."""
        event_log = await open_log()
        a, b = await self.stored(event_log, 2)
        now = time.time()
        await event_log.schedule_retries(
            [retry(a, now - 1), retry(b, now - 1), retry(a, now - 1, destination="other")]
        )
        await event_log.retries_done("hook", [a.seq])
        assert seqs(await event_log.due_retries("hook", now, 10)) == [b.seq]
        assert seqs(await event_log.due_retries("other", now, 10)) == [a.seq]
        await event_log.retries_done("hook", [b.seq])
        assert await event_log.next_retry_at("hook") is None

    async def test_first_pending_of_each_user(self, open_log: OpenLog) -> None:
        """first_pending_of gives, per user, the seq and due time of their earliest pending
        retry, and leaves out users without one."""
        event_log = await open_log()
        a, b, c = await self.stored(event_log, 3)
        now = time.time()
        await event_log.schedule_retries(
            [
                retry(c, now + 5, user="u0"),
                retry(a, now + 1, user="u0"),
                retry(b, now + 2, user="u1"),
                retry(b, now + 3, destination="other", user="u9"),
            ]
        )
        pending = await event_log.first_pending_of("hook", ["u0", "u1", "u2", "u9"])
        assert set(pending) == {"u0", "u1"}
        assert pending["u0"][0] == a.seq
        assert pending["u0"][1] == pytest.approx(now + 1)
        assert pending["u1"][0] == b.seq
        assert await event_log.first_pending_of("hook", []) == {}

    async def test_dead_letters_are_kept_and_drop_the_retry(self, open_log: OpenLog) -> None:
        """A dead letter is kept for its destination and its pending retry is gone."""
        event_log = await open_log()
        a, b = await self.stored(event_log, 2)
        now = time.time()
        await event_log.schedule_retries([retry(a, now - 1), retry(b, now - 1)])
        letter = DeadLetter("hook", a, "HTTP 400", 3, now - 10, now, "POST /", "400 bad")
        await event_log.dead_letter([letter])
        assert await self.count_dead_letters(event_log, "hook") == 1
        assert await self.count_dead_letters(event_log, "files") == 0
        assert seqs(await event_log.due_retries("hook", now, 10)) == [b.seq]

    async def test_wait_beyond_wakes_on_append(self, open_log: OpenLog) -> None:
        """A reader waiting for new events is woken by the append, not by its timeout."""
        event_log = await open_log()
        waiter = asyncio.create_task(event_log.wait_beyond(0, timeout_s=30))
        await asyncio.sleep(0)
        await event_log.append(events(1))
        await asyncio.wait_for(waiter, timeout=5)
        assert event_log.last_seq() > 0

    async def test_wait_beyond_sees_another_writer(self, open_log: OpenLog) -> None:
        """A log object learns of appends made through another one on the same storage."""
        reader, writer = await open_log(), await open_log()
        waiter = asyncio.create_task(reader.wait_beyond(0, timeout_s=30))
        await asyncio.sleep(0.05)
        await writer.append(events(1))
        await asyncio.wait_for(waiter, timeout=5)
        assert reader.last_seq() == writer.last_seq() > 0

    async def test_wait_beyond_times_out(self, open_log: OpenLog) -> None:
        """With nothing newer than what a read scanned, wait_beyond returns after its timeout."""
        event_log = await open_log()
        await event_log.append(events(1))
        caught_up = (await event_log.read(0, 10, None)).scanned_to
        started = time.monotonic()
        await event_log.wait_beyond(caught_up, timeout_s=0.2)
        assert 0.15 <= time.monotonic() - started < 2

    async def test_append_after_close_is_refused(self, open_log: OpenLog) -> None:
        """Once closed, the log refuses writes (StorageUnavailableError) instead of losing them."""
        event_log = await open_log()
        await event_log.close()
        with pytest.raises(StorageUnavailableError):
            await event_log.append(events(1))

    async def test_duplicates_are_counted_not_stored(self, open_log: OpenLog) -> None:
        """A messageId already stored, or repeated in one append, is counted as a duplicate and
        stored once."""
        event_log = await open_log()
        assert await event_log.append(events(3)) == 0
        assert await event_log.append(events(2, start=2)) == 1  # m2 again, m3 new
        assert await event_log.append(events(1, start=9) + events(1, start=9)) == 1
        stored = [e.message_id for e in (await event_log.read(0, 100, None)).events]
        assert stored == ["m0", "m1", "m2", "m3", "m9"]

    async def test_compaction_stops_at_the_slowest_cursor(self, open_log: OpenLog) -> None:
        """Only events every active destination has passed are deleted; a destination without a
        cursor holds back everything."""
        event_log = await open_log()
        stored = await self.stored(event_log, 10)
        await event_log.set_cursor("fast", stored[8].seq)
        await event_log.set_cursor("slow", stored[3].seq)
        assert await event_log.compact(["fast", "slow", "new"]) == 0
        assert seqs((await event_log.read(0, 100, None)).events) == seqs(stored)
        assert await event_log.compact(["fast", "slow"]) == 4
        assert seqs((await event_log.read(0, 100, None)).events) == seqs(stored[4:])
        assert await event_log.compact(["fast", "slow"]) == 0

    async def test_sequence_numbers_never_reused_after_compaction(self, open_log: OpenLog) -> None:
        """Compacting every event away does not let new events reuse old sequence numbers."""
        first = await open_log()
        stored = await self.stored(first, 4)
        await first.set_cursor("files", stored[-1].seq)
        assert await first.compact(["files"]) == 4
        await first.close()
        second = await open_log()
        assert second.last_seq() >= stored[-1].seq
        assert (await second.read(0, 10, None)).events == []
        await second.append(events(1, start=9))
        [new] = (await second.read(0, 10, None)).events
        assert new.seq > stored[-1].seq
