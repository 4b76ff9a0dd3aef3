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

Three private modules do the work: :mod:`~gateway.pipeline.fql_syntax` parses the text into a
tree, :mod:`~gateway.pipeline.fql_semantics` says what values mean and holds the reference
evaluator, and :mod:`~gateway.pipeline.fql_codegen` compiles the tree into one Python function,
which is what runs per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.pipeline.fql_codegen import compile_tree
from gateway.pipeline.fql_semantics import Evaluator, evaluator
from gateway.pipeline.fql_syntax import parse_tree

__all__ = ["Evaluator", "Expression", "parse"]


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

    @property
    def evaluator(self) -> Evaluator | None:
        """The function :meth:`value` calls, for loops that call it per event; None for ``all``
        (always true), so they can skip it."""
        return None if self.text.strip() == "all" else self._evaluate


def parse(text: str) -> Expression:
    """Compile one FQL expression; raises FqlSyntaxError naming the 0-based position at fault."""
    if text.strip() == "all":
        return Expression(text, lambda _message: True)
    tree = parse_tree(text)
    reference = evaluator(tree, text)
    return Expression(text, compile_tree(tree, text, reference) or reference)
