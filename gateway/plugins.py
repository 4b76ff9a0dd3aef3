"""The pluggy plugin manager: built-in plugins and third-party entry points, one path for both."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.destination import Destination
from gateway.errors import ConfigError
from gateway.pipeline.transforms import Transform

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "DestinationType",
    "destination_types",
    "hookimpl",
    "make_plugin_manager",
    "transforms",
]

hookimpl = pluggy.HookimplMarker("eventgate")

ENTRY_POINT_GROUP = "eventgate"

# Built-ins are ordinary plugins, loaded through the same path as third-party entry points.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "destinations.file",
    "destinations.warehouse",
    "destinations.webhook",
)


@dataclass(frozen=True, slots=True)
class DestinationType:
    """A registered destination type and the plugin that registered it."""

    type_name: str
    cls: type[Destination[Any]]
    plugin: str


def make_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins and (by default) every installed plugin.

    Set ``EVENTGATE_TRACE_HOOKS=1`` to log every hook call, a cheap debugging aid.
    """
    pm = pluggy.PluginManager("eventgate")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if os.environ.get("EVENTGATE_TRACE_HOOKS"):
        pm.trace.root.setwriter(print)
        pm.enable_tracing()
    return pm


def destination_types(pm: pluggy.PluginManager) -> dict[str, DestinationType]:
    """Every destination type the plugins register, by ``type_name``.

    Raises:
        ConfigError: two plugins register the same ``type_name``, or a plugin registers
            something that is not a ``Destination`` subclass.
    """
    found: dict[str, DestinationType] = {}
    problems: list[str] = []
    for impl in pm.hook.register_destination_types.get_hookimpls():
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        registered: Any = impl.function() or []
        for cls in registered:
            if not (isinstance(cls, type) and issubclass(cls, Destination)):
                problems.append(
                    f"plugin {plugin}: register_destination_types returned {cls!r}; "
                    "return subclasses of gateway.Destination"
                )
                continue
            type_name = getattr(cls, "type_name", None)
            if not isinstance(type_name, str) or not type_name:
                problems.append(f"plugin {plugin}: {cls.__name__} has no type_name; set one")
                continue
            if type_name in found:
                problems.append(
                    f"destination type {type_name!r} is registered twice: by "
                    f"{found[type_name].plugin} and by {plugin}; uninstall one of them"
                )
                continue
            found[type_name] = DestinationType(type_name, cls, plugin)
    if problems:
        raise ConfigError(problems)
    return found


def transforms(pm: pluggy.PluginManager) -> dict[str, Transform]:
    """Every named transform the plugins register with ``register_transforms``, by name.

    Raises:
        ConfigError: two plugins register the same name, or a plugin registers something that
            is not a callable under a non-empty string name.
    """
    found: dict[str, Transform] = {}
    owners: dict[str, str] = {}
    problems: list[str] = []
    for impl in pm.hook.register_transforms.get_hookimpls():
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        registered: Any = impl.function() or {}
        if not isinstance(registered, Mapping):
            problems.append(
                f"plugin {plugin}: register_transforms returned {type(registered).__name__}; "
                "return a dict of name -> transform function"
            )
            continue
        for name, transform in registered.items():
            if not isinstance(name, str) or not name or not callable(transform):
                problems.append(
                    f"plugin {plugin}: register_transforms maps {name!r} to {transform!r}; "
                    "map non-empty names to functions taking and returning a message dict"
                )
                continue
            if name in found:
                problems.append(
                    f"transform {name!r} is registered twice: by {owners[name]} and by "
                    f"{plugin}; uninstall one of them"
                )
                continue
            found[name], owners[name] = transform, plugin
    if problems:
        raise ConfigError(problems)
    return found
