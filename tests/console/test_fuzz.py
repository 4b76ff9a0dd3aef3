"""Fuzz the admin API from its own OpenAPI document (schemathesis): no answer is a 5xx.

Runs against a real `eventgate serve`; a few examples per operation keep it to seconds. The
debugger's stream is left out: it is endless by design (tests/console/test_api.py covers it).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from gateway.console.openapi import openapi_document
from tests.console.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(
    path="/api/sources/{name}/stream"
)


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, console_gateway: Gateway) -> None:
    """Whatever the fuzzer sends to an admin route, the gateway answers without a 5xx."""
    case.call_and_validate(
        base_url=console_gateway.url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        checks=[not_a_server_error],
        timeout=10,
    )
