"""Deletion requests, carried out: each destination that can forget a user is asked to.

The router process runs one :class:`DeletionWorker`. It polls the control store for due steps
(one per request and destination), calls ``Destination.delete_user`` where the type supports
it, and records the outcome: ``done`` (with what was deleted), ``unsupported`` (the type keeps
no per-user data it can delete, e.g. ``file``), ``pending`` again after a retryable failure
(with backoff), or ``failed`` after ``MAX_ATTEMPTS`` or a permanent error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import structlog

from gateway.control import ControlStore, DeletionStep
from gateway.destination import Destination
from gateway.errors import DeliveryError

__all__ = ["MAX_ATTEMPTS", "DeletionWorker"]

log = structlog.get_logger("eventgate.privacy")

MAX_ATTEMPTS = 12
"""Attempts per destination before a deletion step is ``failed`` (about a day of backoff)."""
_POLL_S = 1.0
_FIRST_RETRY_S = 30.0
_MAX_RETRY_S = 3 * 3600.0


class DeletionWorker:
    """Works through the deletion requests in ``control`` for ``destinations``."""

    def __init__(self, control: ControlStore, destinations: Mapping[str, Destination[Any]]) -> None:
        self.control = control
        self.destinations = destinations

    async def run_forever(self) -> None:
        """Process due steps every second until cancelled."""
        while True:
            try:
                await self.process_due()
            except Exception:  # a broken control file must not stop delivery
                log.exception("privacy.deletion_worker_failed")
            await asyncio.sleep(_POLL_S)

    async def process_due(self) -> int:
        """Carry out every due step once; the number of steps attempted."""
        steps = await asyncio.to_thread(self.control.due_deletion_steps, time.time())
        for step in steps:
            await self._carry_out(step)
        return len(steps)

    async def _carry_out(self, step: DeletionStep) -> None:
        destination = self.destinations.get(step.destination)
        retry_at = None
        if destination is None:
            status, detail = "failed", "the destination is no longer configured or enabled"
        elif not destination.supports_user_deletion:
            status, detail = "unsupported", f"the {destination.type_name} type cannot delete"
        else:
            try:
                deleted = await destination.delete_user(step.user_id)
            except DeliveryError as exc:
                status, detail = "failed", exc.reason
                if exc.retryable and step.attempts + 1 < MAX_ATTEMPTS:
                    status = "pending"
                    delay_s = min(_FIRST_RETRY_S * 2**step.attempts, _MAX_RETRY_S)
                    retry_at = time.time() + delay_s
            except Exception as exc:  # noqa: BLE001 - a plugin bug fails the step, not the worker
                status, detail = "failed", f"delete_user raised {type(exc).__name__}: {exc}"
            else:
                status, detail = "done", f"{deleted} record(s) deleted"
        await asyncio.to_thread(self.control.settle_deletion_step, step, status, detail, retry_at)
        log.info(
            "privacy.deletion_step",
            request=step.request_id,
            destination=step.destination,
            status=status,
            detail=detail,
        )
