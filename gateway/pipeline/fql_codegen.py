"""FQL compiled to one Python function per expression, for the per-event hot path.

:func:`compile_tree` writes the source of a function equivalent to the reference evaluator of
:mod:`gateway.pipeline.fql_semantics` and compiles it once. Each operation gets a fast path for
the exact types JSON decodes to (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``,
``None``); any other value falls through to the reference helpers, which decide what it means
and word the errors. So the compiled form is the reference evaluator with the per-event function
calls and type dispatch taken out, which ``tests/pipeline/test_fql_codegen.py`` checks on
generated expressions and messages.

Temporaries are bound with ``:=`` so each operand is evaluated once, in the reference's order.
No text from the expression reaches the source: every constant, key and helper is a name bound
in the function's globals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.pipeline.fql_semantics import (
    COMPARISONS,
    Evaluator,
    at_call_site,
    in_choices,
    in_values,
    lookup,
    same,
)
from gateway.pipeline.fql_syntax import (
    Call,
    Compare,
    Glob,
    InList,
    InValues,
    Literal,
    Logic,
    Node,
    Not,
    Path,
)

__all__ = ["compile_tree"]

# Longer paths are walked by a helper: each inline step nests the source one level deeper.
_MAX_INLINE_PATH = 6
_NUMBER = frozenset((int, float))
_KIND_OF = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    dict: "object",
    list: "array",
}
_ORDER = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _get(value: Any, key: str) -> Any:
    """One step of a path from a value that is not a plain dict (the reference's rule)."""
    return value.get(key) if isinstance(value, Mapping) else None


def compile_tree(node: Node, text: str, reference: Evaluator) -> Evaluator | None:
    """A compiled evaluator for ``node`` (parsed from ``text``), or None if Python refuses it.

    ``reference`` evaluates messages that are not plain dicts. Python's compiler limits nesting
    (about 200 parentheses deep), so a deeply nested expression may not compile; the caller
    then keeps the reference evaluator.
    """
    writer = _Writer(text)
    body = writer.expression(node)
    writer.names["_reference"] = reference
    source = (
        "def _fql(m):\n"
        "    if m.__class__ is not dict:\n"
        "        return _reference(m)\n"
        f"    return {body}\n"
    )
    try:
        code = compile(source, "<fql>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    exec(code, writer.names)  # noqa: S102 - our own source; no text from the expression is in it
    compiled: Evaluator = writer.names["_fql"]
    return compiled


class _Writer:
    """Writes the Python expression for each node, binding what it needs in ``names``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.names: dict[str, Any] = {
            "_get": _get,
            "_lookup": lookup,
            "_same": same,
            "_in_choices": in_choices,
            "_in_values": in_values,
            "_NUMBER": _NUMBER,
            "_KIND_OF": _KIND_OF,
            **{f"_order{i}": COMPARISONS[op] for i, op in enumerate(_ORDER)},
        }
        self.temps = 0

    def constant(self, value: Any) -> str:
        if value is None or value is True or value is False:
            return repr(value)
        name = f"_k{len(self.names)}"
        self.names[name] = value
        return name

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps}"

    def expression(self, node: Node) -> str:
        """A parenthesised (or atomic) Python expression with ``node``'s value in message ``m``."""
        if isinstance(node, Literal):
            return self.constant(node.value)
        if isinstance(node, Path):
            return self.path(node.segments)
        if isinstance(node, Not):
            return f"({self.expression(node.operand)} is not True)"
        if isinstance(node, Logic):
            joined = f" {node.keyword} ".join(
                f"{self.expression(o)} is True" for o in node.operands
            )
            return f"({joined})"
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, InList):
            return self.in_list(node)
        if isinstance(node, InValues):
            t = self.temp()
            container = self.expression(node.container)
            left = self.expression(node.left)
            # The reference judges the left side only against an array with items.
            array = f"isinstance(({t} := {container}), (list, tuple)) and {t}"
            return f"(_in_values({left}, {t}) if ({array}) else False)"
        return self.call(node)

    def path(self, segments: tuple[str, ...]) -> str:
        if len(segments) > _MAX_INLINE_PATH:
            return f"_lookup(m, {self.constant(segments)})"
        code = f"m.get({self.constant(segments[0])})"
        for key in segments[1:]:
            t, k = self.temp(), self.constant(key)
            code = f"({t}.get({k}) if ({t} := {code}).__class__ is dict else _get({t}, {k}))"
        return code

    def compare(self, node: Compare) -> str:
        if node.op in ("=", "!="):
            equal = self.equal(node.left, node.right)
            return equal if node.op == "=" else f"(not {equal})"
        test = f"_order{list(_ORDER).index(node.op)}"
        a, b = self.temp(), self.temp()
        left, right = self.expression(node.left), self.expression(node.right)
        if _is_number(node.right):
            fast = f"({a} := {left}).__class__ in _NUMBER"
            return f"({a} {node.op} {right} if {fast} else {test}({a}, {right}))"
        fast = f"(({a} := {left}).__class__ in _NUMBER) & (({b} := {right}).__class__ in _NUMBER)"
        return f"({a} {node.op} {b} if {fast} else {test}({a}, {b}))"

    def equal(self, left: Node, right: Node) -> str:
        """Strict equality; fast when one side is a literal and the other has its exact type."""
        for this, other, literal_on_left in ((left, right, True), (right, left, False)):
            if not isinstance(this, Literal) or isinstance(other, Literal):
                continue
            value, t = this.value, self.temp()
            c, code = self.constant(value), self.expression(other)
            slow = f"_same({c}, {t})" if literal_on_left else f"_same({t}, {c})"
            if value is None:
                return f"(True if ({t} := {code}) is None else {slow})"
            if isinstance(value, bool):
                classes = "is bool"
            elif isinstance(value, str):
                classes = "is str"
            elif isinstance(value, int | float):
                classes = "in _NUMBER"
            else:
                break
            return f"({t} == {c} if ({t} := {code}).__class__ {classes} else {slow})"
        return f"_same({self.expression(left)}, {self.expression(right)})"

    def in_list(self, node: InList) -> str:
        if not node.choices:
            return "False"  # the reference never evaluates the left side
        choices = self.constant(node.choices)
        left = self.expression(node.left)
        if not all(type(c) is str for c in node.choices):
            return f"_in_choices({left}, {choices})"
        t, strings = self.temp(), self.constant(frozenset(node.choices))
        slow = f"({t} is not None and _in_choices({t}, {choices}))"  # null is not a string
        return f"({t} in {strings} if ({t} := {left}).__class__ is str else {slow})"

    def call(self, node: Call) -> str:
        site = self.constant(at_call_site(node, self.text))
        arguments = [self.expression(a) for a in node.arguments]
        t = self.temp()
        fast = f"({t} := {arguments[0]}).__class__ is str"
        name = node.name
        if name == "exists":
            return f"({arguments[0]} is not None)"
        if name in ("lowercase", "uppercase"):
            method = "lower" if name == "lowercase" else "upper"
            return f"({t}.{method}() if {fast} else {site}({t}))"
        if name == "length":
            sized = f"({t} := {arguments[0]}).__class__ in (str, list, dict)"
            return f"(len({t}) if {sized} else {site}({t}))"
        if name == "typeof":
            return f"(_KIND_OF.get(({t} := {arguments[0]}).__class__) or {site}({t}))"
        if name == "match":
            pattern = node.arguments[1]
            assert isinstance(pattern, Literal)
            test = self.constant(_glob_test(pattern.value))
            return f"({test}({t}) is not None if {fast} else {site}({t}, {arguments[1]}))"
        if name == "contains":
            needle = node.arguments[1]
            if isinstance(needle, Literal) and type(needle.value) is str:
                return f"({arguments[1]} in {t} if {fast} else {site}({t}, {arguments[1]}))"
            b = self.temp()
            both = f"({fast}) & (({b} := {arguments[1]}).__class__ is str)"
            return f"({b} in {t} if {both} else {site}({t}, {b}))"
        return f"{site}({', '.join(arguments)})"


def _glob_test(glob: Glob) -> Callable[[str], object]:
    """The glob's whole-string test (linear in the text; see :class:`fql_syntax.Glob`)."""
    return glob.fullmatch


def _is_number(node: Node) -> bool:
    return isinstance(node, Literal) and type(node.value) in _NUMBER
