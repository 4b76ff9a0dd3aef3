"""Sources and destinations as the console shows them: effective config, secrets redacted."""

from __future__ import annotations

import re
from typing import Any

import pluggy
from pydantic import BaseModel, SecretStr, ValidationError

from gateway.config import DestinationConfig, GatewayConfig, SourceConfig
from gateway.errors import ConfigError
from gateway.plugins import destination_types

__all__ = ["REDACTED", "destination_view", "redact", "source_view"]

REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(
    r"(key|secret|token|password|passwd|authorization|credential|dsn|cookie)", re.IGNORECASE
)
_SECRET_VALUES = re.compile(r"(whsec_|sk_)[A-Za-z0-9+/=_-]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets hidden: values under secret-looking keys, ``SecretStr`` values,
    passwords in URLs and ``whsec_``/``sk_`` strings anywhere."""
    if isinstance(value, SecretStr) or (key and _SECRET_KEYS.search(key) and value):
        if isinstance(value, list | tuple):
            return [REDACTED for _ in value]
        if isinstance(value, dict):
            return {k: REDACTED for k in value}
        return REDACTED
    if isinstance(value, BaseModel):
        return redact(value.model_dump(mode="python"), key)
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUES.sub(
            r"\1" + REDACTED, _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", value)
        )
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def source_view(config: GatewayConfig, source: SourceConfig) -> dict[str, Any]:
    """One source: what it feeds, its controls, its effective config with keys redacted."""
    return {
        "name": source.name,
        "destinations": config.destinations_of(source.name),
        "writeKeys": len(source.write_keys),
        "apiKeys": len(source.api_keys),
        "trackingPlan": source.tracking_plan,
        "config": _jsonable(redact(source.model_dump(mode="python"))),
    }


def destination_view(
    config: GatewayConfig, destination: DestinationConfig, pm: pluggy.PluginManager
) -> dict[str, Any]:
    """One destination: type, sources feeding it, effective config (the type's settings with
    their defaults) with secrets redacted."""
    data = redact(destination.model_dump(mode="python", exclude={"settings"}))
    settings: Any = destination.settings
    try:
        kind = destination_types(pm).get(destination.type)
        model = getattr(kind.cls, "settings_model", None) if kind else None
        if isinstance(model, type) and issubclass(model, BaseModel):
            settings = model.model_validate(destination.settings)
    except (ConfigError, ValidationError):
        pass  # the raw settings then; startup validated them already
    data["settings"] = redact(settings)
    return {
        "name": destination.name,
        "type": destination.type,
        "enabled": destination.enabled,
        "sources": [
            s.name
            for s in config.sources
            if s.destinations is None or destination.name in s.destinations
        ],
        "config": _jsonable(data),
    }
