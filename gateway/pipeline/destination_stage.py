"""The destination stage: whether, and in what shape, each event goes to one destination.

In order, as in Segment: the ``integrations`` object, the destination's filters (sample, drop,
only send, drop properties, allow properties) and its transformations. It runs in the router,
on an event's first attempt; what it leaves out is counted by rule, what it changes is
delivered (and retried) in its changed form. A destination with no filters or transformations
only pays for a byte search for ``"integrations"`` in each event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.destination import Event
from gateway.pipeline.filters import DestinationFilters
from gateway.pipeline.integrations import IntegrationKind, is_enabled
from gateway.pipeline.transforms import Transformations

__all__ = ["DestinationStage", "LeftOut"]

LeftOut = Counter[tuple[str, str, str]]
"""Events left out, by ``(source, rule, action)``."""

_INTEGRATIONS = b'"integrations"'


class DestinationStage:
    """One destination's integrations check, filters and transformations."""

    def __init__(
        self,
        name: str,
        *,
        display_name: str = "",
        kind: IntegrationKind = "destination",
        filters: DestinationFilters | None = None,
        transformations: Transformations | None = None,
    ) -> None:
        self.name = name
        self.display_name = display_name
        self.kind = kind
        self.filters = filters
        self.transformations = transformations

    def apply(self, events: Sequence[Event]) -> tuple[list[Event], LeftOut]:
        """The events to deliver (some possibly changed) and what was left out, by rule."""
        left_out: LeftOut = Counter()
        if self.kind == "archive" and self.filters is None and self.transformations is None:
            return list(events), left_out
        kept: list[Event] = []
        for event in events:
            message = self._message(event)
            if message is None:
                kept.append(event)
                continue
            out = self._one(event, message, left_out)
            if out is message:
                kept.append(event)
            elif out is not None:
                kept.append(
                    Event(
                        seq=event.seq,
                        source=event.source,
                        message_id=event.message_id,
                        raw=orjson.dumps(out),
                        received_at=event.received_at,
                    )
                )
        return kept, left_out

    def _message(self, event: Event) -> dict[str, Any] | None:
        """The event's message if the stage must look at it; ``None`` to pass it unread."""
        unfiltered = self.filters is None and self.transformations is None
        if unfiltered and (self.kind == "archive" or _INTEGRATIONS not in event.raw):
            return None
        return event.message

    def _one(self, event: Event, message: dict[str, Any], left_out: LeftOut) -> Any:
        if not is_enabled(message.get("integrations"), self.name, self.display_name, self.kind):
            left_out[event.source, "integrations", "disabled"] += 1
            return None
        if self.filters is not None:
            filtered = self.filters.apply(message)
            if filtered.message is None:
                left_out[event.source, f"filter:{filtered.rule}", filtered.outcome] += 1
                return None
            message = filtered.message
        if self.transformations is not None:
            transformed = self.transformations.apply(message)
            if transformed.message is None:
                action = "error" if transformed.outcome == "transform_error" else "dropped"
                left_out[event.source, f"transformation:{transformed.rule}", action] += 1
                return None
            message = transformed.message
        return message
