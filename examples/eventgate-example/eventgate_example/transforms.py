"""The example plugin's named transformation, ``example_redact_ip``."""

from __future__ import annotations

from typing import Any

__all__ = ["redact_ip"]


def redact_ip(message: dict[str, Any]) -> dict[str, Any]:
    """Remove ``context.ip``, so the destination never sees the client's address.

    The message is eventgate's copy, so changing it in place and returning it is fine.
    """
    context = message.get("context")
    if isinstance(context, dict):
        context.pop("ip", None)
    return message
