"""Tests for gateway/plugins.py and gateway/hookspecs.py."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from gateway import Destination, Event, hookimpl
from gateway import hookspecs as hookspecs_module
from gateway.errors import ConfigError
from gateway.plugins import BUILTIN_PLUGINS, destination_types, make_plugin_manager


class AnotherFile(Destination[Any]):
    """A third-party type that claims the built-in ``file`` name."""

    type_name = "file"

    async def send(self, event: Event) -> None:
        """Accept everything."""


class Impostor:
    @hookimpl
    def register_destination_types(self) -> list[type[Any]]:
        return [AnotherFile]


class NotADestination:
    @hookimpl
    def register_destination_types(self) -> list[type[Any]]:
        return [dict]


def test_builtins_register_through_the_plugin_path() -> None:
    """The built-in file destination comes from BUILTIN_PLUGINS like any plugin."""
    types = destination_types(make_plugin_manager(load_entry_points=False))
    assert types["file"].plugin in BUILTIN_PLUGINS


def test_duplicate_type_names_fail_naming_both_plugins() -> None:
    """Two plugins claiming one type name fail at startup with both names."""
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Impostor(), name="impostor")
    with pytest.raises(ConfigError) as info:
        destination_types(pm)
    [problem] = info.value.problems
    assert "'file' is registered twice" in problem
    assert "destinations.file" in problem
    assert "impostor" in problem


def test_registering_a_non_destination_fails_clearly() -> None:
    """A plugin returning something that is not a Destination subclass is refused."""
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(NotADestination(), name="broken")
    with pytest.raises(ConfigError, match=r"return subclasses of gateway\.Destination"):
        destination_types(pm)


@pytest.mark.parametrize(
    "name",
    [n for n, f in inspect.getmembers(hookspecs_module, inspect.isfunction) if n != "hookspec"],
)
def test_every_hook_is_documented_and_tested(name: str) -> None:
    """Each hookspec has a docstring and is exercised somewhere in the tests."""
    spec = getattr(hookspecs_module, name)
    assert len((spec.__doc__ or "").strip()) > 40
    tests = Path(__file__).parent
    used = any(name in p.read_text() for p in tests.rglob("*.py") if p.name != Path(__file__).name)
    assert used, f"no test uses the hook {name}"
