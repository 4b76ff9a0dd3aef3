"""The ``integrations`` object: which destinations an event may go to (WIRE.md section 3).

A destination is enabled iff ``(integrations[name] ?? integrations.All ?? true) !== false``:
only a literal ``false`` disables, and an options object enables (carrying options for that
destination). Names are case-sensitive and match the destination's configured name, then its
type's display name. Warehouses ignore ``All`` and answer to ``Warehouses`` instead
(``{"all": false}`` stops them, ``{"warehouseIds": [...]}`` picks some by name); archives (the
``file`` destination) ignore the object altogether.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["IntegrationKind", "is_enabled", "options_for"]

IntegrationKind = Literal["destination", "warehouse", "archive"]


def is_enabled(
    integrations: Any, name: str, display_name: str = "", kind: IntegrationKind = "destination"
) -> bool:
    """Whether an event whose ``integrations`` object is ``integrations`` goes to ``name``."""
    if kind == "archive" or not isinstance(integrations, Mapping):
        return True
    own = _own_entry(integrations, name, display_name)
    if own is not None:
        return own is not False
    if kind == "warehouse":
        warehouses = integrations.get("Warehouses")
        if warehouses is False:
            return False
        if isinstance(warehouses, Mapping):
            chosen = warehouses.get("warehouseIds")
            if isinstance(chosen, list):
                return name in chosen
            return warehouses.get("all") is not False
        return True
    return integrations.get("All") is not False


def options_for(integrations: Any, name: str, display_name: str = "") -> Mapping[str, Any]:
    """The options object the event carries for this destination (empty if none)."""
    if not isinstance(integrations, Mapping):
        return {}
    own = _own_entry(integrations, name, display_name)
    return own if isinstance(own, Mapping) else {}


def _own_entry(integrations: Mapping[str, Any], name: str, display_name: str) -> Any:
    if name in integrations:
        return integrations[name]
    if display_name and display_name in integrations:
        return integrations[display_name]
    return None
