"""Atheris harness: Spec normalization and the SegOps mapping of arbitrary JSON.

``data`` is JSON text (atheris mutates it byte by byte, so most inputs are near-valid).
Oracles: normalize() and to_spec() refuse only with EventRejectedError; an accepted event is
compact JSON with its type, a messageId of at most 100 characters and UTC timestamps.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import _setup  # noqa: F401 - puts the repository on sys.path
import atheris

with atheris.instrument_imports():
    import orjson

    from gateway.errors import EventRejectedError
    from gateway.events import RequestContext, normalize
    from gateway.ingress.segops import to_spec
    from tests.fuzz.harness import check_normalized

ROUTES = [None, "track", "identify", "page", "screen", "group", "alias", "segops"]
SENT_AT = [None, datetime(2024, 1, 1, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)]


def test_one_input(data: bytes) -> None:
    """Normalize ``data`` after its first byte, parsed as JSON, on the route that byte picks.

    (Not a FuzzedDataProvider: it takes its picks from the end, which would cut the JSON.)
    """
    if not data:
        return
    route = ROUTES[data[0] % len(ROUTES)]
    sent_at = SENT_AT[data[0] // len(ROUTES) % len(SENT_AT)]
    try:
        item = orjson.loads(data[1:])
    except orjson.JSONDecodeError:
        return
    request = RequestContext(
        source="web", received_at=datetime.now(UTC), client_ip="10.0.0.1", sent_at=sent_at
    )
    try:
        if route == "segops":
            event_type, message = to_spec(item)
            event = normalize(message, request, route_type=event_type)
        else:
            event = normalize(item, request, route_type=route)
    except EventRejectedError as exc:
        if not exc.code:
            raise AssertionError("a rejection without a code") from exc
        return
    check_normalized(event)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
