"""The distributed log: NATS JetStream through nats-py, shared by every gateway node.

The same partitioned model as the SQLite shards, so the router needs no change: partition ``n``
is the subject ``<prefix>.events.<n>`` of one stream, ``<PREFIX>_EVENTS`` (file storage,
``replicas`` copies, ``discard: new`` so a full stream refuses appends instead of dropping old
events). :class:`JetStreamStorage` is one node's connection and the streams and buckets it
keeps; :class:`JetStreamEventLog` is one partition of it, an :class:`~gateway.log.EventLog`.
Ingress spreads events over the partitions by user (:mod:`gateway.log.partitioned`); each
partition is delivered by one node at a time, the holder of its lease (:mod:`gateway.log.leases`).

- **Append**: every event is published with ``Nats-Msg-Id: <messageId>`` (JetStream's duplicate
  window is the dedup window: an ack marked ``duplicate`` counts as a duplicate) and
  ``Eventgate-Source`` / ``Eventgate-Received-At`` headers; the body is the event's body. A batch
  is published concurrently and ``append`` returns only once every ack is in: acked by JetStream
  means durable. A refusal (the stream's ``max_bytes`` reached) raises ``StorageFullError``,
  anything else (NATS unreachable, no ack in time) ``StorageUnavailableError``, so ingress
  answers 503. A batch is not atomic: when one publish fails, others of it may be stored; the
  client's retry of the request is then deduplicated by messageId.
- **Sequence numbers** are the stream's: increasing, never reused, shared by all partitions, so a
  partition sees gaps. ``read`` is one batched direct get (``next_by_subj``): one round trip, no
  consumer to create or clean up.
- **Cursors**: the KV bucket ``<PREFIX>_CURSORS``, key ``<destination>.<partition>``: the
  destination's durable position in the partition (what a durable consumer's ack floor would
  be), created for every partition when a node starts, before its ingress accepts anything.
- **Retries**: the KV bucket ``<PREFIX>_RETRIES``, key ``<destination>.<partition>.<seq>``, a JSON
  record carrying the event itself, so compaction never waits for a retry.
- **Dead letters**: the stream ``<PREFIX>_DEAD``, subject ``<prefix>.dead.<destination>``, one JSON
  record per event with the reason, the last exchange, the partition and the event
  (:mod:`gateway.log.jetstream_dlq` lists, replays and purges them).
- **Compaction** purges the partition's subject below the lowest cursor, never anything newer.

Limits, measured or by construction: reads need nats-server 2.11 or newer (batched direct get);
with ``replicas > 1`` a direct get may be answered by a replica a moment behind the leader; a
read that finds the partition's end asks the leader before it skips anything. The retry lookups
(``due_retries``, ``next_retry_at``, ``first_pending_of``) fetch the partition's retries of the
destination in one batched direct get each: fine for thousands of pending retries, not for
millions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
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
from nats.js.api import DiscardPolicy, StorageType
from nats.js.kv import KeyValue

from gateway.config import JetStreamConfig
from gateway.destination import Event
from gateway.errors import StorageFullError, StorageUnavailableError
from gateway.events import NormalizedEvent
from gateway.log.base import DeadLetter, PendingRetry, ReadResult

__all__ = ["JetStreamEventLog", "JetStreamStorage"]

log = structlog.get_logger("eventgate.log")

_SOURCE = "Eventgate-Source"
_RECEIVED_AT = "Eventgate-Received-At"
_MSG_ID = "Nats-Msg-Id"
# How often a reader waiting for new events asks for the partition's last sequence.
_POLL_S = 0.02
# The most messages one batched direct get of the retries asks for.
_RETRY_PAGE = 1_000
# How often the stream's size (behind the storage gauge) is asked for, at most.
_USAGE_EVERY_S = 5.0
# JetStream's error codes for a stream at its limits.
_FULL_CODES = frozenset({10047, 10077, 10078})  # storage exceeded, max bytes, max messages


class JetStreamStorage:
    """One node's connection to JetStream, and the streams and buckets eventgate keeps there.

    Opened by whoever uses it first and closed when the last user closes it (every partition
    log of a process shares one connection).
    """

    def __init__(self, config: JetStreamConfig) -> None:
        self.config = config
        prefix = config.stream_prefix
        self.events_stream = f"{prefix}_EVENTS"
        self.dead_stream = f"{prefix}_DEAD"
        self.cursors_bucket = f"{prefix}_CURSORS"
        self.retries_bucket = f"{prefix}_RETRIES"
        self.leases_bucket = f"{prefix}_LEASES"
        self.subjects = prefix.lower()
        self.timeout_s = config.timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.cursors: KeyValue | None = None
        self.retries: KeyValue | None = None
        self.leases: KeyValue | None = None
        self._users = 0
        self._opening = asyncio.Lock()
        self._partitions: dict[int, JetStreamEventLog] = {}
        self._used_bytes = 0
        self._measured_at = 0.0
        self._acks_prefix = ""
        self._acks: dict[str, asyncio.Future[tuple[int, bool]]] = {}
        self._ack_tokens = itertools.count()

    def partition(self, number: int) -> JetStreamEventLog:
        """The log of partition ``number`` (one object per partition and storage)."""
        if number not in self._partitions:
            self._partitions[number] = JetStreamEventLog(self, number)
        return self._partitions[number]

    def partitions(self) -> list[JetStreamEventLog]:
        """Every partition's log, in order."""
        return [self.partition(n) for n in range(self.config.partitions)]

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (once per storage), then create or update the streams and buckets.

        Raises:
            StorageUnavailableError: NATS cannot be reached or JetStream is not enabled.
        """
        async with self._opening:
            self._users += 1
            if self._users > 1:
                return
            try:
                await self._connect()
            except BaseException:
                self._users -= 1
                await self._disconnect()
                raise

    async def close(self) -> None:
        """Release one use; the last one closes the connection (after its pending writes)."""
        async with self._opening:
            self._users = max(self._users - 1, 0)
            if self._users == 0:
                await self._disconnect()

    @property
    def is_connected(self) -> bool:
        """Whether JetStream can be written right now."""
        return self._nc is not None and self._nc.is_connected and self._users > 0

    async def _connect(self) -> None:
        config = self.config
        options: dict[str, Any] = {}
        if config.credentials is not None:
            options["user_credentials"] = str(config.credentials)
        if config.user is not None:
            options["user"] = config.user
        if config.password is not None:
            options["password"] = config.password.get_secret_value()
        if config.token is not None:
            options["token"] = config.token.get_secret_value()
        try:
            self._nc = await nats.connect(
                config.servers,
                connect_timeout=max(int(self.timeout_s), 1),
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                error_cb=_on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=_on_reconnected,
                name="eventgate",
                **options,
            )
            # Fail fast when NATS is unreachable at startup, but once connected, reconnect
            # forever (to any server of the cluster).
            self._nc.options["max_reconnect_attempts"] = -1
            self._js = self._nc.jetstream(timeout=self.timeout_s)
            self._acks_prefix = self._nc.new_inbox()
            await self._nc.subscribe(f"{self._acks_prefix}.*", cb=self._on_ack)
            await self._ensure_stream(
                name=self.events_stream,
                subjects=[f"{self.subjects}.events.*"],
                duplicate_window=config.duplicate_window_s or 120,
                max_bytes=-1 if config.max_bytes_mb is None else int(config.max_bytes_mb * 2**20),
                discard=DiscardPolicy.NEW,
                allow_direct=True,
            )
            await self._ensure_stream(
                name=self.dead_stream, subjects=[f"{self.subjects}.dead.>"], allow_direct=True
            )
            self.cursors = await self._bucket(self.cursors_bucket)
            self.retries = await self._bucket(self.retries_bucket)
            self.leases = await self._bucket(self.leases_bucket, ttl=config.lease_ttl_s)
            await self.refresh_usage()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StorageUnavailableError(
                f"JetStream at {', '.join(config.servers)} cannot be reached: "
                f"{type(exc).__name__} {exc}".rstrip()
            ) from exc
        log.info("log.jetstream_opened", stream=self.events_stream, servers=config.servers)

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or nc.is_closed:
            return
        if nc.is_connected:
            await nc.drain()
        else:
            await nc.close()  # nothing can be flushed to a server that is gone

    async def _on_disconnected(self) -> None:
        if self._users > 0:
            log.warning("log.nats_disconnected", servers=self.config.servers)

    async def _ensure_stream(self, **config: Any) -> None:
        js = self.require_js()
        options = {"storage": StorageType.FILE, "num_replicas": self.config.replicas, **config}
        try:
            await js.add_stream(**options)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # "stream name already in use with a different config"
                raise
            await js.update_stream(**options)

    async def _bucket(self, name: str, ttl: float | None = None) -> KeyValue:
        js = self.require_js()
        return await js.create_key_value(
            bucket=name,
            history=1,
            storage=StorageType.FILE,
            replicas=self.config.replicas,
            direct=True,
            ttl=ttl,
        )

    def require_js(self) -> JetStreamContext:
        """The JetStream context.

        Raises:
            StorageUnavailableError: not connected (never opened, closed, or NATS is down).
        """
        if self._js is None or self._nc is None or not self._nc.is_connected:
            raise StorageUnavailableError("JetStream is not connected")
        return self._js

    def require_nc(self) -> Client:
        """The NATS connection (see :meth:`require_js`)."""
        self.require_js()
        assert self._nc is not None
        return self._nc

    # -- what every partition shares ---------------------------------------------------------

    async def publish_all(
        self, subject: str, messages: Sequence[tuple[bytes, dict[str, str]]]
    ) -> list[tuple[int, bool]]:
        """Publish every ``(body, headers)`` to ``subject``; return each ``(seq, duplicate)``.

        All acks come back on one subscription and are awaited under one deadline: nats-py's
        ``publish`` made a task, a timer and an inbox per message (a third of ingress CPU), and
        its ``publish_async`` loses the stream's error replies (a full stream timed out).

        Raises:
            StorageFullError: the stream is at its limits.
            StorageUnavailableError: not connected, or not every ack came within the timeout.
        """
        nc = self.require_nc()
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[tuple[int, bool]]] = {}
        try:
            for body, headers in messages:
                token = str(next(self._ack_tokens))
                futures[token] = self._acks[token] = loop.create_future()
                await nc.publish(subject, body, f"{self._acks_prefix}.{token}", headers)
            done, late = await asyncio.wait(futures.values(), timeout=self.timeout_s)
        except (nats.errors.Error, OSError) as exc:
            raise storage_error(exc) from exc
        finally:
            for token in futures:
                self._acks.pop(token, None)
        errors = [error for f in done if (error := f.exception()) is not None]
        if late or errors:
            for future in late:
                future.cancel()
            stored = sum(1 for f in done if f.exception() is None)
            first = errors[0] if errors else TimeoutError(f"no ack within {self.timeout_s} s")
            log.error(
                "log.append_failed", error=str(first), stored=stored, failed=len(messages) - stored
            )
            raise storage_error(first) from first
        return [f.result() for f in futures.values()]

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return  # answered after its deadline
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(StorageUnavailableError("no JetStream stream answered"))
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            future.set_exception(StorageUnavailableError("JetStream answered what is not JSON"))
            return
        error = answer.get("error")
        if error is not None:
            code, description = error.get("err_code"), str(error.get("description", ""))
            if code in _FULL_CODES or "maximum" in description.lower():
                future.set_exception(StorageFullError("the JetStream stream is at its limits"))
            else:
                future.set_exception(StorageUnavailableError(f"JetStream refused: {description}"))
            return
        future.set_result((int(answer["seq"]), bool(answer.get("duplicate", False))))

    async def ensure_cursors(self, destinations: Collection[str]) -> None:
        """Give every destination a cursor in every partition that has none: the stream's end.

        Called by every node before its ingress starts, so a new destination never skips an
        event acknowledged after that (whichever node delivers the partition later).
        """
        cursors = self._require_kv(self.cursors)
        info = await self.call(self.require_js().stream_info(self.events_stream))
        end = str(info.state.last_seq).encode()
        for name in destinations:
            for number in range(self.config.partitions):
                # Refused when it has one (perhaps created by another node just now).
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await self.call(cursors.create(f"{name}.{number}", end))

    def used_bytes(self) -> int:
        """The events stream's size at the last :meth:`refresh_usage`."""
        return self._used_bytes

    async def refresh_usage(self, *, max_age_s: float = 0.0) -> int:
        """Ask JetStream for the events stream's size (unless asked within ``max_age_s``)."""
        now = time.monotonic()
        if now - self._measured_at >= max_age_s:
            info = await self.call(self.require_js().stream_info(self.events_stream))
            self._used_bytes = int(info.state.bytes)
            self._measured_at = now
        return self._used_bytes

    async def direct_batch(
        self, stream: str, request: dict[str, Any]
    ) -> tuple[list[Msg], int, int]:
        """One batched direct get: the messages, how many more match, and the view's last seq."""
        nc = self.require_nc()
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[tuple[int, int]] = loop.create_future()
        messages: list[Msg] = []

        # A callback and one deadline for the whole batch: next_msg() per message cost a
        # timer each, 60 % of the read's client CPU (measured).
        async def collect(msg: Msg) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                messages.append(msg)
            elif answered.done():
                return
            elif status == "404":
                answered.set_result((0, 0))
            elif status == "204":
                assert msg.headers is not None
                pending = int(msg.headers.get("Nats-Num-Pending", "0"))
                answered.set_result((pending, int(msg.headers.get("Nats-UpTo-Sequence", "0"))))
            else:
                description = msg.headers.get("Description", "") if msg.headers else ""
                answered.set_exception(
                    StorageUnavailableError(f"JetStream direct get failed: {status} {description}")
                )

        inbox = nc.new_inbox()
        sub = await self.call(nc.subscribe(inbox, cb=collect))
        try:
            payload = orjson.dumps(request)
            await self.call(nc.publish(f"$JS.API.DIRECT.GET.{stream}", payload, reply=inbox))
            pending, up_to = await self.call(asyncio.wait_for(answered, self.timeout_s))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return messages, pending, up_to

    async def gather(self, calls: Any) -> None:
        """Await JetStream calls concurrently (see :meth:`call`)."""
        await self.call(asyncio.gather(*calls))

    @staticmethod
    async def call(awaitable: Any) -> Any:
        """Await a JetStream call, turning its failures into the storage errors callers expect."""
        try:
            return await awaitable
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.NotFoundError,
            nats.js.errors.KeyWrongLastSequenceError,
        ):
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise storage_error(exc) from exc

    @staticmethod
    def _require_kv(bucket: KeyValue | None) -> KeyValue:
        if bucket is None:
            raise StorageUnavailableError("JetStream is not open")
        return bucket


class JetStreamEventLog:
    """A :class:`~gateway.log.EventLog` on NATS JetStream: one partition of the events stream."""

    def __init__(self, storage: JetStreamStorage, partition: int) -> None:
        self.storage = storage
        self.partition = partition
        self.subject = f"{storage.subjects}.events.{partition}"
        self._open = False
        self._last_seq = 0
        self._new_data = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the shared storage and learn the partition's last sequence.

        Raises:
            StorageUnavailableError: NATS cannot be reached or JetStream is not enabled.
        """
        if self._open:
            return
        await self.storage.open()
        self._open = True
        try:
            info = await self.storage.call(
                self.storage.require_js().stream_info(self.storage.events_stream)
            )
            # An empty partition has nothing newer than the stream's last sequence.
            self._last_seq = max(await self._subject_last_seq(), info.state.last_seq)
        except BaseException:
            await self.close()
            raise
        log.debug("log.opened", subject=self.subject, last_seq=self._last_seq)

    async def close(self) -> None:
        """Refuse further writes and release the shared storage."""
        if self._open:
            self._open = False
            await self.storage.close()

    def _js(self) -> JetStreamContext:
        if not self._open:
            raise StorageUnavailableError("the log is closed")
        return self.storage.require_js()

    def used_bytes(self) -> int:
        """The whole events stream's size (every partition shares it)."""
        return self.storage.used_bytes()

    # -- writes ------------------------------------------------------------------------------

    async def append(self, events: Sequence[NormalizedEvent]) -> int:
        """Publish ``events`` to the partition and wait for every ack; return the duplicates.

        Raises:
            StorageFullError: the stream is at its ``max_bytes``.
            StorageUnavailableError: JetStream cannot be reached or did not ack in time.
        """
        if not events:
            return 0
        self._js()
        acks = await self.storage.publish_all(
            self.subject,
            [
                (
                    event.body,
                    {
                        _MSG_ID: event.message_id,
                        _SOURCE: event.source,
                        _RECEIVED_AT: repr(event.received_at),
                    },
                )
                for event in events
            ],
        )
        duplicates = sum(1 for _, duplicate in acks if duplicate)
        newest = max([self._last_seq, *(seq for seq, duplicate in acks if not duplicate)])
        if newest > self._last_seq:
            self._last_seq = newest
            event, self._new_data = self._new_data, asyncio.Event()
            event.set()
        return duplicates

    async def set_cursor(self, destination: str, seq: int) -> None:
        """Durably save how far ``destination`` has got in this partition."""
        self._js()
        cursors = self.storage.cursors
        assert cursors is not None
        await self.storage.call(cursors.put(self._cursor_key(destination), str(seq).encode()))

    async def schedule_retries(self, retries: Sequence[PendingRetry]) -> None:
        """Durably record (or replace) each event's retry record, keyed by destination and seq."""
        self._js()
        kv = self.storage.retries
        assert kv is not None
        await self.storage.gather(
            kv.put(self._retry_key(r.destination, r.event.seq), encode_retry(r)) for r in retries
        )

    async def retries_done(self, destination: str, seqs: Sequence[int]) -> None:
        """Forget the destination's retries of these events."""
        self._js()
        kv = self.storage.retries
        assert kv is not None
        await self.storage.gather(kv.delete(self._retry_key(destination, seq)) for seq in seqs)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Publish each dead letter to the dead-letter stream, then drop its pending retry."""
        js = self._js()
        storage = self.storage
        await storage.gather(
            js.publish(
                f"{storage.subjects}.dead.{letter.destination}",
                encode_dead_letter(letter, self.partition),
                timeout=storage.timeout_s,
            )
            for letter in letters
        )
        kv = self.storage.retries
        assert kv is not None
        await storage.gather(
            kv.delete(self._retry_key(d.destination, d.event.seq)) for d in letters
        )

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
        self._js()
        nc = self.storage.require_nc()
        request = {"filter": self.subject, "seq": bound + 1}  # purges seq < bound + 1 only
        reply = await self.storage.call(
            nc.request(
                f"$JS.API.STREAM.PURGE.{self.storage.events_stream}",
                orjson.dumps(request),
                timeout=self.storage.timeout_s,
            )
        )
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise StorageUnavailableError(f"JetStream refused the purge: {answer['error']}")
        await self.storage.refresh_usage(max_age_s=_USAGE_EVERY_S)
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
        self._js()
        wanted = None if sources is None else frozenset(sources)
        known = self._last_seq  # stored before the read began, so the read sees up to it
        request = {"seq": after + 1, "next_by_subj": self.subject, "batch": limit}
        messages, pending, _ = await self.storage.direct_batch(self.storage.events_stream, request)
        events: list[Event] = []
        scanned_to = after
        for msg in messages:
            event = decode_event(msg)
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
            # With replicas, a direct get may be answered by a replica behind the leader: the
            # leader says whether the partition really ends here before anything is skipped
            # (skipping on a lagging replica's word lost events in the 3-node cluster test).
            lagging = (
                known > scanned_to
                and self.storage.config.replicas > 1
                and await self._subject_last_seq(direct=False) > scanned_to
            )
            if lagging:
                known = scanned_to  # read again; the replica will have caught up
            scanned_to = max(scanned_to, known)
            self._last_seq = max(self._last_seq, scanned_to)
        return ReadResult(
            events=events,
            scanned_to=scanned_to,
            newest=max(self._last_seq, scanned_to),
            skipped=len(messages) - len(events),
            backlog=len(messages) + pending,  # sequence numbers have other partitions' gaps
        )

    async def get_cursor(self, destination: str) -> int | None:
        """The saved position of ``destination`` in this partition, or ``None``."""
        self._js()
        cursors = self.storage.cursors
        assert cursors is not None
        try:
            entry = await self.storage.call(cursors.get(self._cursor_key(destination)))
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

    # -- JetStream requests ------------------------------------------------------------------

    def _cursor_key(self, destination: str) -> str:
        return f"{destination}.{self.partition}"

    def _retry_key(self, destination: str, seq: int) -> str:
        return f"{destination}.{self.partition}.{seq}"

    async def _subject_last_seq(self, *, direct: bool = True) -> int:
        """The partition's newest sequence: from any replica (``direct``) or the leader."""
        js = self._js()
        try:
            msg = await self.storage.call(
                js.get_last_msg(self.storage.events_stream, self.subject, direct=direct)
            )
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def _retries_of(self, destination: str) -> list[PendingRetry]:
        """Every pending retry of ``destination`` in the partition (the last value per key)."""
        self._js()
        bucket = self.storage.retries_bucket
        subject = f"$KV.{bucket}.{destination}.{self.partition}.*"
        request: dict[str, Any] = {"multi_last": [subject], "batch": _RETRY_PAGE}
        found: list[PendingRetry] = []
        while True:
            messages, pending, up_to = await self.storage.direct_batch(f"KV_{bucket}", request)
            found.extend(
                decode_retry(destination, msg.data)
                for msg in messages
                if msg.headers is None or "KV-Operation" not in msg.headers  # not a deletion
            )
            if not pending or not messages:
                return found
            # The next page: same view of the bucket (up to the same sequence), after this one.
            request = {**request, "seq": seq_of(messages[-1]) + 1, "up_to_seq": up_to}


def decode_event(msg: Msg) -> Event:
    """The event a message of the events stream (or a direct get of it) holds."""
    headers = msg.headers or {}
    return Event(
        seq=seq_of(msg),
        source=headers.get(_SOURCE, ""),
        message_id=headers.get(_MSG_ID, ""),
        raw=msg.data,
        received_at=float(headers[_RECEIVED_AT]) if _RECEIVED_AT in headers else None,
    )


def seq_of(msg: Msg) -> int:
    """The stream sequence of a direct-get answer."""
    assert msg.headers is not None
    return int(msg.headers["Nats-Sequence"])


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "source": event.source,
        "message_id": event.message_id,
        "received_at": event.received_at,
        "body": base64.b64encode(event.raw).decode(),
    }


def event_from_json(record: dict[str, Any]) -> Event:
    """The event of a retry or dead-letter record."""
    return Event(
        seq=record["seq"],
        source=record["source"],
        message_id=record["message_id"],
        raw=base64.b64decode(record["body"]),
        received_at=record["received_at"],
    )


def encode_retry(retry: PendingRetry) -> bytes:
    """A retry record as the retries bucket keeps it."""
    return orjson.dumps(
        {
            "event": _event_json(retry.event),
            "attempts": retry.attempts,
            "first_attempt_at": retry.first_attempt_at,
            "next_attempt_at": retry.next_attempt_at,
            "reason": retry.reason,
            "request": retry.request,
            "response": retry.response,
            "user_key": retry.user_key,
        }
    )


def decode_retry(destination: str, data: bytes) -> PendingRetry:
    """The retry a record of the retries bucket holds."""
    record = orjson.loads(data)
    return PendingRetry(
        destination=destination,
        event=event_from_json(record["event"]),
        attempts=record["attempts"],
        first_attempt_at=record["first_attempt_at"],
        next_attempt_at=record["next_attempt_at"],
        reason=record["reason"],
        request=record["request"],
        response=record["response"],
        user_key=record["user_key"],
    )


def encode_dead_letter(letter: DeadLetter, partition: int) -> bytes:
    """A dead letter as the dead-letter stream keeps it."""
    return orjson.dumps(
        {
            "destination": letter.destination,
            "partition": partition,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "first_attempt_at": letter.first_attempt_at,
            "last_attempt_at": letter.last_attempt_at,
            "request": letter.request,
            "response": letter.response,
            "event": _event_json(letter.event),
        }
    )


def storage_error(exc: BaseException) -> Exception:
    """The storage error a NATS failure means for ingress: full (503) or unavailable (503)."""
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
