"""The OpenAPI 3.1 document of the admin API, served at ``/api/openapi.json``.

It describes every route under ``/api/`` and the older ``/admin/`` routes the console's API
grew from (the same handlers; kept for scripts written against them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["success", "code", "message"],
    "properties": {
        "success": {"const": False},
        "code": {"type": "string"},
        "message": {"type": "string"},
    },
}
_OBJECT: dict[str, Any] = {"type": "object"}
_DATE = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    bad_request: bool = False,
    tag: str = "admin",
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: ok,
        "401": _json(_ref("Error"), "No valid admin token"),
        "404": _json(_ref("Error"), "Not found, or no admin token is configured"),
    }
    if bad_request or body is not None or params:
        responses["400"] = _json(_ref("Error"), "A malformed parameter or body")
    if body is not None:
        responses["413"] = _json(_ref("Error"), "The body is too large")
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body}},
        }
    return operation


_SOURCE = _path_param("name", "A source's name", r"^[A-Za-z0-9_.-]{1,64}$")
_DESTINATION = _path_param("name", "A destination's name", r"^[A-Za-z0-9_.-]{1,64}$")
_KEY = _path_param("key", "A dead letter's key, <shard>:<id>")
_FILTER_QUERY = [
    _query("destination", "Only this destination's", {"type": "string"}),
    _query("since", "Last attempt at or after (ISO-8601)", _DATE),
    _query("until", "Last attempt before (ISO-8601)", _DATE),
    _query("reason", "A substring of the reason", {"type": "string"}),
]
_FILTER_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "destination": {"type": "string"},
        "since": _DATE,
        "until": _DATE,
        "reason": {"type": "string"},
        "all": {"type": "boolean", "description": "Required (true) when no other field is given"},
    },
}


def _dead_letter_paths(prefix: str, tag: str) -> dict[str, Any]:
    return {
        f"{prefix}/dead-letters": {
            "get": _op(
                "List dead letters, newest first",
                _json(_ref("DeadLetters"), "The matching dead letters"),
                params=[
                    *_FILTER_QUERY,
                    _query("limit", "At most this many (1000 at most)", {"type": "integer"}),
                ],
                tag=tag,
            )
        },
        f"{prefix}/dead-letters/{{key}}": {
            "get": _op(
                "One dead letter with its event, last request and response",
                _json(_OBJECT, "The dead letter"),
                params=[_KEY],
                tag=tag,
            )
        },
        f"{prefix}/dead-letters/replay": {
            "post": _op(
                "Re-enqueue the matching dead letters for their own destination",
                _json(
                    {"type": "object", "properties": {"replayed": {"type": "integer"}}},
                    "How many were replayed",
                ),
                body=_FILTER_BODY,
                tag=tag,
            )
        },
        f"{prefix}/dead-letters/purge": {
            "post": _op(
                "Delete the matching dead letters",
                _json(
                    {"type": "object", "properties": {"purged": {"type": "integer"}}},
                    "How many were deleted",
                ),
                body=_FILTER_BODY,
                tag=tag,
            )
        },
    }


def _control_paths(prefix: str, tag: str) -> dict[str, Any]:
    user_ids = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    return {
        f"{prefix}/destinations/{{name}}/delivery": {
            "get": _op(
                "Event Delivery: delivered, not delivered and p95 latency per window, error "
                "samples (you sent / request to destination / response from destination)"
                + ("; with chart series and health under /api" if prefix == "/api" else ""),
                _json(_ref("Delivery"), "The destination's delivery report"),
                params=[_DESTINATION],
                tag=tag,
            )
        },
        f"{prefix}/suppressions": {
            "get": _op(
                "Suppressed users", _json(_OBJECT, "Stored and configured suppressions"), tag=tag
            ),
            "post": _op(
                "Suppress users: their events are dropped at ingress",
                _json(_OBJECT, "How many were added"),
                body={
                    "type": "object",
                    "required": ["userIds"],
                    "additionalProperties": False,
                    "properties": {"userIds": user_ids, "reason": {"type": "string"}},
                },
                tag=tag,
            ),
        },
        f"{prefix}/suppressions/{{user_id}}": {
            "delete": _op(
                "Let a suppressed user's events in again",
                _json(_OBJECT, "Removed"),
                params=[_path_param("user_id", "The user id")],
                tag=tag,
            )
        },
        f"{prefix}/deletions": {
            "get": _op("Deletion requests, newest first", _json(_OBJECT, "The requests"), tag=tag),
            "post": _op(
                "Suppress a user and delete their data in every destination that can",
                _json(_OBJECT, "The request, to follow"),
                status="202",
                body={
                    "type": "object",
                    "required": ["userId"],
                    "additionalProperties": False,
                    "properties": {"userId": {"type": "string", "minLength": 1}},
                },
                tag=tag,
            ),
        },
        f"{prefix}/deletions/{{id}}": {
            "get": _op(
                "One deletion request, per destination",
                _json(_OBJECT, "The request"),
                params=[_path_param("id", "The request's number")],
                tag=tag,
            )
        },
        f"{prefix}/violations": {
            "get": _op(
                "Tracking-plan violation counts, most frequent first",
                _json(_OBJECT, "The violations"),
                params=[_query("source", "Only this source's", {"type": "string"})],
                tag=tag,
            )
        },
    }


def _console_paths() -> dict[str, Any]:
    return {
        "/api/overview": {
            "get": _op(
                "Ingest over 24 h and 7 d (volume series, top events, unique users, errors) "
                "and every destination's health",
                _json(_ref("Overview"), "The overview"),
                params=[_query("source", "Only this source's ingest", {"type": "string"})],
            )
        },
        "/api/sources": {"get": _op("Every source", _json(_OBJECT, "The sources"))},
        "/api/sources/{name}": {
            "get": _op(
                "One source and its effective config, keys redacted",
                _json(_OBJECT, "The source"),
                params=[_SOURCE],
            )
        },
        "/api/sources/{name}/events": {
            "get": _op(
                "The debugger's events of a source, newest last (at most 500)",
                _json(_ref("Events"), "Events and the position after them"),
                params=[
                    _SOURCE,
                    _query(
                        "after",
                        "Only events after this position (from an earlier answer)",
                        {"type": "string"},
                    ),
                    _query("limit", "At most this many (1-500)", {"type": "integer"}),
                ],
            )
        },
        "/api/sources/{name}/stream": {
            "get": _op(
                "The live debugger as server-sent events: a `snapshot` event with the newest "
                "events, then `events` as they arrive. Each event's data is a JSON array of "
                "events; its id is a position a client may send back as Last-Event-ID.",
                {
                    "description": "An endless text/event-stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                params=[
                    _SOURCE,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/destinations": {
            "get": _op("Every destination's health", _json(_OBJECT, "The destinations"))
        },
        "/api/destinations/{name}": {
            "get": _op(
                "One destination's effective config (settings with defaults), secrets redacted",
                _json(_OBJECT, "The destination"),
                params=[_DESTINATION],
            )
        },
        "/api/destinations/{name}/events/{ref}": {
            "get": _op(
                "Where one event stands for a destination: dead_lettered, retrying, pending or "
                "done (delivered, or left out by the destination's rules)",
                _json(_OBJECT, "The event's state"),
                params=[_DESTINATION, _path_param("ref", "<shard>:<seq>, as replay answers")],
            )
        },
        "/api/dead-letters/{key}/replay": {
            "post": _op(
                "Re-enqueue one dead letter; answers the event's reference for the state route",
                _json(_OBJECT, "Replayed"),
                params=[_KEY],
            )
        },
        "/api/health/live": {"get": _op("Liveness", _json(_OBJECT, "The process answers"))},
        "/api/health/ready": {
            "get": {
                **_op(
                    "Readiness: storage writable and under quota; destinations' circuits",
                    _json(_ref("Readiness"), "ready, or degraded when a circuit is open"),
                ),
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document: every admin route, its parameters and its answers."""
    paths = {
        **_console_paths(),
        **_dead_letter_paths("/api", "admin"),
        **_control_paths("/api", "admin"),
        **_dead_letter_paths("/admin", "admin (older paths)"),
        **_control_paths("/admin", "admin (older paths)"),
    }
    paths["/api/health/ready"]["get"]["responses"]["503"] = _json(
        _ref("Readiness"), "not_ready: events cannot be stored"
    )
    paths["/api/sources/{name}/stream"]["get"]["responses"]["429"] = _json(
        _ref("Error"), "Too many debugger streams are open"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventgate admin API",
            "version": "1",
            "description": "Every route needs `Authorization: Bearer <server.admin_token>`; "
            "with no token configured they answer 404. The console at /console uses them.",
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "DeadLetters": {
                    "type": "object",
                    "required": ["deadLetters"],
                    "properties": {"deadLetters": {"type": "array", "items": _OBJECT}},
                },
                "Delivery": {
                    "type": "object",
                    "required": ["destination", "windows", "errorSamples"],
                    "properties": {
                        "destination": {"type": "string"},
                        "windows": _OBJECT,
                        "errorSamples": {"type": "array", "items": _OBJECT},
                        "trends": _OBJECT,
                        "health": _OBJECT,
                    },
                },
                "Overview": {
                    "type": "object",
                    "required": ["volume", "totals", "topEvents", "uniqueUsers", "destinations"],
                    "properties": {
                        "source": {"type": ["string", "null"]},
                        "volume": _OBJECT,
                        "totals": _OBJECT,
                        "topEvents": _OBJECT,
                        "uniqueUsers": _OBJECT,
                        "errorCounts": {"type": "array", "items": _OBJECT},
                        "recentErrors": {"type": "array", "items": _OBJECT},
                        "destinations": {"type": "array", "items": _OBJECT},
                    },
                },
                "Events": {
                    "type": "object",
                    "required": ["events", "position"],
                    "properties": {
                        "events": {"type": "array", "items": _OBJECT},
                        "position": {"type": "string"},
                    },
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "storage", "circuits"],
                    "properties": {
                        "status": {"enum": ["ready", "degraded", "not_ready"]},
                        "storage": _OBJECT,
                        "circuits": _OBJECT,
                    },
                },
            },
        },
        "security": [{"adminToken": []}],
        "paths": paths,
    }
