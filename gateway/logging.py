"""Logging in one place: structlog, JSON off a TTY, console on one, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redact"]

_SECRET_KEYS = re.compile(r"(key|secret|token|password|authorization|credential)", re.IGNORECASE)
_SECRET_VALUES = re.compile(r"(whsec_|sk_)[A-Za-z0-9+/=_-]+")


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: hide values of secret-looking keys and secret-shaped strings."""
    for key, value in event_dict.items():
        if _SECRET_KEYS.search(key) and key != "event":
            event_dict[key] = "[REDACTED]"
        elif isinstance(value, str) and ("whsec_" in value or "sk_" in value):
            event_dict[key] = _SECRET_VALUES.sub(r"\1[REDACTED]", value)
    return event_dict


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog (and the stdlib root logger) for the whole process.

    ``json`` defaults to JSON lines unless stderr is a TTY.
    """
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
