"""Tests of the example third-party plugin (examples/eventgate-example), installed as a package."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgate_example import SqliteDestination, SqliteSettings, redact_ip

from gateway import hookimpl
from gateway.destination import Destination, deliver
from gateway.errors import ConfigError
from gateway.pipeline.transforms import TransformationConfig, Transformations
from gateway.plugins import destination_types, make_plugin_manager, transforms
from gateway.testing import DestinationContract, make_event


class TestSqliteDestinationContract(DestinationContract):
    """The example SQLite destination passes the destination contract."""

    @pytest.fixture(name="destination")
    async def _destination(self, tmp_path: Path) -> SqliteDestination:
        destination = SqliteDestination("rows", SqliteSettings(path=tmp_path / "rows.db"))
        await destination.open()
        return destination

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        assert isinstance(destination, SqliteDestination)
        with closing(sqlite3.connect(destination.settings.path)) as db:
            return [orjson.loads(body) for (body,) in db.execute("SELECT body FROM events")]


def test_entry_point_registers_example_sqlite() -> None:
    """make_plugin_manager loads the installed entry point and finds example_sqlite."""
    found = destination_types(make_plugin_manager())
    assert found["example_sqlite"].cls is SqliteDestination
    assert found["example_sqlite"].plugin == "example"


async def test_redelivery_keeps_one_row_per_message_id(tmp_path: Path) -> None:
    """Delivering the same events twice leaves one row each, with source and type filled in."""
    destination = SqliteDestination("rows", SqliteSettings(path=tmp_path / "rows.db"))
    await destination.open()
    batch = [make_event(1, "web"), make_event(2, "ios")]
    try:
        await deliver(destination, batch)
        assert await deliver(destination, batch) == [None, None]
    finally:
        await destination.close()
    with closing(sqlite3.connect(tmp_path / "rows.db")) as db:
        rows = db.execute("SELECT message_id, source, type FROM events ORDER BY message_id")
        assert rows.fetchall() == [
            ("ios-00000002", "ios", "track"),
            ("web-00000001", "web", "track"),
        ]


def test_entry_point_registers_example_redact_ip() -> None:
    """register_transforms of the installed plugin provides example_redact_ip, usable by name."""
    named = transforms(make_plugin_manager())
    assert named["example_redact_ip"] is redact_ip
    config = TransformationConfig.model_validate({"name": "no-ip", "python": "example_redact_ip"})
    message = {"type": "track", "event": "E", "context": {"ip": "1.2.3.4", "locale": "en"}}
    before = copy.deepcopy(message)
    result = Transformations.compile([config], named).apply(message)
    assert result.message == {"type": "track", "event": "E", "context": {"locale": "en"}}
    assert (result.outcome, result.applied) == ("transformed", ("no-ip",))
    assert message == before


class RedactTwice:
    """A second plugin claiming the example plugin's transform name."""

    @hookimpl
    def register_transforms(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]:
        return {"example_redact_ip": lambda message: message}


class NotATransform:
    """A plugin registering something that is not a function."""

    @hookimpl
    def register_transforms(self) -> dict[str, Any]:
        return {"broken": "not callable"}


class NotADict:
    """A plugin returning a list where a dict of transforms belongs."""

    @hookimpl
    def register_transforms(self) -> list[Any]:
        return [redact_ip]


def test_duplicate_transform_names_fail_naming_both_plugins() -> None:
    """Two plugins registering one transform name fail at startup with both plugin names."""
    pm = make_plugin_manager()
    pm.register(RedactTwice(), name="impostor")
    with pytest.raises(ConfigError) as info:
        transforms(pm)
    [problem] = info.value.problems
    assert "'example_redact_ip' is registered twice" in problem
    assert "by example and by impostor" in problem


@pytest.mark.parametrize(
    ("plugin", "error"),
    [
        pytest.param(NotATransform(), "register_transforms maps 'broken'", id="not-callable"),
        pytest.param(NotADict(), "register_transforms returned list", id="not-a-dict"),
    ],
)
def test_registering_a_bad_transform_fails_clearly(plugin: object, error: str) -> None:
    """A plugin returning a non-dict, or mapping a name to a non-function, is refused."""
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="broken")
    with pytest.raises(ConfigError, match=f"plugin broken: {error}"):
        transforms(pm)
