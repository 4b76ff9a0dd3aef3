"""The durable event log: every accepted event is here before its request is acknowledged."""

from gateway.log.base import DeadLetter, EventLog, PendingRetry, ReadResult
from gateway.log.sqlite import SqliteEventLog

__all__ = ["DeadLetter", "EventLog", "PendingRetry", "ReadResult", "SqliteEventLog"]
