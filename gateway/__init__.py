"""eventgate: a self-hosted, Segment-compatible event router.

This module is the plugin author's API; everything else is internal.
"""

from gateway.destination import BatchDestination, Destination, Event, NoSettings
from gateway.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from gateway.plugins import hookimpl

__all__ = [
    "BatchDestination",
    "ConfigError",
    "DeliveryError",
    "Destination",
    "Event",
    "NoSettings",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "hookimpl",
]
