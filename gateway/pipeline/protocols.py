"""Tracking plans (Segment Protocols): JSON Schema per event, compiled once, applied per event.

A plan holds draft-07 schemas: ``track`` (event name -> schema of ``properties``), ``identify`` and
``group`` (schema of ``traits``), ``page`` and ``screen`` (schema of ``properties``), and ``common``
(schema of the whole message). Formats are asserted where jsonschema can check them; ``$ref`` must
resolve within its schema (nothing is fetched). Alias calls and unknown types are only checked
against ``common``; they are never unplanned. A key is planned when the schema names it in
``properties`` or ``required`` or it matches ``patternProperties``; a null or absent payload is
validated as ``{}``.

Violation types, a fixed set: ``Unplanned Event``, ``Unplanned Property``, ``Required``,
``Invalid Type``, ``Invalid Value`` (any other keyword: enum, pattern, minimum, format, ...) and
``Common`` (anything the common schema rejects). ``unplanned_events`` and ``unplanned_properties``
alone decide what happens to unplanned events and properties; ``violations`` decides schema
violations. ``omit`` drops the top-level property or trait a violation points into; a violation
at the root (a missing required key) or from the common schema cannot be omitted and passes as with
``allow``. Omitted keys are not validated again. At most 20 violations are reported, recorded or
forwarded per event, so a hostile payload cannot multiply itself (WIRE.md §4).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import fastjsonschema
from jsonschema import Draft7Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7

from gateway.errors import ConfigError
from gateway.events import format_timestamp, new_message_id

__all__ = ["ProtocolsOptions", "ProtocolsResult", "TrackingPlan", "TrackingPlanConfig", "Violation"]

_MAX_VIOLATIONS = 20
_MAX_DESCRIPTION = 300
# The object each call's schema describes; alias has none.
_PAYLOAD_KEY = {
    "track": "properties",
    "page": "properties",
    "screen": "properties",
    "identify": "traits",
    "group": "traits",
}
_TYPES = {"required": "Required", "type": "Invalid Type"}
_CLEAN: tuple[None, tuple[()], tuple[()], tuple[()]] = (None, (), (), ())
"""A result's fields after the message, for a planned, valid message."""
_COPIED = ("userId", "anonymousId", "timestamp", "receivedAt", "sentAt", "originalTimestamp")


class TrackingPlanConfig(BaseModel):
    """A tracking plan as configured: a name and draft-07 JSON Schemas; absent means not planned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    common: dict[str, Any] | None = None
    """Schema of the whole message, e.g. requiring ``context.app.version``."""
    track: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Event name -> schema of the event's ``properties``."""
    identify: dict[str, Any] | None = None
    group: dict[str, Any] | None = None
    page: dict[str, Any] | None = None
    screen: dict[str, Any] | None = None


class ProtocolsOptions(BaseModel):
    """What one source does with unplanned events, unplanned properties and violations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unplanned_events: Literal["allow", "block"] = "allow"
    unplanned_properties: Literal["allow", "omit"] = "allow"
    violations: Literal["allow", "omit", "block"] = "allow"
    forward_violations: bool = False
    """Emit one ``Violation Generated`` track message per violation, whatever the action."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a message departs from its plan; ``field`` is a dotted path: ``properties.price``."""

    field: str
    type: str
    description: str


class ProtocolsResult(NamedTuple):
    """The outcome of :meth:`TrackingPlan.apply`.

    ``message`` is None when blocked (``blocked_reason`` is ``unplanned_event`` or ``violation``);
    ``omitted`` lists the dotted paths removed; ``extra_messages`` are forwarded violations.

    Immutable, built once per event: a NamedTuple costs a third of a frozen dataclass to build.
    """

    message: dict[str, Any] | None
    blocked_reason: str | None
    violations: tuple[Violation, ...]
    omitted: tuple[str, ...]
    extra_messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class _Schema:
    validator: Any
    declared: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    fast: Callable[[Any], Any] | None = None
    """fastjsonschema's compiled check, when the schema uses no ``format``: it tells a valid
    instance ~20x faster than jsonschema, which stays the judge of what is wrong."""

    def declares(self, key: str) -> bool:
        return key in self.declared or any(p.search(key) for p in self.patterns)


@dataclass(slots=True)
class _Findings:
    """What one :meth:`TrackingPlan.apply` found; ``passed`` is let through, ``omit`` dropped."""

    found: list[Violation] = field(default_factory=list)
    passed: list[Violation] = field(default_factory=list)
    omit: dict[str, None] = field(default_factory=dict)  # payload keys, an ordered set
    schema_violations: bool = False

    def add(
        self, violation: Violation, *, omit_key: str | None = None, schema: bool = False
    ) -> None:
        self.found.append(violation)
        self.schema_violations |= schema
        if omit_key is None:
            self.passed.append(violation)
        else:
            self.omit[omit_key] = None


class TrackingPlan:
    """A compiled tracking plan; build it with :meth:`compile`, then :meth:`apply` it per event."""

    __slots__ = ("_calls", "_common", "_track", "name")

    def __init__(
        self,
        name: str,
        common: _Schema | None,
        track: dict[str, _Schema],
        calls: dict[str, _Schema],
    ) -> None:
        self.name = name
        self._common = common
        self._track = track
        self._calls = calls

    @classmethod
    def compile(cls, config: TrackingPlanConfig) -> TrackingPlan:
        """Check and compile every schema of ``config`` once.

        Raises ConfigError listing each invalid schema by its key path, e.g.
        ``tracking_plans[web-plan].track["Order Completed"].properties.price.type: ...``.
        """
        where = f"tracking_plans[{config.name}]"
        problems: list[str] = []
        common = _compile(config.common, f"{where}.common", problems)
        track: dict[str, _Schema] = {}
        for event, schema in config.track.items():
            path = f"{where}.track[{json.dumps(event, ensure_ascii=False)}]"
            if not event.strip():
                problems.append(f"{path}: an event name must not be empty")
            if (compiled := _compile(schema, path, problems)) is not None:
                track[event] = compiled
        calls: dict[str, _Schema] = {}
        for call in ("identify", "group", "page", "screen"):
            if (
                compiled := _compile(getattr(config, call), f"{where}.{call}", problems)
            ) is not None:
                calls[call] = compiled
        if problems:
            raise ConfigError(problems)
        return cls(config.name, common, track, calls)

    def apply(
        self, message: Mapping[str, Any], options: ProtocolsOptions, *, source: str
    ) -> ProtocolsResult:
        """Check ``message`` against the plan and apply ``options``; never raises, never mutates.

        A planned, valid message comes back as the same object; otherwise the returned message is a
        copy of the changed parts, with ``context.protocols`` recording the plan, what was omitted
        and the violations let through.
        """
        if self._passes_at_once(message):
            return ProtocolsResult(message if isinstance(message, dict) else dict(message), *_CLEAN)
        found = _Findings()
        if self._common is not None:
            for violation, _ in _check(self._common, message, "", common=True):
                found.add(violation, schema=True)
        call = message.get("type")
        key = _PAYLOAD_KEY.get(call) if isinstance(call, str) else None
        if isinstance(call, str) and key is not None:
            event = message.get("event")
            if call == "track":
                schema = self._track.get(event) if isinstance(event, str) else None
            else:
                schema = self._calls.get(call)
            if schema is not None:
                _check_payload(schema, key, message.get(key), options, found)
            else:
                described = f"event {event!r}" if call == "track" else f"{call} calls"
                found.add(
                    Violation(
                        "event" if call == "track" else "type",
                        "Unplanned Event",
                        f"{described} not in tracking plan {self.name!r}"[:_MAX_DESCRIPTION],
                    )
                )
                if options.unplanned_events == "block":
                    return self._blocked("unplanned_event", message, found.found, options, source)
        if found.schema_violations and options.violations == "block":
            return self._blocked("violation", message, found.found, options, source)
        extra = self._forward(message, found.found, source) if options.forward_violations else ()
        if not found.omit and not found.passed:
            same = message if isinstance(message, dict) else dict(message)
            return ProtocolsResult(same, None, (), (), extra)
        out = dict(message)
        omitted = [f"{key}.{name}" for name in found.omit]
        protocols: dict[str, Any] = {"tracking_plan": self.name}
        if found.omit and key is not None:
            out[key] = {k: v for k, v in message[key].items() if k not in found.omit}
            protocols["omitted"] = omitted
        if found.passed:
            protocols["violations"] = [
                {"field": v.field, "type": v.type, "description": v.description}
                for v in found.passed[:_MAX_VIOLATIONS]
            ]
        context = message.get("context")
        out["context"] = (
            {**context, "protocols": protocols}
            if isinstance(context, dict)
            else {"protocols": protocols}
        )
        violations = tuple(found.found[:_MAX_VIOLATIONS])
        return ProtocolsResult(out, None, violations, tuple(omitted), extra)

    def _passes_at_once(self, message: Mapping[str, Any]) -> bool:
        """Whether ``message`` is planned and valid, found the quick way: no common schema, a
        planned call whose payload has only declared keys and passes fastjsonschema's check.
        Anything else goes the long way, which finds the same for such a message."""
        if self._common is not None:
            return False
        call = message.get("type")
        if not isinstance(call, str) or (key := _PAYLOAD_KEY.get(call)) is None:
            return False
        if call == "track":
            event = message.get("event")
            schema = self._track.get(event) if isinstance(event, str) else None
        else:
            schema = self._calls.get(call)
        payload = message.get(key)
        if schema is None or schema.fast is None or not isinstance(payload, dict):
            return False
        if not schema.declared.issuperset(payload):
            return False
        try:
            schema.fast(payload)
        except Exception:  # noqa: BLE001 - the long way says what is wrong
            return False
        return True

    def _blocked(
        self,
        reason: str,
        message: Mapping[str, Any],
        found: list[Violation],
        options: ProtocolsOptions,
        source: str,
    ) -> ProtocolsResult:
        extra = self._forward(message, found, source) if options.forward_violations else ()
        return ProtocolsResult(None, reason, tuple(found[:_MAX_VIOLATIONS]), (), extra)

    def _forward(
        self, message: Mapping[str, Any], found: list[Violation], source: str
    ) -> tuple[dict[str, Any], ...]:
        """One ``Violation Generated`` track per violation, with ids stable across retries."""
        if not found:
            return ()
        original_id = message.get("messageId")
        base = original_id if isinstance(original_id, str) and original_id else new_message_id()
        call = message.get("type")
        name = message.get("event" if call == "track" else "name") if call != "identify" else None
        shared = {k: message[k] for k in _COPIED if message.get(k) is not None}
        shared.setdefault("timestamp", format_timestamp(datetime.now(UTC)))
        context = message.get("context")
        library = context.get("library") if isinstance(context, dict) else None
        forwarded = []
        for i, violation in enumerate(found[:_MAX_VIOLATIONS]):
            extra_context: dict[str, Any] = {"protocols": {"tracking_plan": self.name}}
            if library is not None:
                extra_context["library"] = library
            properties = {
                "eventName": name if isinstance(name, str) else None,
                "eventType": call if isinstance(call, str) else None,
                "eventMessageID": original_id if isinstance(original_id, str) else None,
                "violationField": violation.field,
                "violationType": violation.type,
                "violationDescription": violation.description,
                "trackingPlanName": self.name,
                "sourceName": source,
            }
            forwarded.append(
                {
                    "type": "track",
                    "event": "Violation Generated",
                    "messageId": f"{base}-violation-{i}",
                    **shared,
                    "context": extra_context,
                    "properties": properties,
                }
            )
        return tuple(forwarded)


def _compile(schema: dict[str, Any] | None, where: str, problems: list[str]) -> _Schema | None:
    """Compile one schema, or append to ``problems`` why it cannot be used."""
    if schema is None:
        return None
    try:
        Draft7Validator.check_schema(schema)
    except SchemaError as exc:
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        problems.append(f"{where}{at}: {exc.message[:_MAX_DESCRIPTION]} (not valid JSON Schema)")
        return None
    resolver = Registry().resolver_with_root(DRAFT7.create_resource(schema))
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            problems.append(f"{where}: $ref {ref!r} does not resolve within the schema")
    declared_type = schema.get("type", "object")
    if "object" not in (declared_type if isinstance(declared_type, list) else [declared_type]):
        problems.append(f'{where}.type: must allow "object" (it describes an object)')
    return _Schema(
        Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER),
        frozenset([*schema.get("properties", {}), *schema.get("required", [])]),
        tuple(re.compile(p) for p in schema.get("patternProperties", {})),
        _fast_check(schema),
    )


def _fast_check(schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    """fastjsonschema's check of ``schema``, or ``None`` where it could disagree with jsonschema.

    Formats are checked differently by the two libraries, so a schema using ``format`` gets no
    fast path; nor does one fastjsonschema cannot compile.
    """
    if "format" in _keywords(schema):
        return None
    try:
        check: Callable[[Any], Any] = fastjsonschema.compile(
            schema, use_formats=False, use_default=False
        )
    except Exception:  # noqa: BLE001 - any trouble: jsonschema alone is always right
        return None
    return check


def _keywords(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keywords(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keywords(item)


def _check_payload(
    schema: _Schema, key: str, payload: Any, options: ProtocolsOptions, found: _Findings
) -> None:
    """Find unplanned properties and violations in a planned payload (``properties``/``traits``)."""
    checked = {} if payload is None else payload  # null means absent, as at ingress
    if isinstance(payload, dict):
        omit_unplanned = options.unplanned_properties == "omit"
        declared = schema.declared
        for name in payload:
            if name not in declared and not schema.declares(name):
                description = f"{name!r} is not declared in the plan"[:_MAX_DESCRIPTION]
                violation = Violation(f"{key}.{name}", "Unplanned Property", description)
                found.add(violation, omit_key=name if omit_unplanned else None)
        if found.omit:
            checked = {k: v for k, v in payload.items() if k not in found.omit}
    omittable = options.violations == "omit" and isinstance(payload, dict)
    for violation, top in _check(schema, checked, key, common=False):
        found.add(violation, omit_key=top if omittable else None, schema=True)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _check(
    schema: _Schema, instance: Any, prefix: str, *, common: bool
) -> list[tuple[Violation, Any]]:
    """Violations of ``schema`` by ``instance``, each with the top-level key it points into."""
    kind = "Common" if common else None
    if schema.fast is not None:
        try:
            schema.fast(instance)
        except Exception:  # noqa: BLE001, S110 - jsonschema below says what is wrong, if anything
            pass
        else:
            return []
    try:
        errors = list(schema.validator.iter_errors(instance))
    except (RecursionError, Unresolvable) as exc:
        # A recursive schema meeting a deeply nested payload; report it instead of crashing.
        description = f"cannot be validated: {type(exc).__name__}"
        return [(Violation(prefix or "message", kind or "Invalid Value", description), None)]
    out: list[tuple[Violation, Any]] = []
    for error in errors:
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required":
            # jsonschema names the missing key only in its message; recover it for the field.
            said = error.message
            missing = [p for p in error.validator_value if said == f"{p!r} is a required property"]
            path += missing[:1]
        dotted = ".".join([prefix, *path] if prefix else path) or "message"
        violation_type = kind or _TYPES.get(error.validator, "Invalid Value")
        top = error.absolute_path[0] if error.absolute_path else None
        out.append((Violation(dotted, violation_type, error.message[:_MAX_DESCRIPTION]), top))
    return out
