"""Flattening messages into rows, column types and widening, and load plans."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from destinations.warehouse.plan import Conflict, merge_users, plan_table
from destinations.warehouse.schema import ColumnType, Row, coerce, rows_of, type_of, widen
from gateway.testing import make_event

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_track_lands_in_tracks_and_its_event_table() -> None:
    """A track adds a ``tracks`` row (common columns only) and a row in its event's table."""
    message = make_event(1, properties={"orderId": "o-1", "total": 30}).message
    tracks, own = rows_of(message)
    assert tracks.table == "tracks"
    assert own.table == "order_completed"
    assert tracks.values["event"] == "order_completed"
    assert tracks.values["event_text"] == "Order Completed"
    assert tracks.values["id"] == message["messageId"]
    assert tracks.values["context_library_name"] == "analytics-python"
    assert "order_id" not in tracks.values
    assert own.values["order_id"] == "o-1"
    assert own.values["total"] == 30


def test_nested_objects_flatten_and_arrays_are_json() -> None:
    """Nested objects become ``parent_child`` columns; arrays are stored as JSON text."""
    message = make_event(1, properties={"shipTo": {"zipCode": "10115"}, "skus": ["a", "b"]})
    own = rows_of(message.message)[1]
    assert own.values["ship_to_zip_code"] == "10115"
    assert coerce(own.values["skus"], type_of(own.values["skus"])) == '["a","b"]'


def test_property_named_like_a_reserved_column_gets_a_prefix() -> None:
    """``properties.id`` cannot overwrite the messageId column; it is stored as ``_id``."""
    own = rows_of(make_event(1, properties={"id": 7, "event": "x"}).message)[1]
    assert own.values["_id"] == 7
    assert own.values["_event"] == "x"
    assert own.values["id"] == "web-00000001"


@pytest.mark.parametrize(
    ("fields", "table", "expected"),
    [
        pytest.param(
            {"type": "identify", "traits": {"email": "a@b.c"}},
            ["identifies", "users"],
            {"email": "a@b.c"},
            id="identify",
        ),
        pytest.param(
            {"type": "page", "name": "Home", "properties": {"path": "/"}},
            ["pages"],
            {"name": "Home", "path": "/"},
            id="page",
        ),
        pytest.param(
            {"type": "screen", "name": "Cart", "properties": {}},
            ["screens"],
            {"name": "Cart"},
            id="screen",
        ),
        pytest.param(
            {"type": "group", "groupId": "g1", "traits": {"plan": "pro"}},
            ["groups"],
            {"group_id": "g1", "plan": "pro"},
            id="group",
        ),
        pytest.param(
            {"type": "alias", "previousId": "anon-1"},
            ["aliases"],
            {"previous_id": "anon-1"},
            id="alias",
        ),
    ],
)
def test_each_call_has_its_table(
    fields: dict[str, Any], table: list[str], expected: dict[str, Any]
) -> None:
    """Every Spec call lands in Segment's table for it, with its own fields as columns."""
    fields.setdefault("event", None)
    rows = rows_of(make_event(3, **fields).message)
    assert [row.table for row in rows] == table
    assert expected.items() <= rows[0].values.items()


def test_users_row_is_keyed_by_user_id() -> None:
    """An identify's ``users`` row has ``id`` = userId and carries the traits."""
    rows = rows_of(make_event(3, type="identify", event=None, traits={"plan": "pro"}).message)
    user = rows[1]
    assert user.values["id"] == "user-3"
    assert user.values["plan"] == "pro"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(True, ColumnType.BOOLEAN, id="bool"),
        pytest.param(3, ColumnType.BIGINT, id="int"),
        pytest.param(2**70, ColumnType.TEXT, id="int-beyond-bigint"),
        pytest.param(2.5, ColumnType.DOUBLE, id="float"),
        pytest.param("2026-11-23T10:00:00.123Z", ColumnType.TIMESTAMP, id="iso-timestamp"),
        pytest.param("2026-11-23", ColumnType.TEXT, id="date-only-is-text"),
        pytest.param("2026-13-45T10:00:00Z", ColumnType.TEXT, id="invalid-date"),
        pytest.param("hello", ColumnType.TEXT, id="text"),
        pytest.param([1, 2], ColumnType.TEXT, id="array"),
    ],
)
def test_type_of(value: Any, expected: ColumnType) -> None:
    """Each JSON value gets the narrowest column type that holds it."""
    assert type_of(value) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param(ColumnType.BOOLEAN, ColumnType.BIGINT, ColumnType.BIGINT, id="bool-int"),
        pytest.param(ColumnType.BIGINT, ColumnType.DOUBLE, ColumnType.DOUBLE, id="int-float"),
        pytest.param(ColumnType.BOOLEAN, ColumnType.DOUBLE, ColumnType.DOUBLE, id="bool-float"),
        pytest.param(ColumnType.DOUBLE, ColumnType.TEXT, ColumnType.TEXT, id="float-text"),
        pytest.param(ColumnType.TIMESTAMP, ColumnType.TEXT, ColumnType.TEXT, id="ts-text"),
        pytest.param(ColumnType.TIMESTAMP, ColumnType.BIGINT, ColumnType.TEXT, id="ts-int"),
        pytest.param(ColumnType.TEXT, ColumnType.BOOLEAN, ColumnType.TEXT, id="text-stays"),
    ],
)
def test_widen(a: ColumnType, b: ColumnType, expected: ColumnType) -> None:
    """Types widen along bool -> bigint -> double -> text and timestamp -> text, both ways."""
    assert widen(a, b) is expected
    assert widen(b, a) is expected


def test_plan_widens_existing_columns_and_coerces_values() -> None:
    """A float into a bigint column widens it; booleans in the batch are stored as numbers."""
    rows = [Row("t", {"id": "1", "n": 2.5}), Row("t", {"id": "2", "n": True})]
    plan = plan_table(
        "t", rows, {"id": ColumnType.TEXT, "n": ColumnType.BIGINT}, loaded_at=NOW, max_columns=100
    )
    assert plan.widen == {"n": ColumnType.DOUBLE}
    assert plan.add == {"uuid_ts": ColumnType.TIMESTAMP}
    n = plan.columns.index("n")
    assert [record[n] for record in plan.records] == [2.5, 1.0]
    assert not plan.create


def test_plan_keeps_wider_columns() -> None:
    """A boolean into a text column leaves the column as it is and stores ``'true'``."""
    plan = plan_table(
        "t",
        [Row("t", {"id": "1", "flag": True})],
        {"id": ColumnType.TEXT, "flag": ColumnType.TEXT, "uuid_ts": ColumnType.TIMESTAMP},
        loaded_at=NOW,
        max_columns=100,
    )
    assert not plan.changes_schema
    assert plan.records[0][plan.columns.index("flag")] == "true"


def test_plan_sends_overflow_to_unmapped() -> None:
    """Keys beyond max_columns go to the row's ``_unmapped`` JSON; nothing is dropped."""
    existing = {f"c{i}": ColumnType.TEXT for i in range(32)}
    plan = plan_table(
        "t", [Row("t", {"id": "1", "c1": "x", "extra": 5})], existing, loaded_at=NOW, max_columns=32
    )
    assert "extra" not in plan.columns
    assert "_unmapped" in plan.add
    assert plan.records[0][plan.columns.index("_unmapped")] == '{"extra":5}'
    assert plan.unmapped_values == 1


def test_reserved_column_with_a_wrong_type_goes_to_unmapped() -> None:
    """A sentAt that is not a timestamp cannot go in ``sent_at``; it is kept in ``_unmapped``."""
    plan = plan_table(
        "t", [Row("t", {"id": "1", "sent_at": "yesterday"})], None, loaded_at=NOW, max_columns=100
    )
    assert "sent_at" not in plan.columns
    assert plan.records[0][plan.columns.index("_unmapped")] == '{"sent_at":"yesterday"}'


def test_nul_strings_go_to_unmapped() -> None:
    """Strings holding NUL (PostgreSQL cannot store one) go to ``_unmapped``, top level too."""
    message = make_event(1, userId="u\x00x", properties={"bad": "a\x00b", "good": 1}).message
    own = rows_of(message)[1]
    plan = plan_table("order_completed", [own], None, loaded_at=NOW, max_columns=100)
    record = dict(zip(plan.columns, plan.records[0], strict=True))
    assert record["good"] == 1
    assert "bad" not in record
    assert "user_id" not in record
    assert record["_unmapped"] == '{"user_id":"u\\u0000x","bad":"a\\u0000b"}'


def test_nul_in_an_id_is_replaced_not_dropped() -> None:
    """A messageId holding NUL still keys its row: NUL becomes U+FFFD, the same every time."""
    plan = plan_table("t", [Row("t", {"id": "m\x001"})], None, loaded_at=NOW, max_columns=100)
    assert plan.records[0][plan.columns.index("id")] == "m\ufffd1"


def test_users_merge_later_received_wins() -> None:
    """Two identifies of one user in a batch make one row: later values win, others kept."""
    older = Row(
        "users",
        {"id": "u", "received_at": "2026-11-23T00:00:01Z", "plan": "free", "email": "a@b.c"},
    )
    newer = Row("users", {"id": "u", "received_at": "2026-11-23T00:00:02Z", "plan": "pro"})
    (merged,) = merge_users([newer, older])
    assert merged.values == {
        "id": "u",
        "received_at": "2026-11-23T00:00:02Z",
        "plan": "pro",
        "email": "a@b.c",
    }
    plan = plan_table("users", [merged], None, loaded_at=NOW, max_columns=100)
    assert plan.conflict is Conflict.NEWER_WINS
