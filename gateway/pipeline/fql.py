"""Segment's Filter Query Language (FQL): parse once at startup, evaluate per event (WIRE.md §4).

The subset: dotted field paths and quoted strings (in both, ``\\`` takes the next character
literally), numbers, ``true``, ``false``, ``null``, ``=`` and ``!=`` (strict: no type coercion),
``<`` ``<=`` ``>`` ``>=`` (numbers only, otherwise false), ``in``, ``!``, ``and``, ``or``,
parentheses and the functions ``contains, length, lowercase, uppercase, snakecase, typeof, match,
exists``. ``match`` takes a quoted pattern, compiled here once; ``exists`` takes a field path.
Precedence, tightest first: ``!``, comparison, ``and``, ``or``; so ``!a = b`` is ``(!a) = b`` and
``!(a in [...])`` needs its parentheses. The whole text ``all`` is always true, as in Segment's
``"if": "all"``.

A value counts as true only when it is exactly boolean ``true``: a bare path holding ``1`` or
``"yes"`` does not match, and ``!`` of anything but ``true`` is true. Comparisons and ``in`` on
values of the wrong type are false; a function given a type it cannot work on (``lowercase(5)``)
raises :class:`~gateway.errors.FqlEvaluationError`, so callers fail closed.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

from gateway.errors import FqlEvaluationError, FqlSyntaxError

__all__ = ["Expression", "parse"]

Evaluator = Callable[[Mapping[str, Any]], Any]

# Each level costs a handful of Python frames while parsing and evaluating; real filters nest
# two or three deep, and a bound keeps hostile input a syntax error instead of a RecursionError.
_MAX_DEPTH = 64
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string> "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' )
    | (?P<number> -?[0-9]+ (?:\.[0-9]+)? (?:[eE][+-]?[0-9]+)? )
    | (?P<path> (?:[A-Za-z_$]|\\.) (?:[A-Za-z0-9_$]|\\.)* (?:\.(?:[A-Za-z0-9_$]|\\.)+)* )
    | (?P<op> != | <= | >= | [=<>!()\[\],] )
    )""",
    re.VERBOSE | re.DOTALL,
)
_PATH_SEGMENT = re.compile(r"(?:\\.|[^.\\])+", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_KEYWORDS = frozenset(("and", "or", "in"))
_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}
# bool before number: in Python, True is an int.
_KINDS: tuple[tuple[str, type | UnionType], ...] = (
    ("null", type(None)),
    ("boolean", bool),
    ("number", int | float),
    ("string", str),
    ("object", Mapping),
    ("array", list | tuple),
)
_GLOB_PART = re.compile(
    r"(?P<stars>\*+)|(?P<any>\?)|\[(?P<negate>[!^]?)(?P<members>\]?[^\]]*)\]|(?P<char>.)", re.DOTALL
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s._-]+")


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed FQL expression: its source ``text`` and compiled evaluator; see :func:`parse`."""

    text: str
    _evaluate: Evaluator = field(repr=False, compare=False)

    def matches(self, message: Mapping[str, Any]) -> bool:
        """Return whether the expression's value for ``message`` is exactly ``true``.

        Raises FqlEvaluationError when the expression cannot be evaluated for this message.
        """
        return self._evaluate(message) is True

    def value(self, message: Mapping[str, Any]) -> Any:
        """Return the expression's value for ``message`` (any JSON value; a missing path is None).

        Raises FqlEvaluationError when the expression cannot be evaluated for this message.
        """
        return self._evaluate(message)


def parse(text: str) -> Expression:
    """Compile one FQL expression; raises FqlSyntaxError naming the 0-based position at fault."""
    if text.strip() == "all":
        return Expression(text, lambda _message: True)
    return Expression(text, _Parser(text).parse())


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "literal", "keyword", "path", "op" or "end"
    text: str  # as written, for messages and to tell a function name from an escaped path
    position: int
    value: Any = None


class _WrongTypeError(Exception):
    """A function got a value it cannot work on; its call site raises FqlEvaluationError."""


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while (match := _TOKEN.match(text, index)) and match.lastgroup:
        kind, index = match.lastgroup, match.end()
        raw, start = match[kind], match.start(kind)
        if kind == "string":
            tokens.append(_Token("literal", raw, start, _ESCAPE.sub(r"\1", raw[1:-1])))
        elif kind == "number":
            try:
                number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError as exc:  # Python refuses int literals over 4300 digits
                raise FqlSyntaxError(text, start, "number too long") from exc
            tokens.append(_Token("literal", raw, start, number))
        elif raw in _KEYWORDS:
            tokens.append(_Token("keyword", raw, start))
        elif raw in _CONSTANTS:
            tokens.append(_Token("literal", raw, start, _CONSTANTS[raw]))
        elif kind == "path":
            segments = tuple(_ESCAPE.sub(r"\1", s) for s in _PATH_SEGMENT.findall(raw))
            tokens.append(_Token("path", raw, start, segments))
        else:
            tokens.append(_Token("op", raw, start))
    index = len(text) - len(text[index:].lstrip())
    if index < len(text):
        char = text[index]
        problem = "unterminated string" if char in "'\"" else f"unexpected character {char!r}"
        raise FqlSyntaxError(text, index, problem)
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the tokens; each rule returns a closure over the message."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def parse(self) -> Evaluator:
        if self._peek().kind == "end":
            raise FqlSyntaxError(self.text, 0, "empty expression")
        evaluate = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._error(token, f"unexpected {token.text!r} after a complete expression")
        return evaluate

    def _or(self) -> Evaluator:
        return self._chain("or", self._and, any)

    def _and(self) -> Evaluator:
        return self._chain("and", self._comparison, all)

    def _chain(
        self, keyword: str, rule: Callable[[], Evaluator], combine: Callable[[Any], bool]
    ) -> Evaluator:
        operands = [rule()]
        while self._at("keyword", keyword):
            self.index += 1
            operands.append(rule())
        if len(operands) == 1:
            return operands[0]
        return lambda message: combine(operand(message) is True for operand in operands)

    def _comparison(self) -> Evaluator:
        left = self._unary()
        token = self._peek()
        if token.kind == "op" and token.text in _COMPARISONS:
            self.index += 1
            test, right = _COMPARISONS[token.text], self._unary()
            return lambda message: test(left(message), right(message))
        if not self._at("keyword", "in"):
            return left
        self.index += 1
        if self._at("op", "["):
            choices = self._list()
            return lambda message: any(_same(left(message), c) for c in choices)
        container = self._unary()

        def member_of(message: Mapping[str, Any]) -> bool:
            values = container(message)
            return isinstance(values, list | tuple) and any(_same(left(message), v) for v in values)

        return member_of

    def _unary(self) -> Evaluator:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self._error(self._peek(), "expression nested too deeply")
        negate = self._at("op", "!")
        if negate:
            self.index += 1
        operand = self._unary() if negate else self._primary()
        self.depth -= 1
        return (lambda message: operand(message) is not True) if negate else operand

    def _primary(self) -> Evaluator:
        token = self._advance()
        if token.kind == "literal":
            value = token.value
            return lambda _message: value
        if token.kind == "op" and token.text == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if token.kind == "path":
            if self._at("op", "(") and len(token.value) == 1 and token.text == token.value[0]:
                return self._call(token)
            return _getter(token.value)
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        raise self._error(token, f"expected a value, found {found}")

    def _list(self) -> tuple[Any, ...]:
        self._expect("[")
        values: list[Any] = []
        while self._more("]", first=not values):
            token = self._advance()
            if token.kind != "literal":
                raise self._error(token, "expected a literal in the list")
            values.append(token.value)
        self._expect("]")
        return tuple(values)

    def _call(self, name: _Token) -> Evaluator:
        if name.text not in _FUNCTIONS:
            raise self._error(name, f"unknown function {name.text!r}")
        arity, implementation = _FUNCTIONS[name.text]
        self._expect("(")
        arguments: list[Evaluator] = []
        spans: list[list[_Token]] = []  # each argument's tokens, for checks on their shape
        while self._more(")", first=not arguments):
            start = self.index
            arguments.append(self._or())
            spans.append(self.tokens[start : self.index])
        self._expect(")")
        if len(arguments) != arity:
            plural = "s" if arity > 1 else ""
            message = f"{name.text}() takes {arity} argument{plural}, got {len(arguments)}"
            raise self._error(name, message)
        if name.text == "exists" and (len(spans[0]) != 1 or spans[0][0].kind != "path"):
            raise self._error(spans[0][0], "exists() takes a field path")
        if name.text == "match":
            arguments[1] = self._glob_argument(spans[1])

        text = self.text

        def call(message: Mapping[str, Any]) -> Any:
            try:
                return implementation(*[argument(message) for argument in arguments])
            except _WrongTypeError as exc:
                where = f"{name.text}() at position {name.position}"
                raise FqlEvaluationError(f"{where} {exc} (in: {text})") from exc

        return call

    def _glob_argument(self, span: list[_Token]) -> Evaluator:
        token = span[0]
        if len(span) != 1 or not isinstance(token.value, str) or token.kind != "literal":
            raise self._error(token, "match() takes a quoted glob pattern as its second argument")
        try:
            pattern = _glob(token.value)
        except re.error as exc:
            raise self._error(token, f"invalid glob pattern: {exc}") from exc
        return lambda _message: pattern

    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def _at(self, kind: str, text: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == kind and token.text == text

    def _more(self, closer: str, *, first: bool) -> bool:
        """Whether another item of a bracketed list follows; consumes the ',' before it."""
        if self._at("op", closer):
            return False
        if not first:
            if not self._at("op", ","):
                raise self._error(self._peek(), f"expected ',' or {closer!r}")
            self.index += 1
        return True

    def _expect(self, op: str) -> None:
        if not self._at("op", op):
            raise self._error(self._peek(), f"expected {op!r}")
        self.index += 1

    def _error(self, token: _Token, message: str) -> FqlSyntaxError:
        return FqlSyntaxError(self.text, token.position, message)


def _getter(segments: tuple[str, ...]) -> Evaluator:
    def evaluate(message: Mapping[str, Any]) -> Any:
        value: Any = message
        for key in segments:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    return evaluate


def _kind(value: Any) -> str:
    """Name ``value``'s JSON type the way ``typeof`` does."""
    for kind, types in _KINDS:
        if isinstance(value, types):
            return kind
    raise FqlEvaluationError(f"cannot evaluate a {type(value).__name__}: not a JSON value")


def _same(left: Any, right: Any) -> bool:
    """Strict equality: JSON types must agree, so ``1 != '1'`` and, unlike Python, ``true != 1``."""
    kind = _kind(left)
    if kind != _kind(right):
        return False
    if kind == "array":
        return len(left) == len(right) and all(map(_same, left, right))
    if kind == "object":
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return bool(left == right)


def _numeric(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    return lambda left, right: _kind(left) == _kind(right) == "number" and test(left, right)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": _same,
    "!=": lambda left, right: not _same(left, right),
    "<": _numeric(operator.lt),
    "<=": _numeric(operator.le),
    ">": _numeric(operator.gt),
    ">=": _numeric(operator.ge),
}


def _string_or_null(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _WrongTypeError(f"expects a string or null, got {_kind(value)}")
    return value


def _contains(haystack: Any, needle: Any) -> bool:
    haystack, needle = _string_or_null(haystack), _string_or_null(needle)
    return haystack is not None and needle is not None and needle in haystack


def _length(value: Any) -> int:
    if _kind(value) in ("number", "boolean"):
        raise _WrongTypeError(f"expects a string, array, object or null, got {_kind(value)}")
    return 0 if value is None else len(value)


def _transform(value: Any, transform: Callable[[str], str]) -> str | None:
    text = _string_or_null(value)
    return None if text is None else transform(text)


def _snakecase(text: str) -> str:
    """Split lower-to-upper camelCase boundaries, join runs of ``space . - _`` with ``_``, lower.

    So ``sampleText`` -> ``sample_text``, ``CStringRef`` -> ``cstring_ref``, ``2FA Enabled`` ->
    ``2fa_enabled``; capital runs stay one word, and leading or trailing separators stay ``_``.
    """
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", text)).lower()


def _match(value: Any, pattern: re.Pattern[str]) -> bool:
    text = _string_or_null(value)
    return text is not None and pattern.fullmatch(text) is not None


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """Translate a glob (``*``, ``?``, ``[a-z]``, ``[!a-z]``) to a regex for a whole-string match.

    As in ``fnmatch``, an unclosed ``[`` is literal; string escapes are already consumed, so
    ``[*]`` matches a star. Raises re.error for an invalid class such as ``[z-a]``.
    """
    return re.compile(_GLOB_PART.sub(_glob_part, pattern), re.DOTALL)


def _glob_part(match: re.Match[str]) -> str:
    if match["stars"]:  # a run of stars is one: repeats only add backtracking
        return ".*"
    if match["any"]:
        return "."
    if match["char"] is not None:
        return re.escape(match["char"])
    members = "".join(c if c == "-" else re.escape(c) for c in match["members"])
    return f"[{'^' if match['negate'] else ''}{members}]"


_FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "contains": (2, _contains),
    "length": (1, _length),
    "lowercase": (1, lambda value: _transform(value, str.lower)),
    "uppercase": (1, lambda value: _transform(value, str.upper)),
    "snakecase": (1, lambda value: _transform(value, _snakecase)),
    "typeof": (1, _kind),
    "match": (2, _match),
    "exists": (1, lambda value: value is not None),
}
