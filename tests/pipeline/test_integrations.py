"""The integrations object's semantics (WIRE.md section 3)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline.integrations import IntegrationKind, is_enabled, options_for


@pytest.mark.parametrize(
    ("integrations", "kind", "expected"),
    [
        pytest.param(None, "destination", True, id="absent"),
        pytest.param({}, "destination", True, id="empty"),
        pytest.param({"crm": False}, "destination", False, id="own-false"),
        pytest.param({"crm": True}, "destination", True, id="own-true"),
        pytest.param({"crm": 0}, "destination", True, id="only-literal-false-disables"),
        pytest.param({"crm": None}, "destination", True, id="null-enables"),
        pytest.param({"crm": {"key": 1}}, "destination", True, id="options-enable"),
        pytest.param({"All": False}, "destination", False, id="all-false"),
        pytest.param({"All": False, "crm": True}, "destination", True, id="own-beats-all"),
        pytest.param({"All": False, "CRM Hook": {}}, "destination", True, id="display-name"),
        pytest.param({"Crm": False}, "destination", True, id="case-sensitive"),
        pytest.param({"All": False}, "warehouse", True, id="all-false-spares-warehouses"),
        pytest.param({"Warehouses": {"all": False}}, "warehouse", False, id="warehouses-off"),
        pytest.param({"Warehouses": False}, "warehouse", False, id="warehouses-false"),
        pytest.param({"Warehouses": {"warehouseIds": ["crm"]}}, "warehouse", True, id="picked"),
        pytest.param({"Warehouses": {"warehouseIds": ["x"]}}, "warehouse", False, id="not-picked"),
        pytest.param({"crm": False}, "archive", True, id="archives-ignore"),
        pytest.param({"All": False}, "archive", True, id="archives-ignore-all"),
        pytest.param(["not", "an", "object"], "destination", True, id="malformed"),
    ],
)
def test_is_enabled(integrations: Any, kind: IntegrationKind, expected: bool) -> None:
    """Only a literal false disables; warehouses answer to Warehouses; archives ignore it."""
    assert is_enabled(integrations, "crm", "CRM Hook", kind) is expected


def test_options_for_returns_the_destinations_object() -> None:
    """A destination's options object is handed over; true or absent gives no options."""
    assert options_for({"crm": {"listId": 7}}, "crm") == {"listId": 7}
    assert options_for({"CRM Hook": {"listId": 8}}, "crm", "CRM Hook") == {"listId": 8}
    assert options_for({"crm": True}, "crm") == {}
    assert options_for(None, "crm") == {}
