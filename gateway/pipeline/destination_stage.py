"""The destination stage: whether, and in what shape, each event goes to one destination.

In order, as in Segment: the ``integrations`` object, the destination's filters (sample, drop,
only send, drop properties, allow properties) and its transformations. Events of users
suppressed since they were accepted are left out first, so a deletion request is not undone by
events that were already on their way. It runs in the router,
on an event's first attempt; what it leaves out is counted by rule, what it changes is
delivered (and retried) in its changed form. A destination with no filters or transformations
only pays for a byte search for ``"integrations"`` in each event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog

from gateway.destination import Event
from gateway.pipeline.filters import DestinationFilters
from gateway.pipeline.integrations import IntegrationKind, is_enabled
from gateway.pipeline.transforms import Transformations

__all__ = ["DestinationStage", "LeftOut"]

LeftOut = Counter[tuple[str, str, str]]
"""Events left out (or changed: action ``transformed``), by ``(source, rule, action)``."""

log = structlog.get_logger("eventgate.routing")

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
        suppressed: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self.name = name
        self.suppressed = suppressed
        self.display_name = display_name
        self.kind = kind
        self.filters = filters
        self.transformations = transformations

    def apply(self, events: Sequence[Event]) -> tuple[list[Event], LeftOut]:
        """The events to deliver (some possibly changed) and what was left out, by rule."""
        left_out: LeftOut = Counter()
        suppressed = self.suppressed()
        unfiltered = self.filters is None and self.transformations is None
        if unfiltered and not suppressed and self.kind == "archive":
            return list(events), left_out
        kept: list[Event] = []
        errors: dict[str, str] = {}
        for event in events:
            if unfiltered and not suppressed and _INTEGRATIONS not in event.raw:
                kept.append(event)  # nothing here can apply: no need to decode it
                continue
            message = event.message
            out = self._one(event, message, suppressed, left_out, errors)
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
        for rule, error in errors.items():
            # One line per rule and batch: the counters say how many, this says why.
            log.warning("routing.rule_failed", destination=self.name, rule=rule, error=error)
        return kept, left_out

    def _one(
        self,
        event: Event,
        message: dict[str, Any],
        suppressed: frozenset[str],
        left_out: LeftOut,
        errors: dict[str, str],
    ) -> Any:
        source = event.source
        user_id = message.get("userId")
        if suppressed and user_id is not None and str(user_id) in suppressed:
            left_out[source, "suppression", "suppressed"] += 1
            return None
        if not is_enabled(message.get("integrations"), self.name, self.display_name, self.kind):
            left_out[source, "integrations", "disabled"] += 1
            return None
        if self.filters is not None:
            filtered = self.filters.apply(message)
            if filtered.message is None:
                rule = f"filter:{filtered.rule}"
                left_out[source, rule, filtered.outcome] += 1
                if filtered.error:
                    errors[rule] = filtered.error
                return None
            message = filtered.message
        if self.transformations is not None:
            transformed = self.transformations.apply(message)
            if transformed.message is None:
                rule = f"transformation:{transformed.rule}"
                if transformed.outcome == "transform_error":
                    left_out[source, rule, "error"] += 1
                    errors[rule] = transformed.error or "failed"
                else:
                    left_out[source, rule, "dropped"] += 1
                return None
            for name in transformed.applied:  # counted even if nothing changed (docs)
                left_out[source, f"transformation:{name}", "transformed"] += 1
            message = transformed.message
        return message
