"""Dead letters on JetStream: list, show, replay and purge, as :mod:`gateway.dlq` does for SQLite.

A dead letter is a message of the ``<PREFIX>_DEAD`` stream; its key is its stream sequence. A
replay writes the event back to the retries bucket of its partition, due now, with 0 attempts
(the router counts it as a replay), then deletes the message; the node holding the partition's
lease delivers it. Listing scans the stream (filtered by destination subject when asked): dead
letters are meant to be few, and this keeps them in the stream that made them durable.
"""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors
import orjson

from gateway.dlq import DeadLetterFilter, DeadLetterRow
from gateway.log.base import PendingRetry
from gateway.log.jetstream import JetStreamStorage, encode_retry, event_from_json, seq_of

__all__ = [
    "count_by_destination",
    "count_letters",
    "delivery_state",
    "list_letters",
    "purge",
    "replay",
    "replay_one",
    "show",
]

_PAGE = 500


async def list_letters(
    storage: JetStreamStorage, match: DeadLetterFilter, limit: int = 100
) -> list[DeadLetterRow]:
    """The newest ``limit`` dead letters matching ``match``, newest first."""
    rows = [row for row, _ in await _matching(storage, match)]
    rows.sort(key=lambda r: r.last_attempt_at, reverse=True)
    return rows[:limit]


async def show(storage: JetStreamStorage, key: str) -> DeadLetterRow | None:
    """The dead letter named ``key`` (its sequence in the dead-letter stream), or ``None``."""
    if not key.isdigit():
        return None
    request = {"seq": int(key)}
    messages, _, _ = await storage.direct_batch(storage.dead_stream, {**request, "batch": 1})
    found = [m for m in messages if seq_of(m) == int(key)]
    return _row(found[0].data, int(key))[0] if found else None


async def count_letters(storage: JetStreamStorage, destination: str | None = None) -> int:
    """How many dead letters are kept (for one destination, or all)."""
    js = storage.require_js()
    subject = f"{storage.subjects}.dead.{'>' if destination is None else destination}"
    info = await storage.call(js.stream_info(storage.dead_stream, subjects_filter=subject))
    return sum((info.state.subjects or {}).values())


async def replay(storage: JetStreamStorage, match: DeadLetterFilter) -> int:
    """Re-enqueue the matching dead letters for their own destination; return how many."""
    now = time.time()
    count = 0
    for row, record in await _matching(storage, match):
        await _replay(storage, row, record, now)
        count += 1
    return count


async def _replay(
    storage: JetStreamStorage, row: DeadLetterRow, record: dict[str, Any], now: float
) -> None:
    """Write the letter's event back to its partition's retries, due now; delete the letter."""
    kv = storage.retries
    assert kv is not None
    event = event_from_json(record["event"])
    retry = PendingRetry(
        destination=row.destination,
        event=event,
        attempts=0,
        first_attempt_at=now,
        next_attempt_at=now,
        reason="replayed",
    )
    key = f"{row.destination}.{record.get('partition', 0)}.{event.seq}"
    await storage.call(kv.put(key, encode_retry(retry)))
    await storage.call(storage.require_js().delete_msg(storage.dead_stream, int(row.key)))


async def count_by_destination(storage: JetStreamStorage) -> dict[str, int]:
    """How many dead letters each destination has."""
    js = storage.require_js()
    prefix = f"{storage.subjects}.dead."
    info = await storage.call(js.stream_info(storage.dead_stream, subjects_filter=f"{prefix}>"))
    return {s.removeprefix(prefix): n for s, n in (info.state.subjects or {}).items() if n}


async def replay_one(storage: JetStreamStorage, key: str) -> tuple[str, str] | None:
    """Re-enqueue the dead letter ``key``; return its destination and its event's reference
    (``<partition>:<seq>``, for :func:`delivery_state`), or ``None`` if there is none."""
    row = await show(storage, key)
    if row is None:
        return None
    messages, _, _ = await storage.direct_batch(storage.dead_stream, {"seq": int(key), "batch": 1})
    record = orjson.loads(messages[0].data)
    await _replay(storage, row, record, time.time())
    return row.destination, f"{record.get('partition', 0)}:{record['event']['seq']}"


async def delivery_state(storage: JetStreamStorage, destination: str, ref: str) -> str | None:
    """Where the event ``ref`` (``<partition>:<seq>``) stands for ``destination``.

    ``dead_lettered``, ``retrying``, ``pending`` or ``done``, as :func:`gateway.dlq.delivery_state`
    says for the embedded log; ``None`` when ``ref`` is not such a reference.
    """
    partition, _, number = ref.partition(":")
    if not (partition.isdigit() and number.isdigit()):
        return None
    seq = int(number)
    for _, record in await _matching(storage, DeadLetterFilter(destination=destination)):
        if record["event"]["seq"] == seq and str(record.get("partition", 0)) == partition:
            return "dead_lettered"
    retries, cursors = storage.retries, storage.cursors
    assert retries is not None
    assert cursors is not None
    try:
        await storage.call(retries.get(f"{destination}.{partition}.{seq}"))
    except nats.js.errors.KeyNotFoundError:
        pass
    else:
        return "retrying"
    try:
        entry = await storage.call(cursors.get(f"{destination}.{partition}"))
    except nats.js.errors.KeyNotFoundError:
        return "pending"
    return "done" if entry.value is not None and int(entry.value) >= seq else "pending"


async def purge(storage: JetStreamStorage, match: DeadLetterFilter) -> int:
    """Delete the matching dead letters for good; return how many."""
    js = storage.require_js()
    matching = await _matching(storage, match)
    for row, _ in matching:
        await storage.call(js.delete_msg(storage.dead_stream, int(row.key)))
    return len(matching)


async def _matching(
    storage: JetStreamStorage, match: DeadLetterFilter
) -> list[tuple[DeadLetterRow, dict[str, Any]]]:
    subject = f"{storage.subjects}.dead.{match.destination or '>'}"
    found: list[tuple[DeadLetterRow, dict[str, Any]]] = []
    after = 0
    while True:
        request = {"seq": after + 1, "next_by_subj": subject, "batch": _PAGE}
        messages, pending, _ = await storage.direct_batch(storage.dead_stream, request)
        for msg in messages:
            row, record = _row(msg.data, seq_of(msg))
            if _matches(row, match):
                found.append((row, record))
            after = seq_of(msg)
        if not pending or not messages:
            return found


def _matches(row: DeadLetterRow, match: DeadLetterFilter) -> bool:
    return (
        (match.destination is None or row.destination == match.destination)
        and (match.since is None or row.last_attempt_at >= match.since)
        and (match.until is None or row.last_attempt_at < match.until)
        and (match.reason is None or match.reason in row.reason)
    )


def _row(data: bytes, seq: int) -> tuple[DeadLetterRow, dict[str, Any]]:
    record = orjson.loads(data)
    event = event_from_json(record["event"])
    row = DeadLetterRow(
        key=str(seq),
        destination=record["destination"],
        source=event.source,
        message_id=event.message_id,
        reason=record["reason"],
        attempts=record["attempts"],
        first_attempt_at=record["first_attempt_at"],
        last_attempt_at=record["last_attempt_at"],
        request=record["request"],
        response=record["response"],
        body=event.raw,
    )
    return row, record
