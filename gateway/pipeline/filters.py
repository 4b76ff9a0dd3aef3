"""Destination filters with Segment's semantics: sample, drop, only send, drop or allow properties.

A destination has at most :data:`MAX_FILTERS` filters (WIRE.md §4). Each has a name, an FQL
condition ``if`` (default ``all``) and exactly one action. Whatever order they are listed in, they
run in Segment's order: every ``sample``, then ``drop``, then ``only_send``, then
``drop_properties``, then ``allow_properties``; filters of one kind run in listing order, and each
sees the message as the filters before it left it. An action applies when its ``if`` matches,
except ``only_send``, which drops the events that do *not* match.

``sample`` keeps ``percent`` % of the matching events. With a ``path`` the decision is a
deterministic function of the md5 of the path's value (a string as is, anything else as compact
JSON; a missing or null value uses the ``messageId``), and it ignores the filter's name, so the
same user is kept by every destination sampling on ``userId`` and a 10 % sample is a subset of a
20 % one. Without a path (or without a messageId to fall back on) the decision is random.

Filters fail closed: a condition that cannot be evaluated drops the event as ``filter_error``.
Messages are never mutated: an edit copies only the objects on the path to what it changes.
"""

from __future__ import annotations

import hashlib
import json
import random as _random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import ConfigError, FqlEvaluationError, FqlSyntaxError
from gateway.pipeline import fql

__all__ = [
    "MAX_FILTERS",
    "PROTECTED_FIELDS",
    "DestinationFilterConfig",
    "DestinationFilters",
    "FilterResult",
    "SampleConfig",
    "split_path",
]

MAX_FILTERS = 10  # Segment's limit per destination
PROTECTED_FIELDS = frozenset(
    {
        "type",
        "messageId",
        "userId",
        "anonymousId",
        "groupId",
        "previousId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "receivedAt",
    }
)
"""Top-level fields ``allow_properties`` at ``""`` always keeps: without them an event cannot be
routed, deduplicated or attributed."""

# The router keys everything on these; dropping them would make a message that is not an event.
_UNDROPPABLE = frozenset({"type", "messageId"})
_ACTIONS = ("sample", "drop", "only_send", "drop_properties", "allow_properties")
_PATH = re.compile(r"(?:\\.|[^.\\])+(?:\.(?:\\.|[^.\\])+)*", re.DOTALL)
_SEGMENT = re.compile(r"(?:\\.|[^.\\])+", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)

Outcome = Literal["passed", "dropped", "sampled_out", "filter_error"]
Message = dict[str, Any]
_Owned = dict[int, Message]
"""The objects one run of the filters copied, by id: its own, so later edits change them in place
(and holding them keeps their ids from being reused)."""
_Action = Callable[[Message, _Owned], Message | None]


def split_path(path: str) -> tuple[str, ...]:
    """Split a field path into keys the way FQL does: ``context.traits.email`` is three keys.

    ``\\`` takes the next character literally, so ``properties.a\\.b`` names the key ``a.b``.
    Raises ValueError for an empty path or an empty key (``a..b``).
    """
    if not _PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not a field path; write keys joined by dots, e.g. a.b")
    return tuple(_ESCAPE.sub(r"\1", segment) for segment in _SEGMENT.findall(path))


class SampleConfig(BaseModel):
    """``sample``: keep ``percent`` % of the matching events, by ``path``'s value or at random."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(ge=0, le=100)
    path: str | None = None

    @model_validator(mode="after")
    def _path_is_a_path(self) -> SampleConfig:
        if self.path is not None:
            split_path(self.path)
        return self


class DestinationFilterConfig(BaseModel):
    """One destination filter: a ``name``, an FQL condition ``if`` and exactly one action.

    ``drop_properties`` and ``allow_properties`` map the path of an object (``""`` is the
    message itself) to keys within it: to remove, or to keep while removing every other key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    if_: str = Field("all", alias="if")
    sample: SampleConfig | None = None
    drop: Literal[True] | None = None
    only_send: Literal[True] | None = None
    drop_properties: dict[str, list[str]] | None = Field(None, min_length=1)
    allow_properties: dict[str, list[str]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_action(self) -> DestinationFilterConfig:
        given = [action for action in _ACTIONS if getattr(self, action) is not None]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise ValueError(f"a filter takes exactly one of {', '.join(_ACTIONS)}; found {found}")
        for fields in (self.drop_properties, self.allow_properties):
            for path in fields or {}:
                if path:
                    split_path(path)
        if _UNDROPPABLE.intersection((self.drop_properties or {}).get("", ())):
            raise ValueError("drop_properties cannot drop the top-level type or messageId")
        return self


class FilterResult(NamedTuple):
    """What the filters made of one message.

    ``message`` is None unless ``outcome`` is ``"passed"``; ``rule`` names the filter that
    dropped it; ``changed`` says the message returned is an edited copy, not the input;
    ``error`` says why a ``"filter_error"`` happened (never the payload).

    Immutable, built once per event: a NamedTuple costs a third of a frozen dataclass to build.
    """

    message: Message | None
    outcome: Outcome
    rule: str | None = None
    changed: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    condition: fql.Expression
    test: fql.Evaluator | None  # the condition's evaluator; None if it is always true
    acts_on_match: bool  # False for only_send, which acts on the events that do not match
    act: _Action  # the message to carry on with, or None to drop it
    drop_outcome: Outcome


@dataclass(frozen=True, slots=True)
class DestinationFilters:
    """A destination's compiled filters, in Segment's order; build with :meth:`compile`."""

    _filters: tuple[_Filter, ...]

    @classmethod
    def compile(
        cls,
        configs: Sequence[DestinationFilterConfig],
        *,
        random: Callable[[], float] = _random.random,
    ) -> DestinationFilters:
        """Parse every condition and order the filters; ``random`` draws path-less samples.

        Raises:
            ConfigError: more than :data:`MAX_FILTERS` filters, two with one name, or a
                condition that is not valid FQL (with the filter's name and the position).
        """
        problems: list[str] = []
        if len(configs) > MAX_FILTERS:
            problems.append(
                f"{len(configs)} filters on one destination; at most {MAX_FILTERS} are allowed"
                " (Segment's limit): merge conditions with 'or' or remove some"
            )
        problems += _duplicates(config.name for config in configs)
        filters: list[tuple[int, _Filter]] = []
        for config in configs:
            try:
                condition = fql.parse(config.if_)
            except FqlSyntaxError as exc:
                problems.append(f"filter {config.name!r}: if: {exc.problems[0]}")
                continue
            kind = next(action for action in _ACTIONS if getattr(config, action) is not None)
            act, drop_outcome = _action(config, random)
            rank = _ACTIONS.index(kind)
            filters.append(
                (
                    rank,
                    _Filter(
                        config.name,
                        condition,
                        condition.evaluator,
                        kind != "only_send",
                        act,
                        drop_outcome,
                    ),
                )
            )
        if problems:
            raise ConfigError(problems)
        filters.sort(key=lambda ranked: ranked[0])  # stable: listing order within a kind
        return cls(tuple(f for _, f in filters))

    def apply(self, message: Message) -> FilterResult:
        """Run the filters on ``message``; if none changes it, the result holds the same object."""
        current = message
        owned: _Owned = {}
        for f in self._filters:
            try:
                test = f.test
                if (test is None or test(current) is True) is not f.acts_on_match:
                    continue
                result = f.act(current, owned)
            except (FqlEvaluationError, RecursionError) as exc:
                # Fail closed: an event we cannot judge must not reach the destination unfiltered.
                return FilterResult(None, "filter_error", f.name, error=str(exc))
            if result is None:
                return FilterResult(None, f.drop_outcome, f.name)
            current = result
        return FilterResult(current, "passed", changed=current is not message)


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    problems: list[str] = []
    for name in names:
        if name in seen:
            problems.append(f"two filters are named {name!r}; give each a unique name")
        seen.add(name)
    return problems


def _action(
    config: DestinationFilterConfig, random: Callable[[], float]
) -> tuple[_Action, Outcome]:
    if config.sample is not None:
        return _sampler(config.sample, random), "sampled_out"
    if config.drop_properties is not None:
        return _editor(config.drop_properties, allow=False), "dropped"
    if config.allow_properties is not None:
        return _editor(config.allow_properties, allow=True), "dropped"
    return (lambda _message, _owned: None), "dropped"  # drop, only_send


def _sampler(config: SampleConfig, random: Callable[[], float]) -> _Action:
    threshold = config.percent / 100
    path = split_path(config.path) if config.path is not None else None

    def sample(message: Message, _owned: _Owned) -> Message | None:
        value = _get(message, path) if path is not None else None
        if value is None and path is not None:
            value = message.get("messageId")
        if value is None:
            return message if random() < threshold else None
        # A fraction is below 1, so a 100 % sample keeps every event without hashing it.
        return message if threshold >= 1 or _fraction(value) < threshold else None

    return sample


def _fraction(value: Any) -> float:
    """Map ``value`` uniformly onto [0, 1) through md5; 53 bits, so 1.0 is never reached."""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True, separators=(",", ":"))
    )
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def _get(message: Message, path: tuple[str, ...]) -> Any:
    value: Any = message
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _editor(fields: Mapping[str, list[str]], *, allow: bool) -> _Action:
    plan = [
        (split_path(path) if path else (), _keys(frozenset(keys), allow=allow, top=not path))
        for path, keys in fields.items()
    ]

    def edit(message: Message, owned: _Owned) -> Message:
        for path, keys in plan:
            message = _retain(message, path, keys, allow, owned)
        return message

    return edit


def _keys(keys: frozenset[str], *, allow: bool, top: bool) -> frozenset[str]:
    """The keys to remove, or (``allow``) to keep: at the top, always the protected fields."""
    return keys | PROTECTED_FIELDS if allow and top else keys


def _retain(
    obj: Message, path: tuple[str, ...], keys: frozenset[str], allow: bool, owned: _Owned
) -> Message:
    """Return ``obj`` with the object at ``path`` cut to ``keys`` (``allow``) or without them.

    Copies ``obj`` and the objects on the way only when something is removed, and only those
    not already in ``owned``; a path that is missing or leads to a non-object changes nothing.
    """
    if path:
        child = obj.get(path[0])
        if not isinstance(child, dict):
            return obj
        edited = _retain(child, path[1:], keys, allow, owned)
        if edited is child:
            return obj
        obj = _own(obj, owned)
        obj[path[0]] = edited
        return obj
    removed = [k for k in obj if k not in keys] if allow else [k for k in keys if k in obj]
    if not removed:
        return obj
    obj = _own(obj, owned)
    for key in removed:
        del obj[key]
    return obj


def _own(obj: Message, owned: _Owned) -> Message:
    """``obj`` if this run copied it already, else a (C-level, order-keeping) copy of it."""
    if id(obj) in owned:
        return obj
    copy = dict(obj)
    owned[id(copy)] = copy
    return copy
