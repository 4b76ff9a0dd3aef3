"""The one home of eventgate's exceptions; each name says what happens next."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "EventRejectedError",
    "EventgateError",
    "FqlEvaluationError",
    "FqlSyntaxError",
    "PermanentDeliveryError",
    "RequestRejectedError",
    "RetryableDeliveryError",
    "StorageFullError",
    "StorageUnavailableError",
]


class EventgateError(Exception):
    """Base of every error eventgate raises on purpose."""


class ConfigError(EventgateError):
    """The configuration cannot be used; raised at startup, never per event.

    ``problems`` holds one line per problem: file, key path, what is wrong and what would be valid.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class RequestRejectedError(EventgateError):
    """A whole ingress request is refused; becomes ``{"success": false, "code", "message"}``."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after_s: int | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        super().__init__(f"{status} {code}: {message}")


class EventRejectedError(EventgateError):
    """One event of a request is refused; reported per event in the response, the rest kept."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class StorageFullError(EventgateError):
    """The durable log is at its disk quota; ingress answers 503 with ``Retry-After``."""


class StorageUnavailableError(EventgateError):
    """The durable log cannot take writes right now; ingress answers 503 with ``Retry-After``."""


class DeliveryError(EventgateError):
    """Base of what a destination raises (or returns per event) when a delivery failed.

    ``request`` and ``response`` are short human-readable samples of what was sent and what came
    back; the router keeps them with dead letters. They must not contain secrets.
    """

    retryable: bool = False

    def __init__(
        self, reason: str, *, request: str | None = None, response: str | None = None
    ) -> None:
        self.reason = reason
        self.request = request
        self.response = response
        super().__init__(reason)


class RetryableDeliveryError(DeliveryError):
    """The delivery may succeed later; the router schedules a retry.

    ``retry_after_s`` is the destination's own hint (e.g. ``Retry-After``), honoured within the
    destination's configured bounds.
    """

    retryable = True

    def __init__(
        self,
        reason: str,
        *,
        retry_after_s: float | None = None,
        request: str | None = None,
        response: str | None = None,
    ) -> None:
        super().__init__(reason, request=request, response=response)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """Retrying will not help; the router dead-letters the event with this reason."""


class FqlSyntaxError(ConfigError):
    """An FQL expression in the configuration cannot be parsed; raised at startup.

    ``position`` is the 0-based character offset of the problem in ``expression``.
    """

    def __init__(self, expression: str, position: int, message: str) -> None:
        self.expression = expression
        self.position = position
        super().__init__([f"FQL syntax error at position {position}: {message} (in: {expression})"])


class FqlEvaluationError(EventgateError):
    """An FQL expression cannot be evaluated for one event (e.g. ``lowercase(5)``).

    Callers fail closed: the event is dropped and counted, never delivered unfiltered.
    """
