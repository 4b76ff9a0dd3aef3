"""The YAML configuration as pydantic models, with ``${ENV}`` interpolation and precise errors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pluggy
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway.errors import ConfigError
from gateway.pipeline.filters import DestinationFilterConfig
from gateway.pipeline.protocols import ProtocolsOptions, TrackingPlanConfig
from gateway.pipeline.transforms import TransformationConfig

__all__ = [
    "BatchConfig",
    "CircuitConfig",
    "DestinationConfig",
    "FlowConfig",
    "GatewayConfig",
    "JetStreamConfig",
    "LimitsConfig",
    "RetryConfig",
    "ServerConfig",
    "SourceConfig",
    "StorageConfig",
    "interpolate_env",
    "load_config",
    "parse_config",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Model):
    """Request limits; they apply to the uncompressed JSON (WIRE.md section 1)."""

    max_event_bytes: int = Field(32 * 1024, gt=0)
    max_batch_bytes: int = Field(500 * 1024, gt=0)
    max_batch_events: int = Field(2500, gt=0)
    max_segops_batch_events: int = Field(500, gt=0)


class ServerConfig(_Model):
    """Where the gateway listens and how it treats requests."""

    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    limits: LimitsConfig = LimitsConfig()
    trusted_proxy_header: str | None = None
    """A header such as ``X-Forwarded-For`` whose first address is the client's ``context.ip``.
    Set it only behind a proxy that overwrites it."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    admin_token: SecretStr | None = None
    """Bearer token of the admin API (``/admin/...``); without one the admin API is off."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """``uvloop`` (libuv) serves about 15% more requests per core than asyncio's own loop;
    ``auto`` uses it where it is installed (it is a dependency on Linux and macOS)."""
    ingress_processes: int | Literal["auto"] = Field("auto")
    """Ingress processes ``eventgate serve`` runs beside the router process; ``auto`` is one per
    CPU, 0 runs ingress and router in a single process."""
    keepalive_timeout_s: float = Field(75.0, gt=0)
    """How long a client may hold a connection without progress: one that sends no request for
    this long, or has not finished a request's headers this long after connecting (or after its
    previous answer), is closed; a body still arriving this long after its headers is answered
    408. Bounds what idle and slow (slowloris) clients hold; see docs/operations.md."""

    @model_validator(mode="after")
    def _processes_in_range(self) -> ServerConfig:
        if isinstance(self.ingress_processes, int) and not 0 <= self.ingress_processes <= 64:
            raise ValueError("ingress_processes must be auto or a number from 0 to 64")
        return self


class JetStreamConfig(_Model):
    """The distributed log: a NATS JetStream cluster shared by every gateway node."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    """The cluster's URLs; a node connects to one and fails over to the others."""
    credentials: Path | None = None
    """A NATS ``.creds`` file (JWT and nkey seed)."""
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    replicas: int = Field(1, ge=1, le=5)
    """Copies of every stream and bucket (3 on a 3-node cluster: one node can fail)."""
    partitions: int = Field(8, ge=1, le=1024)
    """Subjects the events are spread over by user; a partition is delivered by one node at a
    time, so a user's events keep their order. More partitions than nodes balance the load."""
    max_bytes_mb: float | None = Field(None, gt=0)
    """The events stream's size limit; when reached, ingress answers 503 (nothing is dropped)."""
    stream_prefix: str = Field("EVENTGATE", pattern=r"^[A-Z][A-Z0-9_]{0,31}$")
    """Names the streams and buckets, so several gateways can share one cluster."""
    timeout_s: float = Field(5.0, gt=0)
    """How long a publish or request waits for JetStream before ingress answers 503."""
    duplicate_window_s: float = Field(600.0, ge=0)
    """JetStream's ``Nats-Msg-Id`` duplicate window: a messageId accepted this recently is
    acknowledged but not stored again. The server holds every id of the window in memory
    (about 100 bytes each), so size it as events/s x window; 0 uses the server's 2 minutes."""
    lease_ttl_s: float = Field(10.0, ge=1)
    """A partition held by a node that stops renewing it is taken over after this long."""


class StorageConfig(_Model):
    """The durable event log."""

    backend: Literal["sqlite", "jetstream"] = "sqlite"
    """``sqlite``: the embedded log in ``data_dir``; ``jetstream``: NATS JetStream."""
    jetstream: JetStreamConfig = JetStreamConfig()
    data_dir: Path = Path("data")
    disk_quota_mb: float = Field(10_240, gt=0)
    """When the log reaches this size, ingress answers 503 with ``Retry-After``."""
    retry_after_s: int = Field(30, gt=0)
    """The ``Retry-After`` sent with a 503 when storage cannot accept."""
    dedup_window_s: float = Field(86_400.0, ge=0)
    """An event whose messageId was accepted this recently (by any source) is acknowledged but
    not stored again; 0 turns deduplication off. Costs 75-110 bytes of disk per event (more
    for longer messageIds)."""


class QuotaConfig(_Model):
    """A source's rate limit and monthly event quota; over either, ingress answers 429."""

    plan: Literal["free", "starter", "business", "enterprise"] | None = None
    """A SegOps plan: free 60 requests/min and 500,000 events/month, starter 300 and 5,000,000,
    business 1,000 and 50,000,000, enterprise unlimited."""
    requests_per_minute: int | None = Field(None, gt=0)
    """API calls per UTC minute (overrides the plan's)."""
    events_per_month: int | None = Field(None, gt=0)
    """Accepted events per UTC calendar month (overrides the plan's)."""

    def resolved(self) -> tuple[int | None, int | None]:
        """``(requests_per_minute, events_per_month)``: the plan's, with overrides applied."""
        from gateway.ingress.quota import PLANS  # noqa: PLC0415 - avoids an import cycle

        per_minute, per_month = PLANS[self.plan] if self.plan else (None, None)
        return (
            self.requests_per_minute if self.requests_per_minute is not None else per_minute,
            self.events_per_month if self.events_per_month is not None else per_month,
        )


class SourceConfig(_Model):
    """A source: who may send, and which destinations its events feed."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    write_keys: list[SecretStr] = []
    """Keys for the Segment ``/v1`` API (Basic auth or ``writeKey`` in the body)."""
    api_keys: list[SecretStr] = []
    """Bearer keys (``sk_...``) for the SegOps-style ``/api/ingestion`` API."""
    destinations: list[str] | None = None
    """Destination names this source feeds; omitted means every destination."""
    quota: QuotaConfig | None = None
    """Requests per minute and events per month; omitted means unlimited."""
    tracking_plan: str | None = None
    """The name of a plan in ``tracking_plans`` to check this source's events against."""
    protocols: ProtocolsOptions = ProtocolsOptions()
    """What the tracking plan does with unplanned events, unplanned properties and violations."""
    transformations: list[TransformationConfig] = []
    """Source-scope transformations, applied before events are stored (and so before every
    destination's filters)."""

    @model_validator(mode="after")
    def _has_a_key(self) -> SourceConfig:
        if not self.write_keys and not self.api_keys:
            raise ValueError("a source needs at least one entry in write_keys or api_keys")
        for key in [*self.write_keys, *self.api_keys]:
            if not key.get_secret_value():
                raise ValueError("keys must not be empty (is an ${ENV} variable empty?)")
        return self


class BatchConfig(_Model):
    """How the router groups events for one destination."""

    max_events: int = Field(500, gt=0, le=100_000)
    max_age_s: float = Field(0.5, ge=0)
    """How long the first event of an incomplete batch may wait for company."""


class RetryConfig(_Model):
    """When a destination's failed deliveries are retried, and when they are dead-lettered."""

    max_attempts: int = Field(120, ge=1)
    """Attempts in all (the first included) before an event is dead-lettered. With the default
    waits, 120 attempts outlast ``max_age_s``, so Segment's 4 hours decide."""
    max_age_s: float = Field(4 * 3600.0, gt=0)
    """How long after its first attempt an event may still be retried (Segment: 4 hours)."""
    base_delay_s: float = Field(1.0, ge=0)
    """The first retry waits up to this long; each later one up to twice the previous."""
    max_delay_s: float = Field(300.0, ge=0)
    """No single wait is longer (before jitter)."""
    max_retry_after_s: float = Field(3600.0, ge=0)
    """A destination's ``Retry-After`` is honoured up to this long."""


class CircuitConfig(_Model):
    """When to stop sending to a destination that keeps failing, and when to probe it again."""

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1)
    """Delivery attempts in a row that delivered nothing (and failed retryably) to open it."""
    open_s: float = Field(5.0, ge=0)
    """The first pause; each failed probe doubles it."""
    max_open_s: float = Field(300.0, ge=0)
    """The longest pause between probes."""


class FlowConfig(_Model):
    """How hard the router may push one destination."""

    max_in_flight: int | None = Field(None, ge=1)
    """Batches being delivered at once (its workers, one per log shard, share it); unset: one
    per shard."""
    rate_limit_per_s: float | None = Field(None, gt=0)
    """Events per second at most (a token bucket with a one-second burst); unset: no limit."""


class DestinationConfig(_Model):
    """A destination: a name, a plugin type and that type's settings."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    type: str
    enabled: bool = True
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()
    flow: FlowConfig = FlowConfig()
    filters: list[DestinationFilterConfig] = Field([], max_length=10)
    """Destination filters (at most 10), applied in Segment's order whatever their order here."""
    transformations: list[TransformationConfig] = []
    """Destination-scope transformations, applied after the filters."""
    ordering: Literal["none", "per_user"] = "none"
    """``per_user``: a user's later events wait behind their earlier event while it is retried
    (other users keep flowing); at most one event per user is sent at a time while one waits."""
    settings: dict[str, Any] = {}


class PrivacyConfig(_Model):
    """Users whose events are dropped at ingress (the admin API and CLI add more at run time)."""

    suppressed_user_ids: list[str] = []


class GatewayConfig(_Model):
    """The whole gateway configuration (one YAML file)."""

    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    tracking_plans: list[TrackingPlanConfig] = []
    sources: list[SourceConfig] = Field(min_length=1)
    destinations: list[DestinationConfig] = []

    @model_validator(mode="after")
    def _references_resolve(self) -> GatewayConfig:
        _unique("sources", [s.name for s in self.sources])
        _unique("destinations", [d.name for d in self.destinations])
        keys = [k.get_secret_value() for s in self.sources for k in (*s.write_keys, *s.api_keys)]
        if len(set(keys)) != len(keys):
            raise ValueError("a key is used twice; every write key and API key must be unique")
        _unique("tracking_plans", [p.name for p in self.tracking_plans])
        plans = {p.name for p in self.tracking_plans}
        for source in self.sources:
            if source.tracking_plan is not None and source.tracking_plan not in plans:
                raise ValueError(
                    f"source {source.name!r} uses tracking plan {source.tracking_plan!r}, which "
                    f"is not in tracking_plans; defined plans: {sorted(plans) or 'none'}"
                )
        names = {d.name for d in self.destinations}
        for source in self.sources:
            for name in source.destinations or []:
                if name not in names:
                    raise ValueError(
                        f"source {source.name!r} feeds destination {name!r}, which is not "
                        f"configured; configured destinations: {sorted(names) or 'none'}"
                    )
        return self

    def destinations_of(self, source: str) -> list[str]:
        """The enabled destination names the named source feeds."""
        spec = next(s for s in self.sources if s.name == source)
        wanted = spec.destinations
        return [
            d.name for d in self.destinations if d.enabled and (wanted is None or d.name in wanted)
        ]


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what}: the name {name!r} is used twice; names must be unique")
        seen.add(name)


_ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(
    value: Any, env: Mapping[str, str], path: str = "", problems: list[str] | None = None
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``; ``$$`` is ``$``.

    Unset variables without a default are appended to ``problems`` as ``path: ...`` lines.
    """
    problems = [] if problems is None else problems
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set; "
                f"set it, or write ${{{name}:-default}}"
            )
            return ""

        return _ENV_PATTERN.sub(replace, value)
    if isinstance(value, list):
        return [interpolate_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: interpolate_env(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in value.items()
        }
    return value


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"


def _allowed_keys(model: Any, loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys valid at the mapping that holds ``loc``'s last part, when it is a model."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if _is_model(c)), None)
        if model is None:
            return None
    return sorted(model.model_fields) if _is_model(model) else None


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _problems_from(
    exc: ValidationError, *, model: type[BaseModel], prefix: str, file: str
) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            valid = f"; valid keys here: {', '.join(allowed)}" if allowed else ""
            message = "unknown key" + valid
        elif error["type"] == "missing":
            message = "required key is missing"
        where = _format_loc(loc)
        if prefix:
            where = f"{prefix}.{where}" if where != "<root>" else prefix
        problems.append(f"{file}: {where}: {message}")
    return problems


def parse_config(
    data: Any,
    *,
    file: str = "<config>",
    env: Mapping[str, str] | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
) -> GatewayConfig:
    """Validate parsed YAML into a :class:`GatewayConfig`, including each destination's settings.

    Raises:
        ConfigError: with every problem found, each naming the file and the key path.
    """
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{file}: the file must hold a mapping (server, storage, sources, ...)"])
    data = interpolate_env(data, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError([f"{file}: {p}" for p in problems])
    if plugin_manager is not None:
        _apply_type_defaults(data.get("destinations"), plugin_manager)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, model=GatewayConfig, prefix="", file=file))
    if plugin_manager is not None:
        problems.extend(_destination_problems(data.get("destinations"), plugin_manager, file))
        if config is not None and not problems:
            from gateway.pipeline.build import pipeline_problems  # noqa: PLC0415 - import cycle

            problems.extend(pipeline_problems(config, plugin_manager, file))
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _apply_type_defaults(destinations: Any, plugin_manager: pluggy.PluginManager) -> None:
    """Give each destination without a ``batch`` key its type's ``default_batch``."""
    from gateway.plugins import destination_types  # noqa: PLC0415 - avoids an import cycle

    if not isinstance(destinations, list):
        return
    types = destination_types(plugin_manager)
    for dest in destinations:
        if isinstance(dest, dict) and "batch" not in dest and dest.get("type") in types:
            default = types[dest["type"]].cls.default_batch
            if default is not None:
                dest["batch"] = dict(default)


def _destination_problems(
    destinations: Any, plugin_manager: pluggy.PluginManager, file: str
) -> list[str]:
    """Check each destination's type and settings against the installed plugins.

    Works on the raw mapping, so these problems are reported beside any others.
    """
    from gateway.plugins import destination_types  # noqa: PLC0415 - avoids an import cycle

    if not isinstance(destinations, list):
        return []
    types = destination_types(plugin_manager)
    problems: list[str] = []
    for i, dest in enumerate(destinations):
        if not isinstance(dest, dict) or not isinstance(dest.get("type"), str):
            continue  # the model's validation reports it
        dtype = types.get(dest["type"])
        if dtype is None:
            problems.append(
                f"{file}: destinations[{i}].type: unknown destination type {dest['type']!r}; "
                f"installed types: {', '.join(sorted(types)) or 'none'}"
            )
            continue
        model = dtype.cls.settings_model
        try:
            model.model_validate(dest.get("settings") or {})
        except ValidationError as exc:
            prefix = f"destinations[{i}].settings"
            problems.extend(_problems_from(exc, model=model, prefix=prefix, file=file))
    return problems


def load_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
) -> GatewayConfig:
    """Read, interpolate and validate the YAML file at ``path``.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the file: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{file}: {where}: {problem}"]) from exc
    return parse_config(data, file=file, env=env, plugin_manager=plugin_manager)
