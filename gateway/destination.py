"""What a destination plugin subclasses: ``Destination`` or ``BatchDestination``, and ``Event``."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, final

import orjson
from pydantic import BaseModel, ConfigDict

from gateway.errors import DeliveryError, RetryableDeliveryError
from gateway.pipeline.integrations import IntegrationKind

__all__ = ["BatchDestination", "Destination", "Event", "NoSettings", "deliver"]


class NoSettings(BaseModel):
    """Settings model of a destination type that takes no settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


@final
class Event:
    """One accepted event as a destination receives it.

    ``raw`` is the normalized Segment message as compact JSON bytes, exactly as stored in the log;
    ``message`` is the same decoded (lazily, once). Treat both as read-only. ``received_at`` is
    the gateway's receive time in Unix seconds, when known.
    """

    __slots__ = ("_message", "message_id", "raw", "received_at", "seq", "source")

    def __init__(
        self,
        *,
        seq: int,
        source: str,
        message_id: str,
        raw: bytes,
        received_at: float | None = None,
    ) -> None:
        self.seq = seq
        self.source = source
        self.message_id = message_id
        self.raw = raw
        self.received_at = received_at
        self._message: dict[str, Any] | None = None

    @property
    def message(self) -> dict[str, Any]:
        """The normalized Segment message (``type``, ``messageId``, ``timestamp``, ...)."""
        if self._message is None:
            self._message = orjson.loads(self.raw)
        return self._message

    @property
    def type(self) -> str:
        """The Spec call: ``track``, ``identify``, ``page``, ``screen``, ``group`` or ``alias``."""
        return str(self.message["type"])

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, source={self.source!r}, message_id={self.message_id!r})"


class Destination(abc.ABC, Generic[SettingsT]):
    """A destination type that delivers one event at a time.

    Subclass it, set ``type_name`` (the ``type:`` users write in config), ``settings_model`` (a
    pydantic model validated at startup) and implement :meth:`send`. Raise
    :class:`~gateway.RetryableDeliveryError` or :class:`~gateway.PermanentDeliveryError` on failure;
    never sleep, retry, batch or count: the router owns all of that.
    """

    type_name: ClassVar[str]
    display_name: ClassVar[str] = ""
    settings_model: ClassVar[type[BaseModel]] = NoSettings
    default_batch: ClassVar[Mapping[str, float] | None] = None
    """The ``batch`` config (``max_events``, ``max_age_s``) of a destination of this type whose
    YAML gives none; ``None``: the router's defaults."""
    integration_kind: ClassVar[IntegrationKind] = "destination"
    """How the ``integrations`` object applies: ``destination`` (by name, display name and
    ``All``), ``warehouse`` (``Warehouses`` instead of ``All``) or ``archive`` (ignored)."""
    supports_user_deletion: ClassVar[bool] = False
    """Whether :meth:`delete_user` is implemented (privacy deletion requests call it)."""

    def __init__(self, name: str, settings: SettingsT) -> None:
        self.name = name
        self.settings = settings
        self._count: Callable[[str, int], None] | None = None

    @final
    def count(self, what: str, amount: int = 1) -> None:
        """Add ``amount`` to ``eventgate_destination_counts_total{destination, what}``.

        For what only the plugin can see (e.g. ``unmapped_values`` in a warehouse); delivered,
        failed and retried events are counted by the router already. ``what`` is a short
        snake_case name; keep the set of names small and fixed.
        """
        if self._count is not None:
            self._count(what, amount)

    @final
    def bind_counter(self, count: Callable[[str, int], None]) -> None:
        """Send :meth:`count` to ``count``; the router calls this, plugins never need to."""
        self._count = count

    async def open(self) -> None:
        """Acquire connections or files before the first delivery; optional."""

    async def close(self) -> None:
        """Release what :meth:`open` acquired; called once at shutdown; optional."""

    async def delete_user(self, user_id: str) -> int:
        """Delete what this destination holds about ``user_id``; the number of records deleted.

        Implement it (and set ``supports_user_deletion = True``) if the destination can forget
        a user. Raise :class:`~gateway.RetryableDeliveryError` if it cannot right now.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support deleting a user")

    @abc.abstractmethod
    async def send(self, event: Event) -> None:
        """Deliver one event; return normally once the destination has it.

        Raises:
            RetryableDeliveryError: the delivery may succeed later.
            PermanentDeliveryError: retrying cannot help.
        """

    @classmethod
    def describe_settings(cls) -> dict[str, Any]:
        """The JSON Schema of this type's settings, for ``eventgate plugins``."""
        return cls.settings_model.model_json_schema()


class BatchDestination(Destination[SettingsT]):
    """A destination type that delivers a batch at once and reports per event.

    Implement :meth:`send_batch`; the router forms batches by count and age from the
    destination's ``batch`` config.
    """

    @abc.abstractmethod
    async def send_batch(self, events: Sequence[Event]) -> Sequence[DeliveryError | None] | None:
        """Deliver ``events``; return ``None`` if all were delivered, else one outcome per event.

        An outcome is ``None`` (delivered) or the :class:`~gateway.DeliveryError` for that event,
        so one bad event neither sinks nor is retried with the good ones. Raising a
        ``DeliveryError`` applies it to the whole batch.
        """

    async def send(self, event: Event) -> None:
        """Deliver one event as a batch of one."""
        outcomes = await self.send_batch([event])
        if outcomes and outcomes[0] is not None:
            raise outcomes[0]


async def deliver(
    destination: Destination[Any], events: Sequence[Event]
) -> list[DeliveryError | None]:
    """Deliver ``events`` through ``destination``; one outcome per event, ``None`` = delivered.

    An exception that is not a ``DeliveryError`` is a plugin bug; it is reported as retryable
    (so the event is retried and, if the bug persists, dead-lettered with the reason) rather than
    crashing the router.
    """
    try:
        if isinstance(destination, BatchDestination):
            outcomes = await destination.send_batch(events)
            if outcomes is None:
                return [None] * len(events)
            if len(outcomes) != len(events):
                raise TypeError(
                    f"{type(destination).__name__}.send_batch returned {len(outcomes)} outcomes "
                    f"for {len(events)} events; return None or exactly one outcome per event"
                )
            return list(outcomes)
        results: list[DeliveryError | None] = []
        for event in events:
            try:
                await destination.send(event)
            except DeliveryError as exc:
                results.append(exc)
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the router
                results.append(_plugin_bug(exc))
            else:
                results.append(None)
        return results
    except DeliveryError as exc:
        return [exc] * len(events)
    except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the router
        return [_plugin_bug(exc)] * len(events)


def _plugin_bug(exc: Exception) -> RetryableDeliveryError:
    return RetryableDeliveryError(f"destination raised {type(exc).__name__}: {exc}")
