"""The source stage: what happens to a source's events before they are stored.

In order: the suppression list (events of suppressed users are dropped), the source's tracking
plan (blocked, properties omitted, violations recorded and optionally forwarded as
``Violation Generated`` events) and the source's transformations. It runs in the ingress
process, before the append, so what is acknowledged and stored is what the destinations see.
A source with none of these configured, and no user suppressed, skips it entirely.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.control import ViolationKey
from gateway.events import NormalizedEvent
from gateway.pipeline.protocols import ProtocolsOptions, TrackingPlan
from gateway.pipeline.transforms import Transformations

__all__ = ["FilterCount", "SourceStage", "StageResult"]

FilterCount = Counter[tuple[str, str]]
"""Events left out or changed, by ``(rule, action)``."""


@dataclass(slots=True)
class StageResult:
    """The events to store and what the stage counted on the way."""

    events: list[NormalizedEvent]
    counts: FilterCount = field(default_factory=Counter)
    violations: dict[ViolationKey, tuple[int, float, str]] = field(default_factory=dict)


class SourceStage:
    """One source's suppression check, tracking plan and transformations."""

    def __init__(
        self,
        source: str,
        *,
        suppressed: Callable[[], frozenset[str]],
        plan: TrackingPlan | None = None,
        options: ProtocolsOptions | None = None,
        transformations: Transformations | None = None,
    ) -> None:
        self.source = source
        self.suppressed = suppressed
        self.plan = plan
        self.options = options or ProtocolsOptions()
        self.transformations = transformations
        self._plan_rule = f"tracking_plan:{plan.name}" if plan is not None else ""
        self.has_rules = plan is not None or transformations is not None
        """Whether anything but the suppression list applies (else it can be skipped)."""

    def apply(self, events: list[NormalizedEvent]) -> StageResult:
        """Run the stage over ``events`` (all of this source)."""
        suppressed = self.suppressed()
        if not suppressed and not self.has_rules:
            return StageResult(events)
        result = StageResult([])
        for event in events:
            message = event.message if event.message is not None else orjson.loads(event.body)
            kept = self._one(message, suppressed, result)
            for out in kept:
                if out is message:  # unchanged: store the event as it came
                    result.events.append(event)
                    continue
                message_id = str(out.get("messageId", event.message_id))
                result.events.append(
                    NormalizedEvent(self.source, message_id, event.received_at, orjson.dumps(out))
                )
        return result

    def _one(
        self, message: dict[str, Any], suppressed: frozenset[str], result: StageResult
    ) -> list[dict[str, Any]]:
        """The messages ``message`` becomes: none, itself, or itself and forwarded violations."""
        user_id = message.get("userId")
        if user_id is not None and str(user_id) in suppressed:
            result.counts["suppression", "suppressed"] += 1
            return []
        out: list[dict[str, Any]] = []
        if self.plan is not None:
            checked = self.plan.apply(message, self.options, source=self.source)
            if checked.violations:
                self._note_violations(message, checked.violations, result)
            out.extend(checked.extra_messages)
            if checked.omitted:
                result.counts[self._plan_rule, "omitted"] += len(checked.omitted)
            if checked.message is None:
                result.counts[self._plan_rule, "blocked"] += 1
                return out
            message = checked.message
        if self.transformations is not None:
            transformed = self.transformations.apply(message)
            if transformed.message is None:
                action = "error" if transformed.outcome == "transform_error" else "dropped"
                result.counts[f"transformation:{transformed.rule}", action] += 1
                return out
            for name in transformed.applied:  # counted even if nothing changed (docs)
                result.counts[f"transformation:{name}", "transformed"] += 1
            message = transformed.message
        return [message, *out]

    def _note_violations(
        self, message: dict[str, Any], violations: Any, result: StageResult
    ) -> None:
        assert self.plan is not None
        now = time.time()
        kind = str(message.get("type", ""))
        name = str(message.get("event", "")) if kind == "track" else ""
        for violation in violations:
            key = ViolationKey(
                self.source, self.plan.name, kind, name, violation.type, violation.field
            )
            count, _, _ = result.violations.get(key, (0, 0.0, ""))
            result.violations[key] = (count + 1, now, violation.description)
