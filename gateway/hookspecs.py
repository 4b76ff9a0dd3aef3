"""The hooks an eventgate plugin can implement. Nothing but hookspecs lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("eventgate")


@hookspec
def register_destination_types() -> list[type[Any]]:  # type: ignore[empty-body]
    """Return the destination classes this plugin provides.

    Each is a subclass of :class:`gateway.Destination` or :class:`gateway.BatchDestination` with a
    unique ``type_name``. Every plugin's list is collected; two classes claiming the same
    ``type_name`` fail startup with both plugin names.
    """


@hookspec
def register_transforms() -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]:  # type: ignore[empty-body]
    """Return the named Python transformations this plugin provides, as ``{name: transform}``.

    A transformation in the config uses one with ``python: "<name>"`` (WIRE.md section 4). Every
    plugin's dict is collected; names must be unique across all plugins, and two plugins
    registering the same name fail startup with both plugin names.

    Each transform receives a deep copy of the message (it may change it in place) and returns
    the new message, or ``None`` to drop the event; an exception drops the event as a transform
    error. It runs on an event loop for every event it applies to (an ingress process's for
    source transformations, the router's for destination ones): keep it fast, never block (no
    I/O, no sleeping).
    """


@hookspec
def delivery_finished(
    destination: str, source: str, message_id: str, outcome: str, reason: str | None
) -> None:
    """Observe the end of one event's delivery to one destination; return value ignored.

    ``outcome`` is ``"delivered"`` or ``"failed"`` (a retry follows); ``reason`` says why it
    failed and is ``None`` on success. Called on the router's event loop: keep it fast, never
    block.
    """
