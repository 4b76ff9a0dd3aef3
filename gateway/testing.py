"""Test helpers for destination authors: the ``DestinationContract`` suite and ``make_event``.

Subclass the contract in a test module named ``Test...`` and provide two things::

    class TestMyDestinationContract(DestinationContract):
        @pytest.fixture(name="destination")
        async def _destination(self, tmp_path: Path) -> MyDestination:
            destination = MyDestination("mine", MySettings(path=tmp_path / "out"))
            await destination.open()
            return destination  # the contract closes it

        async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
            return read_back_what_reached(destination)

Every built-in destination passes this suite; a third-party plugin gets it for free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import BaseModel

from gateway.destination import Destination, Event, deliver
from gateway.events import format_timestamp

__all__ = ["DestinationContract", "make_event"]

# The receivedAt of make_event(0); event ``seq`` arrives ``seq`` seconds later.
_FIRST_RECEIVED_AT = datetime(2026, 11, 23, 0, 29, 46, 123000, tzinfo=UTC)
_CLOSED = pytest.StashKey[bool]()


def make_event(seq: int, source: str = "web", **fields: Any) -> Event:
    """Build an :class:`~gateway.Event` holding a realistic normalized Segment ``track`` message.

    The message has ``messageId`` (``<source>-<seq>``, so unique per source and seq), ``type``,
    ``event``, ``userId``, ``anonymousId``, ``properties``, ``originalTimestamp``, ``timestamp``,
    ``sentAt``, ``receivedAt`` (``2026-11-23T00:29:46.123Z`` plus ``seq`` seconds) and ``context``,
    as ingress would store it. ``fields`` replace or add top-level keys, e.g.
    ``make_event(1, receivedAt="2026-11-24T08:00:00.000Z")``.
    """
    received_at = _FIRST_RECEIVED_AT + timedelta(seconds=seq)
    sent_at = received_at - timedelta(milliseconds=40)
    message: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "userId": f"user-{seq % 7}",
        "anonymousId": f"anon-{seq % 11:04d}",
        "properties": {"order_id": f"order-{seq}", "revenue": 42.5, "currency": "EUR"},
        "messageId": f"{source}-{seq:08d}",
        "originalTimestamp": format_timestamp(sent_at - timedelta(seconds=2)),
        "timestamp": format_timestamp(received_at - timedelta(seconds=2)),
        "sentAt": format_timestamp(sent_at),
        "receivedAt": format_timestamp(received_at),
        "context": {
            "ip": "203.0.113.7",
            "library": {"name": "analytics-python", "version": "2.3.3"},
            "locale": "en-US",
        },
    }
    message.update(fields)
    received = message.get("receivedAt")
    return Event(
        seq=seq,
        source=source,
        message_id=str(message["messageId"]),
        raw=orjson.dumps(message),
        received_at=_unix_seconds(received) if isinstance(received, str) else None,
    )


def _unix_seconds(timestamp: str) -> float | None:
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


class DestinationContract:
    """Conformance tests every destination type passes; subclass it as ``Test<Name>Contract``.

    A subclass provides:

    - a ``destination`` fixture returning an **opened** instance (``await open()`` done). The
      contract closes it after each test (its ``close()`` must finish within
      ``close_timeout_s``), so the fixture must not close it too;
    - ``async def delivered(self, destination) -> list[dict]``: the messages that reached the
      destination so far, decoded, each carrying its ``messageId``. It is called after
      ``deliver`` returned, while the destination is still open, so what ``deliver`` reported
      delivered must be readable by then. Duplicates are allowed (delivery is at-least-once).

    Test methods inherit as-is; override one only to add a stricter variant of it.
    """

    close_timeout_s: ClassVar[float] = 10.0

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        """Return the messages that reached ``destination``; every subclass implements this."""
        raise NotImplementedError(f"{type(self).__name__} must implement delivered()")

    @pytest.fixture(name="contract_closes_destination", autouse=True)
    async def _contract_closes_destination(
        self, request: pytest.FixtureRequest, destination: Destination[Any]
    ) -> AsyncIterator[None]:
        yield
        if not request.node.stash.get(_CLOSED, False):
            await asyncio.wait_for(destination.close(), timeout=self.close_timeout_s)

    @staticmethod
    def batch() -> list[Event]:
        """The batch the contract delivers: five events from ``web`` and ``ios``, interleaved."""
        return [make_event(seq, source="web" if seq % 2 else "ios") for seq in range(1, 6)]

    def test_type_is_described(self, destination: Destination[Any]) -> None:
        """The type has a type_name, a pydantic settings model and a JSON Schema of it."""
        cls = type(destination)
        assert isinstance(cls.type_name, str)
        assert cls.type_name
        assert issubclass(cls.settings_model, BaseModel)
        assert isinstance(destination.settings, cls.settings_model)
        schema = cls.describe_settings()
        assert schema.get("type") == "object"
        assert isinstance(schema.get("properties", {}), dict)
        assert orjson.loads(orjson.dumps(schema)) == schema

    async def test_deliver_reports_every_event_delivered(
        self, destination: Destination[Any]
    ) -> None:
        """deliver returns exactly one None per event of the batch."""
        batch = self.batch()
        assert await deliver(destination, batch) == [None] * len(batch)

    async def test_events_from_two_sources_arrive(self, destination: Destination[Any]) -> None:
        """Every event of a two-source batch reaches the destination with its messageId."""
        batch = self.batch()
        assert await deliver(destination, batch) == [None] * len(batch)
        received = [message["messageId"] for message in await self.delivered(destination)]
        assert set(received) == {event.message_id for event in batch}

    async def test_redelivery_is_accepted(self, destination: Destination[Any]) -> None:
        """Delivering the same batch twice succeeds both times and loses nothing."""
        batch = self.batch()
        assert await deliver(destination, batch) == [None] * len(batch)
        assert await deliver(destination, batch) == [None] * len(batch)
        received = [message["messageId"] for message in await self.delivered(destination)]
        assert set(received) == {event.message_id for event in batch}

    async def test_close_completes(
        self, request: pytest.FixtureRequest, destination: Destination[Any]
    ) -> None:
        """close() after a delivery returns within close_timeout_s."""
        await deliver(destination, self.batch())
        request.node.stash[_CLOSED] = True
        await asyncio.wait_for(destination.close(), timeout=self.close_timeout_s)
