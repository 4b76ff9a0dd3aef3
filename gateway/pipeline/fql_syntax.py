"""FQL's syntax: tokens, the syntax tree and the parser (see :mod:`gateway.pipeline.fql`).

The tree is what both evaluators start from: the reference one in
:mod:`gateway.pipeline.fql_semantics` and the compiled one in :mod:`gateway.pipeline.fql_codegen`.
Every check that can be made without a message is made here, so a mistake is a startup error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import FqlSyntaxError

__all__ = [
    "FUNCTIONS",
    "Call",
    "Compare",
    "Glob",
    "InList",
    "InValues",
    "Literal",
    "Logic",
    "Node",
    "Not",
    "Path",
    "glob",
    "parse_tree",
]

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
_COMPARISONS = frozenset(("=", "!=", "<", "<=", ">", ">="))
_GLOB_PART = re.compile(
    r"(?P<stars>\*+)|(?P<any>\?)|\[(?P<negate>[!^]?)(?P<members>\]?[^\]]*)\]|(?P<char>.)", re.DOTALL
)

FUNCTIONS: dict[str, int] = {
    "contains": 2,
    "length": 1,
    "lowercase": 1,
    "uppercase": 1,
    "snakecase": 1,
    "typeof": 1,
    "match": 2,
    "exists": 1,
}
"""Each function's name and number of arguments."""


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: a string, number, boolean, null, or (``match``'s second argument) a regex."""

    value: Any


@dataclass(frozen=True, slots=True)
class Path:
    """A dotted field path from the top of the message, escapes already resolved."""

    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """``!operand``: true unless the operand is exactly true."""

    operand: Node


@dataclass(frozen=True, slots=True)
class Logic:
    """``and`` or ``or`` over two or more operands, stopping at the first that decides."""

    keyword: str
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """``left <op> right`` for one of ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class InList:
    """``left in [literal, ...]``."""

    left: Node
    choices: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class InValues:
    """``left in container``, where the container should be an array."""

    left: Node
    container: Node


@dataclass(frozen=True, slots=True)
class Call:
    """A function call; ``position`` is where its name starts, for error messages."""

    name: str
    position: int
    arguments: tuple[Node, ...]


Node = Literal | Path | Not | Logic | Compare | InList | InValues | Call


def parse_tree(text: str) -> Node:
    """Parse one FQL expression (not ``all``); raises FqlSyntaxError naming the position."""
    return _Parser(text).parse()


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "literal", "keyword", "path", "op" or "end"
    text: str  # as written, for messages and to tell a function name from an escaped path
    position: int
    value: Any = None


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
    """Recursive descent over the tokens; each rule returns a syntax tree node."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def parse(self) -> Node:
        if self._peek().kind == "end":
            raise FqlSyntaxError(self.text, 0, "empty expression")
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._error(token, f"unexpected {token.text!r} after a complete expression")
        return node

    def _or(self) -> Node:
        return self._chain("or", self._and)

    def _and(self) -> Node:
        return self._chain("and", self._comparison)

    def _chain(self, keyword: str, rule: Any) -> Node:
        operands: list[Node] = [rule()]
        while self._at("keyword", keyword):
            self.index += 1
            operands.append(rule())
        return operands[0] if len(operands) == 1 else Logic(keyword, tuple(operands))

    def _comparison(self) -> Node:
        left = self._unary()
        token = self._peek()
        if token.kind == "op" and token.text in _COMPARISONS:
            self.index += 1
            return Compare(token.text, left, self._unary())
        if not self._at("keyword", "in"):
            return left
        self.index += 1
        if self._at("op", "["):
            return InList(left, self._list())
        return InValues(left, self._unary())

    def _unary(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self._error(self._peek(), "expression nested too deeply")
        negate = self._at("op", "!")
        if negate:
            self.index += 1
        operand = self._unary() if negate else self._primary()
        self.depth -= 1
        return Not(operand) if negate else operand

    def _primary(self) -> Node:
        token = self._advance()
        if token.kind == "literal":
            return Literal(token.value)
        if token.kind == "op" and token.text == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if token.kind == "path":
            if self._at("op", "(") and len(token.value) == 1 and token.text == token.value[0]:
                return self._call(token)
            return Path(token.value)
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

    def _call(self, name: _Token) -> Node:
        if name.text not in FUNCTIONS:
            raise self._error(name, f"unknown function {name.text!r}")
        arity = FUNCTIONS[name.text]
        self._expect("(")
        arguments: list[Node] = []
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
        return Call(name.text, name.position, tuple(arguments))

    def _glob_argument(self, span: list[_Token]) -> Node:
        token = span[0]
        if len(span) != 1 or not isinstance(token.value, str) or token.kind != "literal":
            raise self._error(token, "match() takes a quoted glob pattern as its second argument")
        try:
            return Literal(glob(token.value))
        except re.error as exc:
            raise self._error(token, f"invalid glob pattern: {exc}") from exc

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


def glob(pattern: str) -> Glob:
    """Compile a glob (``*``, ``?``, ``[a-z]``, ``[!a-z]``) for whole-string matches.

    As in ``fnmatch``, an unclosed ``[`` is literal; string escapes are already consumed, so
    ``[*]`` matches a star. Raises re.error for an invalid class such as ``[z-a]``.
    """
    return Glob(pattern)


class Glob:
    """A compiled glob whose :meth:`fullmatch` never backtracks across stars.

    The parts between stars match one character per token, so each is a fixed-length regex: the
    first must match at the start, the last at the end, and the ones between are found leftmost
    in order (which is exact for globs). A regex with ``.*`` per star took time exponential in
    the number of stars (``a*a*a*a*b`` on 5,000 characters: hours; a fuzzing finding).
    """

    __slots__ = ("_head", "_middle", "_tail", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts: list[list[str]] = [[]]
        for match in _GLOB_PART.finditer(pattern):
            if match["stars"]:
                parts.append([])
            else:
                parts[-1].append(_glob_token(match))
        compiled = [(re.compile("".join(p), re.DOTALL), len(p)) for p in parts]
        self._head = compiled[0]
        self._tail = compiled[-1] if len(compiled) > 1 else None
        self._middle = [c for c in compiled[1:-1] if c[1]]

    def fullmatch(self, text: str) -> bool | None:
        """``True`` if the whole of ``text`` matches, else ``None`` (as ``re`` answers)."""
        head, head_length = self._head
        if self._tail is None:
            return True if head.fullmatch(text) else None
        tail, tail_length = self._tail
        end = len(text) - tail_length
        if end < head_length or not head.match(text) or not tail.fullmatch(text, end):
            return None
        position = head_length
        for part, _ in self._middle:
            found = part.search(text, position, end)
            if found is None:
                return None
            position = found.end()
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _glob_token(match: re.Match[str]) -> str:
    """One character's regex: ``?``, a literal, or a class (ranges checked, all escaped)."""
    if match["any"]:
        return "."
    if match["char"] is not None:
        return re.escape(match["char"])
    members, pieces, index = match["members"], [], 0
    while index < len(members):
        if index + 2 < len(members) and members[index + 1] == "-":
            low, high = members[index], members[index + 2]
            if low > high:
                raise re.error(f"bad character range {low}-{high}")
            pieces.append(f"{re.escape(low)}-{re.escape(high)}")
            index += 3
        else:
            pieces.append(re.escape(members[index]))
            index += 1
    if not pieces:
        raise re.error("an empty character class")
    return f"[{'^' if match['negate'] else ''}{''.join(pieces)}]"
