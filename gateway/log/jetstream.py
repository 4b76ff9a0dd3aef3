"""The distributed log (prototype, not wired into config yet): NATS JetStream through nats-py.

The same partitioned model as the SQLite shards, so the router needs no change: partition ``n``
of the log is the subject ``<prefix>.events.<n>`` of one stream, ``<PREFIX>_EVENTS`` (file
storage, ``replicas`` copies, ``discard: new`` so a full stream refuses appends instead of
dropping old events). One ``JetStreamEventLog`` object serves one partition, as one
``SqliteEventLog`` serves one shard.

- **Append**: every event is published to the partition's subject with ``Nats-Msg-Id:
  <messageId>`` (JetStream's duplicate window is the dedup window: an ack marked ``duplicate``
  counts as a duplicate) and ``Eventgate-Source`` / ``Eventgate-Received-At`` headers; the body
  is the event's body. A batch is published concurrently and ``append`` returns only once every
  ack is in: acked by JetStream means durable. A refusal (the stream's ``max_bytes`` reached)
  raises ``StorageFullError``, anything else (NATS unreachable, no ack in time)
  ``StorageUnavailableError``, so ingress answers 503. A batch is not atomic: when one publish
  fails, others of the batch may be stored; the client's retry of the request is then deduplicated
  by messageId.
- **Sequence numbers** are the stream's sequence: increasing, never reused, but shared by all
  partitions, so a partition sees gaps. ``read`` is one batched direct get (``next_by_subj``,
  ``batch``): one round trip per read, no consumer to create or clean up, served by any replica.
- **Cursors**: the KV bucket ``<PREFIX>_CURSORS``, key ``<destination>.<partition>``.
- **Retries**: the KV bucket ``<PREFIX>_RETRIES``, key ``<destination>.<seq>``, a JSON record
  carrying the event itself (body included), as the protocol asks, so compaction never waits
  for a retry. ``due_retries``, ``next_retry_at`` and ``first_pending_of`` fetch every retry
  of the destination (one batched direct get of the last value per key) and sort in memory:
  fine for a prototype; a retry stream (or a consumer with ``nak`` delays) would scale better.
- **Dead letters**: the stream ``<PREFIX>_DEAD``, subject ``<prefix>.dead.<destination>``,
  one JSON record per event with the reason, the last request/response and the event.
- **Compaction** purges the partition's subject below the lowest cursor of the active
  destinations, never anything newer.
- **wait_beyond** wakes at once for this object's own appends and polls the subject's last
  sequence for other processes' appends.

Not done yet: config and app wiring; per-destination durable consumers shared by several nodes
(a cursor in KV assumes one active reader per destination and partition, as with SQLite);
fencing that reader. Reads need nats-server 2.11 or newer (batched direct get). With
``replicas > 1`` a direct get may be answered by a replica a moment behind the leader, so a
read can miss the newest events until the next one. Loading all of a destination's retries per
call holds them in memory, against the bounded-memory contract once thousands are pending.
Deleted retries leave KV tombstones until the bucket is purged of them.

Where the cursor protocol fits several nodes badly (the design question of the next step):

1. ``read(after)`` + ``set_cursor`` is a high-water mark with a single reader. Nodes sharing a
   destination need either partition leases (KV with a TTL and revision checks as fencing: the
   router stays as it is, and per-user order comes free) or a consumer-style protocol
   (``fetch`` -> work items, then ``ack`` / ``nak(delay)``) on durable pull consumers.
2. Retries looked up by due time (``due_retries``, ``next_retry_at``, ``first_pending_of``) have
   no index in JetStream, and two nodes could take the same due retry; ``nak`` with a delay and
   the consumer's delivery count fit better. Per-user order then needs one active consumer per
   partition.
3. Queue depth as ``newest - cursor`` overcounts with gaps across partitions; a consumer's
   ``num_pending`` is the honest figure.
4. "Nothing was stored" on a failed append does not hold for a concurrent publish batch (dedup
   makes the client's retry safe); NATS 2.12's atomic batch publish may fix it.
5. Dead-letter listing, replay and purge, and the storage use behind the 503 and the metrics,
   are outside the protocol (``dlq.py`` and ``app.py`` read SQLite directly) and must enter it
   before wiring.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Collection, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, StorageType
from nats.js.kv import KeyValue

from gateway.destination import Event
from gateway.errors import StorageFullError, StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log.base import DeadLetter, PendingRetry, ReadResult

__all__ = ["JetStreamEventLog"]

log = structlog.get_logger("eventgate.log")

_SOURCE = "Eventgate-Source"
_RECEIVED_AT = "Eventgate-Received-At"
_MSG_ID = "Nats-Msg-Id"
# How often a reader waiting for new events asks for the partition's last sequence.
_POLL_S = 0.02
# The most messages one batched direct get of the retries asks for.
_RETRY_PAGE = 1_000
# JetStream's error codes for a stream at its limits.
_FULL_CODES = frozenset({10047, 10077, 10078})  # storage exceeded, max bytes, max messages


class JetStreamEventLog:
    """A :class:`~gateway.log.EventLog` on NATS JetStream: one partition of the events stream."""

    def __init__(
        self,
        servers: list[str],
        *,
        partition: int = 0,
        replicas: int = 1,
        duplicate_window_s: float = 86400,
        max_bytes: int | None = None,
        stream_prefix: str = "EVENTGATE",
        timeout_s: float = 5.0,
    ) -> None:
        self.servers = servers
        self.partition = partition
        self.replicas = replicas
        self.duplicate_window_s = duplicate_window_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.events_stream = f"{stream_prefix}_EVENTS"
        self.dead_stream = f"{stream_prefix}_DEAD"
        self.cursors_bucket = f"{stream_prefix}_CURSORS"
        self.retries_bucket = f"{stream_prefix}_RETRIES"
        self._subjects = stream_prefix.lower()
        self.subject = f"{self._subjects}.events.{partition}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._cursors: KeyValue | None = None
        self._retries: KeyValue | None = None
        self._closing = False
        self._last_seq = 0
        self._new_data = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create (or update) the streams and buckets, and learn the last sequence.

        Raises:
            StorageUnavailableError: NATS cannot be reached or JetStream is not enabled.
        """
        try:
            self._nc = await nats.connect(
                self.servers,
                connect_timeout=self.timeout_s,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                error_cb=_on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=_on_reconnected,
            )
            # Fail fast when NATS is unreachable at startup, but once connected, reconnect
            # forever (nats-py's initial connect would otherwise also retry forever).
            self._nc.options["max_reconnect_attempts"] = -1
            self._js = self._nc.jetstream(timeout=self.timeout_s)
            await self._ensure_stream(
                name=self.events_stream,
                subjects=[f"{self._subjects}.events.*"],
                duplicate_window=self.duplicate_window_s,
                max_bytes=-1 if self.max_bytes is None else self.max_bytes,
                discard=DiscardPolicy.NEW,
                allow_direct=True,
            )
            await self._ensure_stream(
                name=self.dead_stream, subjects=[f"{self._subjects}.dead.>"], allow_direct=True
            )
            self._cursors = await self._bucket(self.cursors_bucket)
            self._retries = await self._bucket(self.retries_bucket)
            info = await self._js.stream_info(self.events_stream)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await self._disconnect()
            raise StorageUnavailableError(f"JetStream cannot be reached: {exc}") from exc
        # An empty partition has nothing newer than the stream's last sequence.
        self._last_seq = max(await self._subject_last_seq(), info.state.last_seq)
        log.info(
            "log.opened", stream=self.events_stream, subject=self.subject, last_seq=self._last_seq
        )

    async def close(self) -> None:
        """Refuse further writes and close the connection (after its pending writes)."""
        self._closing = True
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        if self._nc.is_connected:
            await self._nc.drain()
        else:
            await self._nc.close()  # nothing can be flushed to a server that is gone

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("log.nats_disconnected", servers=self.servers)

    async def _ensure_stream(self, **config: Any) -> None:
        js = self._require_js()
        options = {"storage": StorageType.FILE, "num_replicas": self.replicas, **config}
        try:
            await js.add_stream(**options)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # "stream name already in use with a different config"
                raise
            await js.update_stream(**options)

    async def _bucket(self, name: str) -> KeyValue:
        js = self._require_js()
        return await js.create_key_value(
            bucket=name, history=1, storage=StorageType.FILE, replicas=self.replicas, direct=True
        )

    def _require_js(self) -> JetStreamContext:
        if self._closing or self._js is None or self._nc is None or not self._nc.is_connected:
            raise StorageUnavailableError("JetStream is not connected")
        return self._js

    # -- writes ------------------------------------------------------------------------------

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Publish ``events`` to the partition and wait for every ack; return the duplicates.

        Raises:
            StorageFullError: the stream is at its ``max_bytes``.
            StorageUnavailableError: JetStream cannot be reached or did not ack in time.
        """
        if not events:
            return 0
        js = self._require_js()
        acks = await asyncio.gather(
            *(
                js.publish(
                    self.subject,
                    event.body,
                    timeout=self.timeout_s,
                    headers={
                        _MSG_ID: event.message_id,
                        _SOURCE: event.source,
                        _RECEIVED_AT: repr(event.received_at),
                    },
                )
                for event in events
            ),
            return_exceptions=True,
        )
        failures = [ack for ack in acks if isinstance(ack, BaseException)]
        if failures:
            stored = len(acks) - len(failures)
            log.error(
                "log.append_failed", error=str(failures[0]), stored=stored, failed=len(failures)
            )
            raise _storage_error(failures[0]) from failures[0]
        duplicates = 0
        newest = self._last_seq
        for ack in acks:
            assert isinstance(ack, PubAck)
            if ack.duplicate:
                duplicates += 1
            else:
                newest = max(newest, ack.seq)
        if newest > self._last_seq:
            self._last_seq = newest
            event, self._new_data = self._new_data, asyncio.Event()
            event.set()
        return duplicates

    async def set_cursor(self, destination: str, seq: int) -> None:
        """Durably save how far ``destination`` has got in this partition."""
        assert self._cursors is not None
        self._require_js()
        await self._call(self._cursors.put(self._cursor_key(destination), str(seq).encode()))

    async def schedule_retries(self, retries: Sequence[PendingRetry]) -> None:
        """Durably record (or replace) each event's retry record, keyed by destination and seq."""
        assert self._retries is not None
        self._require_js()
        kv = self._retries
        await self._gather(
            kv.put(f"{r.destination}.{r.event.seq}", _encode_retry(r)) for r in retries
        )

    async def retries_done(self, destination: str, seqs: Sequence[int]) -> None:
        """Forget the destination's retries of these events."""
        assert self._retries is not None
        self._require_js()
        kv = self._retries
        await self._gather(kv.delete(f"{destination}.{seq}") for seq in seqs)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Publish each dead letter to the dead-letter stream, then drop its pending retry."""
        js = self._require_js()
        await self._gather(
            js.publish(
                f"{self._subjects}.dead.{letter.destination}",
                _encode_dead_letter(letter),
                timeout=self.timeout_s,
            )
            for letter in letters
        )
        assert self._retries is not None
        kv = self._retries
        await self._gather(kv.delete(f"{d.destination}.{d.event.seq}") for d in letters)

    async def compact(self, active_destinations: Collection[str]) -> int:
        """Purge the partition's events every active destination's cursor has passed.

        Returns how many were purged; a destination without a cursor holds back everything.
        """
        names = list(active_destinations)
        if names:
            cursors = await asyncio.gather(*(self.get_cursor(name) for name in names))
            if any(cursor is None for cursor in cursors):
                return 0
            bound = min(cursor for cursor in cursors if cursor is not None)
        else:
            bound = await self.refresh()
        if bound <= 0:
            return 0
        nc = self._require_nc()
        request = {"filter": self.subject, "seq": bound + 1}  # purges seq < bound + 1 only
        reply = await self._call(
            nc.request(
                f"$JS.API.STREAM.PURGE.{self.events_stream}",
                orjson.dumps(request),
                timeout=self.timeout_s,
            )
        )
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise StorageUnavailableError(f"JetStream refused the purge: {answer['error']}")
        return int(answer.get("purged", 0))

    # -- reads -------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The newest durable sequence number this object knows of in its partition."""
        return self._last_seq

    async def refresh(self) -> int:
        """Ask JetStream for the partition's newest sequence number; return it."""
        self._last_seq = max(self._last_seq, await self._subject_last_seq())
        return self._last_seq

    async def wait_beyond(self, seq: int, timeout_s: float) -> None:
        """Return once an event newer than ``seq`` is in the partition, or after ``timeout_s``.

        This object's appends wake the caller at once; other processes' within ``_POLL_S``.
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

    async def read(self, after: int, limit: int, sources: Collection[str] | None) -> ReadResult:
        """Up to ``limit`` events of the partition after ``after``, from ``sources``."""
        wanted = None if sources is None else frozenset(sources)
        known = self._last_seq  # stored before the read began, so the read sees up to it
        request = {"seq": after + 1, "next_by_subj": self.subject, "batch": limit}
        messages, pending, _ = await self._direct_batch(self.events_stream, request)
        events: list[Event] = []
        scanned_to = after
        for msg in messages:
            event = _decode_event(msg)
            scanned_to = event.seq
            if wanted is None or event.source in wanted:
                events.append(event)
        if pending:
            if self._last_seq <= scanned_to:
                await self.refresh()
        else:
            # Nothing more in this partition: the sequence numbers up to ``known`` that were not
            # returned belong to other partitions (or were compacted), so the scan covers them;
            # a caller's cursor then waits at the partition's end instead of spinning below it.
            scanned_to = max(scanned_to, known)
            self._last_seq = max(self._last_seq, scanned_to)
        return ReadResult(
            events=events,
            scanned_to=scanned_to,
            newest=max(self._last_seq, scanned_to),
            skipped=len(messages) - len(events),
        )

    async def get_cursor(self, destination: str) -> int | None:
        """The saved position of ``destination`` in this partition, or ``None``."""
        assert self._cursors is not None
        self._require_js()
        try:
            entry = await self._call(self._cursors.get(self._cursor_key(destination)))
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else int(entry.value)

    async def due_retries(self, destination: str, now: float, limit: int) -> list[PendingRetry]:
        """Up to ``limit`` of the destination's retries due at ``now``, oldest due first."""
        pending = await self._retries_of(destination)
        due = [r for r in pending if r.next_attempt_at <= now]
        due.sort(key=lambda r: (r.next_attempt_at, r.event.seq))
        return due[:limit]

    async def next_retry_at(self, destination: str) -> float | None:
        """When the destination's next retry is due, or ``None`` if none is pending."""
        pending = await self._retries_of(destination)
        return min((r.next_attempt_at for r in pending), default=None)

    async def first_pending_of(
        self, destination: str, user_keys: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        """Per user: seq and next attempt time of their earliest pending retry."""
        if not user_keys:
            return {}
        wanted = set(user_keys)
        first: dict[str, tuple[int, float]] = {}
        for r in await self._retries_of(destination):
            if r.user_key in wanted and (
                r.user_key not in first or r.event.seq < first[r.user_key][0]
            ):
                first[r.user_key] = (r.event.seq, r.next_attempt_at)
        return first

    async def count_dead_letters(self, destination: str | None = None) -> int:
        """How many dead letters are kept (for one destination, or all)."""
        js = self._require_js()
        subject = f"{self._subjects}.dead.{'>' if destination is None else destination}"
        info = await self._call(js.stream_info(self.dead_stream, subjects_filter=subject))
        return sum((info.state.subjects or {}).values())

    # -- JetStream requests ------------------------------------------------------------------

    def _cursor_key(self, destination: str) -> str:
        return f"{destination}.{self.partition}"

    def _require_nc(self) -> Client:
        self._require_js()
        assert self._nc is not None
        return self._nc

    async def _subject_last_seq(self) -> int:
        js = self._require_js()
        try:
            msg = await self._call(js.get_last_msg(self.events_stream, self.subject, direct=True))
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def _retries_of(self, destination: str) -> list[PendingRetry]:
        """Every pending retry of ``destination``: the last value of each of its keys."""
        subject = f"$KV.{self.retries_bucket}.{destination}.*"
        request: dict[str, Any] = {"multi_last": [subject], "batch": _RETRY_PAGE}
        found: list[PendingRetry] = []
        while True:
            messages, pending, up_to = await self._direct_batch(
                f"KV_{self.retries_bucket}", request
            )
            found.extend(
                _decode_retry(destination, msg.data)
                for msg in messages
                if msg.headers is None or "KV-Operation" not in msg.headers  # not a deletion
            )
            if not pending or not messages:
                return found
            # The next page: same view of the bucket (up to the same sequence), after this one.
            request = {**request, "seq": _seq_of(messages[-1]) + 1, "up_to_seq": up_to}

    async def _direct_batch(
        self, stream: str, request: dict[str, Any]
    ) -> tuple[list[Msg], int, int]:
        """One batched direct get: the messages, how many more match, and the view's last seq."""
        nc = self._require_nc()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        messages: list[Msg] = []
        try:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            while True:
                msg = await self._call(sub.next_msg(timeout=self.timeout_s))
                status = msg.headers.get("Status") if msg.headers else None
                if status is None:
                    messages.append(msg)
                    continue
                assert msg.headers is not None
                if status == "404":
                    return messages, 0, 0
                if status == "204":
                    pending = int(msg.headers.get("Nats-Num-Pending", "0"))
                    up_to = int(msg.headers.get("Nats-UpTo-Sequence", "0"))
                    return messages, pending, up_to
                raise StorageUnavailableError(
                    f"JetStream direct get failed: {status} {msg.headers.get('Description', '')}"
                )
        finally:
            await sub.unsubscribe()

    async def _gather(self, calls: Any) -> None:
        await self._call(asyncio.gather(*calls))

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        """Await a JetStream call, turning its failures into the storage errors callers expect."""
        try:
            return await awaitable
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.NotFoundError):
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise _storage_error(exc) from exc


def _decode_event(msg: Msg) -> Event:
    headers = msg.headers or {}
    return Event(
        seq=_seq_of(msg),
        source=headers.get(_SOURCE, ""),
        message_id=headers.get(_MSG_ID, ""),
        raw=msg.data,
        received_at=float(headers[_RECEIVED_AT]) if _RECEIVED_AT in headers else None,
    )


def _seq_of(msg: Msg) -> int:
    assert msg.headers is not None
    return int(msg.headers["Nats-Sequence"])


def _encode_retry(retry: PendingRetry) -> bytes:
    event = retry.event
    return orjson.dumps(
        {
            "seq": event.seq,
            "source": event.source,
            "message_id": event.message_id,
            "received_at": event.received_at,
            "body": base64.b64encode(event.raw).decode(),
            "attempts": retry.attempts,
            "first_attempt_at": retry.first_attempt_at,
            "next_attempt_at": retry.next_attempt_at,
            "reason": retry.reason,
            "request": retry.request,
            "response": retry.response,
            "user_key": retry.user_key,
        }
    )


def _decode_retry(destination: str, data: bytes) -> PendingRetry:
    record = orjson.loads(data)
    return PendingRetry(
        destination=destination,
        event=Event(
            seq=record["seq"],
            source=record["source"],
            message_id=record["message_id"],
            raw=base64.b64decode(record["body"]),
            received_at=record["received_at"],
        ),
        attempts=record["attempts"],
        first_attempt_at=record["first_attempt_at"],
        next_attempt_at=record["next_attempt_at"],
        reason=record["reason"],
        request=record["request"],
        response=record["response"],
        user_key=record["user_key"],
    )


def _encode_dead_letter(letter: DeadLetter) -> bytes:
    event = letter.event
    return orjson.dumps(
        {
            "destination": letter.destination,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "first_attempt_at": letter.first_attempt_at,
            "last_attempt_at": letter.last_attempt_at,
            "request": letter.request,
            "response": letter.response,
            "event": {
                "seq": event.seq,
                "source": event.source,
                "message_id": event.message_id,
                "received_at": event.received_at,
                "body": base64.b64encode(event.raw).decode(),
            },
        }
    )


def _storage_error(exc: BaseException) -> Exception:
    if isinstance(exc, StorageFullError | StorageUnavailableError):
        return exc
    if isinstance(exc, nats.js.errors.APIError) and (
        exc.err_code in _FULL_CODES or "maximum" in str(exc.description or "").lower()
    ):
        return StorageFullError("the JetStream stream is at its limits")
    return StorageUnavailableError(f"JetStream cannot be written: {type(exc).__name__} {exc}")


async def _on_error(exc: Exception) -> None:
    log.warning("log.nats_error", error=str(exc))


async def _on_reconnected() -> None:
    log.info("log.nats_reconnected")
