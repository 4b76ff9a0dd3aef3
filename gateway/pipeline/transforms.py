"""Transformations with Segment's semantics: rename, recompute, drop, allow and hash fields.

Transformations run in listing order (WIRE.md §4); each applies when its FQL condition ``if``
(default ``all``) matches the message as the transformations before it left it. Within one
transformation the actions run in this fixed order, whatever order the config lists them in:

1. ``drop``: drop the event; nothing else runs.
2. ``python``: a named transform a plugin registers (``register_transforms``), see
   :data:`Transform`.
3. ``new_event_name``: set ``event`` (track calls only).
4. ``property_renames``: ``{"old": "new"}``, moving the value to the new key.
5. ``property_value_transformations``: ``{"key": "<FQL>"}``, setting the key to the
   expression's value (``null`` included); every expression sees the message as step 4 left it.
6. ``drop_properties``: remove the keys.
7. ``allow_properties``: keep only the keys (``[]`` removes every key).
8. ``hash_properties``: replace each present, non-null value with the sha256 hex digest of its
   text: a string lowercased and stripped first (so ``" Jane@X.com"`` and ``"jane@x.com"`` hash
   alike, as Segment-style PII matching expects), anything else as compact sorted JSON.

Steps 4 to 7 name keys inside ``properties`` (track, page, screen) or ``traits`` (identify,
group); dotted paths (``address.city``, with ``\\`` escapes as in FQL) reach nested keys, and
missing objects on the way are created. They cannot reach top-level fields, so ids are never
renamed. ``hash_properties`` takes paths from the top of the message (``context.traits.email``).

Transformations fail closed: an FQL or Python error drops the event as ``transform_error``. The
input is never mutated. A transformation with a ``python`` transform or computed values works on a
deep copy (their code may reach anything), and every later one changes that copy in place; before
that, a transformation copies only the objects it changes (the message's top level, the
``properties`` or ``traits``, the objects on the way to a hashed value).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import ConfigError, FqlEvaluationError, FqlSyntaxError
from gateway.pipeline import fql
from gateway.pipeline.filters import split_path

__all__ = ["Transform", "TransformResult", "TransformationConfig", "Transformations"]

Message = dict[str, Any]
Path = tuple[str, ...]

Transform = Callable[[Message], Message | None]
"""A named transform: gets a deep copy of the message (it may change it in place) and returns the
new message (which eventgate then owns), or None to drop the event. An exception drops the event
as ``transform_error``. It runs on the event loop for every event it applies to, so it must be
fast and never block."""

Outcome = Literal["passed", "transformed", "dropped", "transform_error"]

# Where each call keeps the fields that renames, value transformations, drop and allow act on.
_CONTAINERS = {
    "track": "properties",
    "page": "properties",
    "screen": "properties",
    "identify": "traits",
    "group": "traits",
}
_ABSOLUTE_PREFIXES = frozenset({"properties", "traits", "context"})
# Hashing these would make a message the router can no longer identify.
_UNHASHABLE = frozenset({("type",), ("messageId",)})
_ACTIONS = (
    "drop",
    "python",
    "new_event_name",
    "property_renames",
    "property_value_transformations",
    "drop_properties",
    "allow_properties",
    "hash_properties",
)


class TransformationConfig(BaseModel):
    """One transformation: a ``name``, an FQL condition ``if`` and at least one action."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    if_: str = Field("all", alias="if")
    drop: bool = False
    python: str | None = Field(None, min_length=1)
    new_event_name: str | None = Field(None, min_length=1)
    property_renames: dict[str, str] = Field(default_factory=dict)
    property_value_transformations: dict[str, str] = Field(default_factory=dict)
    drop_properties: list[str] = Field(default_factory=list)
    allow_properties: list[str] | None = None
    hash_properties: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_actions(self) -> TransformationConfig:
        # allow_properties: [] is an action (keep nothing); an empty rename map is not.
        unset: tuple[Any, ...] = (None, False, {}, [])
        if self.allow_properties is None and all(getattr(self, a) in unset for a in _ACTIONS):
            raise ValueError(f"a transformation needs at least one of {', '.join(_ACTIONS)}")
        renames = self.property_renames
        _relative("property_renames", [*renames, *renames.values()])
        _relative("property_value_transformations", self.property_value_transformations)
        _relative("drop_properties", self.drop_properties)
        _relative("allow_properties", self.allow_properties or ())
        if len(set(renames.values())) < len(renames):
            raise ValueError("property_renames: two keys are renamed to the same name")
        if any(split_path(path) in _UNHASHABLE for path in self.hash_properties):
            raise ValueError("hash_properties cannot hash the top-level type or messageId")
        return self


def _relative(field: str, paths: Iterable[str]) -> None:
    for path in paths:
        if split_path(path)[0] in _ABSOLUTE_PREFIXES:
            raise ValueError(
                f"{field}: {path!r}: paths are relative to properties (track, page, screen) or"
                " traits (identify, group), so write 'plan', not 'properties.plan'; top-level"
                " fields such as userId or messageId cannot be changed here"
            )


class TransformResult(NamedTuple):
    """What the transformations made of one message.

    ``message`` is None when the event was dropped; ``rule`` names the transformation that
    dropped it; ``applied`` names those that ran to completion, in order; ``error`` says why a
    ``"transform_error"`` happened (never the payload).

    Immutable, built once per event: a NamedTuple costs a third of a frozen dataclass to build.
    """

    message: Message | None
    rule: str | None
    applied: tuple[str, ...]
    outcome: Outcome
    error: str | None = None


class _TransformError(Exception):
    """A named transform raised or returned something other than a message."""


@dataclass(frozen=True, slots=True)
class _Transformation:
    name: str
    condition: fql.Expression
    drop: bool
    python: Transform | None
    new_event_name: str | None
    renames: tuple[tuple[Path, Path], ...]
    values: tuple[tuple[Path, fql.Expression], ...]
    drop_paths: tuple[Path, ...]
    allow_paths: tuple[Path, ...] | None
    hash_paths: tuple[Path, ...]
    deep: bool  # steps 4 to 7 reach below the container's own keys: copy it deeply

    def run(self, message: Message, *, private: bool) -> Message | None:
        """Transform ``message``; return the result or None (drop).

        A ``private`` message (a deep copy no one else holds) is changed in place. Otherwise
        the input is left alone: a python transform or computed values get a deep copy (their
        code may reach anything), the other actions copy only the objects they change, and
        return ``message`` itself when they change nothing.
        """
        if self.drop:
            return None
        if private:
            return self._run_in_place(message)
        if self.python is not None or self.values:
            return self._run_in_place(_clone(message))
        return self._run_copying(message)

    def _run_in_place(self, message: Message) -> Message | None:
        if self.python is not None:
            result = self._call_python(message)
            if result is None:
                return None
            message = result
        if self.new_event_name is not None and message.get("type") == "track":
            message["event"] = self.new_event_name
        key = _container_key(message)
        if key is not None and self._edits:
            if message.get(key) is None and self.values:
                message[key] = {}
            container = message.get(key)
            if isinstance(container, dict):
                self._edit(message, container)
        for path in self.hash_paths:
            parent = _parent(message, path)
            if parent is not None and parent.get(path[-1]) is not None:
                parent[path[-1]] = _digest(parent[path[-1]])
        return message

    def _run_copying(self, message: Message) -> Message:
        """:meth:`_run_in_place` for a transformation without ``python`` or computed values,
        copying the objects it changes (``message`` itself, if it changes nothing)."""
        out = message
        name = self.new_event_name
        if name is not None and message.get("type") == "track":
            event = message.get("event")
            if type(event) is not str or event != name:
                out = {**message, "event": name}
        key = _container_key(out)
        container = out.get(key) if key is not None and self._edits else None
        if key is not None and isinstance(container, dict):
            out = dict(out) if out is message else out
            container = out[key] = _clone(container) if self.deep else dict(container)
            self._edit(out, container)
        for path in self.hash_paths:
            parent = _parent(out, path)
            if parent is None or parent.get(path[-1]) is None:
                continue  # nothing to hash: nothing to copy
            out = dict(out) if out is message else out
            parent = _copied_parent(out, path)
            assert parent is not None  # the same walk as above, through copies
            parent[path[-1]] = _digest(parent[path[-1]])
        return out

    @property
    def _edits(self) -> bool:
        """Whether steps 4 to 7 have anything to do."""
        return bool(self.values or self.renames or self.drop_paths) or self.allow_paths is not None

    def _edit(self, message: Message, container: Message) -> None:
        """Steps 4 to 7, in place, on ``message``'s ``properties`` or ``traits``."""
        for old, new in self.renames:
            _move(container, old, new)
        computed = [(path, expression.value(message)) for path, expression in self.values]
        for path, value in computed:
            if (parent := _parent(container, path, create=True)) is not None:
                parent[path[-1]] = value
        for path in self.drop_paths:
            if (parent := _parent(container, path)) is not None:
                parent.pop(path[-1], None)
        if self.allow_paths is not None:
            kept = _pick(container, self.allow_paths)
            container.clear()
            container.update(kept)

    def _call_python(self, message: Message) -> Message | None:
        assert self.python is not None
        try:
            result = self.python(message)
        except Exception as exc:  # a plugin's bug drops one event, not the router
            # Only the type: the exception text may quote the payload.
            raise _TransformError(f"python transform raised {type(exc).__name__}") from exc
        if result is not None and not isinstance(result, dict):
            kind = type(result).__name__
            raise _TransformError(f"python transform returned {kind}; return a dict or None")
        return result


@dataclass(frozen=True, slots=True)
class Transformations:
    """A scope's compiled transformations, in listing order; build with :meth:`compile`."""

    _transformations: tuple[_Transformation, ...]

    @classmethod
    def compile(
        cls,
        configs: Sequence[TransformationConfig],
        named: Mapping[str, Transform] | None = None,
    ) -> Transformations:
        """Parse every FQL expression and resolve ``python`` names against ``named``.

        Raises:
            ConfigError: two transformations with one name, FQL that does not parse (with the
                transformation's name and the position), or an unknown ``python`` name (with
                the names available).
        """
        named = named or {}
        names = [config.name for config in configs]
        problems = [
            f"two transformations are named {name!r}; give each a unique name"
            for i, name in enumerate(names)
            if name in names[:i]
        ]
        compiled = [_compile(config, named, problems) for config in configs]
        if problems:
            raise ConfigError(problems)
        return cls(tuple(t for t in compiled if t is not None))

    def apply(self, message: Message) -> TransformResult:
        """Run the transformations on ``message``; if none applies, return the same object."""
        current = message
        private = False  # whether current is a deep copy of its own, to change in place
        applied: list[str] = []
        for t in self._transformations:
            try:
                if not t.condition.matches(current):
                    continue
                result = t.run(current, private=private)
            except (FqlEvaluationError, _TransformError, RecursionError) as exc:
                # Fail closed: an event we cannot transform must not go out untransformed.
                return TransformResult(None, t.name, tuple(applied), "transform_error", str(exc))
            if result is None:
                return TransformResult(None, t.name, tuple(applied), "dropped")
            current = result
            private = private or t.python is not None or bool(t.values)
            applied.append(t.name)
        return TransformResult(
            current, None, tuple(applied), "transformed" if applied else "passed"
        )


def _compile(
    config: TransformationConfig, named: Mapping[str, Transform], problems: list[str]
) -> _Transformation | None:
    """Compile one transformation, or append what is wrong with it to ``problems``."""
    where = f"transformation {config.name!r}"
    python = named.get(config.python) if config.python is not None else None
    if config.python is not None and python is None:
        available = ", ".join(sorted(named)) or "none (no installed plugin registers any)"
        problems.append(
            f"{where}: python: no transform is named {config.python!r}; available: {available}"
        )
    condition = _parse(config.if_, f"{where}: if", problems)
    values = [
        (split_path(key), _parse(text, f"{where}: property_value_transformations.{key}", problems))
        for key, text in config.property_value_transformations.items()
    ]
    parsed = [(path, expression) for path, expression in values if expression is not None]
    if condition is None or len(parsed) < len(values) or (config.python and python is None):
        return None  # what is wrong is in problems
    return _Transformation(
        name=config.name,
        condition=condition,
        drop=config.drop,
        python=python,
        new_event_name=config.new_event_name,
        renames=tuple(
            (split_path(old), split_path(new)) for old, new in config.property_renames.items()
        ),
        values=tuple(parsed),
        drop_paths=tuple(map(split_path, config.drop_properties)),
        allow_paths=None
        if config.allow_properties is None
        else tuple(map(split_path, config.allow_properties)),
        hash_paths=tuple(map(split_path, config.hash_properties)),
        deep=any(
            len(split_path(path)) > 1
            for path in [
                *config.property_renames,
                *config.property_renames.values(),
                *config.drop_properties,
                *(config.allow_properties or ()),
            ]
        ),
    )


def _parse(text: str, where: str, problems: list[str]) -> fql.Expression | None:
    try:
        return fql.parse(text)
    except FqlSyntaxError as exc:
        problems.append(f"{where}: {exc.problems[0]}")
        return None


def _container_key(message: Message) -> str | None:
    """Where ``message``'s type keeps what steps 4 to 7 act on: ``properties``, ``traits``."""
    kind = message.get("type")
    return _CONTAINERS.get(kind) if isinstance(kind, str) else None


def _parent(obj: Message, path: Path, *, create: bool = False) -> Message | None:
    """The object holding ``path``'s last key, or None when a non-object is in the way.

    With ``create``, missing (or null) objects on the way are added. A non-object can only be
    met before the first one added, so a failed walk leaves ``obj`` as it was.
    """
    for key in path[:-1]:
        child = obj.get(key)
        if child is None and create:
            child = obj[key] = {}
        if not isinstance(child, dict):
            return None
        obj = child
    return obj


def _copied_parent(obj: Message, path: Path) -> Message | None:
    """Like :func:`_parent`, replacing each object on the way with a shallow copy of it."""
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            return None
        copy = obj[key] = dict(child)
        obj = copy
    return obj


def _move(container: Message, old: Path, new: Path) -> None:
    source = _parent(container, old)
    if source is None or old[-1] not in source:
        return
    value = source.pop(old[-1])
    target = _parent(container, new, create=True)
    if target is None:  # a non-object is in the way of the new name: keep the old one
        source[old[-1]] = value
    else:
        target[new[-1]] = value


def _pick(container: Message, paths: Iterable[Path]) -> Message:
    """A new object holding only the values at ``paths`` that ``container`` has."""
    kept: Message = {}
    for path in paths:
        source = _parent(container, path)
        if source is not None and path[-1] in source:
            target = _parent(kept, path, create=True)
            if target is not None:
                target[path[-1]] = source[path[-1]]
    return kept


def _digest(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip().lower()
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _clone(value: Any) -> Any:
    """Deep-copy a JSON value: an orjson round trip, twice as fast as a recursive copy (and far
    faster than copy.deepcopy). A value orjson cannot encode is copied recursively."""
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return _copy(value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value
