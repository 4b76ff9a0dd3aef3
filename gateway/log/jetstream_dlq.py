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

import orjson

from gateway.dlq import DeadLetterFilter, DeadLetterRow
from gateway.log.base import PendingRetry
from gateway.log.jetstream import JetStreamStorage, encode_retry, event_from_json, seq_of

__all__ = ["count_letters", "list_letters", "purge", "replay", "show"]

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
    kv = storage.retries
    assert kv is not None
    js = storage.require_js()
    count = 0
    for row, record in await _matching(storage, match):
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
        await storage.call(js.delete_msg(storage.dead_stream, int(row.key)))
        count += 1
    return count


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
