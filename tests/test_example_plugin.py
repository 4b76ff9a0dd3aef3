"""Tests of the example third-party plugin (examples/eventgate-example), installed as a package."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgate_example import SqliteDestination, SqliteSettings

from gateway.destination import Destination, deliver
from gateway.plugins import destination_types, make_plugin_manager
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
