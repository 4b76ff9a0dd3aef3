"""The built-in ``webhook`` destination: events POSTed as JSON, signed the Standard Webhooks way."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import importlib.metadata
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from yarl import URL

from gateway.destination import BatchDestination, Destination, Event
from gateway.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from gateway.plugins import hookimpl

__all__ = ["WebhookDestination", "WebhookSettings", "register_destination_types"]

log = structlog.get_logger("eventgate.destinations.webhook")

# Request and response bodies kept in a DeliveryError sample.
_SAMPLE_BYTES = 2048
_GONE = "410 Gone: the endpoint is gone"
_RETRYABLE_STATUSES = frozenset({408, 423, 429})
_NOT_RETRYABLE_5XX = frozenset({501, 505})
# Headers this destination sets itself; a configured header must not silently replace them.
_OWN_HEADERS = frozenset(
    {"content-type", "content-length", "user-agent", "x-signature", "webhook-id"}
    | {"webhook-timestamp", "webhook-signature"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A messageId usable as the webhook-id header as is: printable ASCII, no edge whitespace.
_HEADER_SAFE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
# Configured header values at least this long are scrubbed from samples (short ones are not
# secrets, and scrubbing them would garble the sample).
_MIN_REDACTED_LENGTH = 8


def _default_user_agent() -> str:
    try:
        version = importlib.metadata.version("eventgate")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return f"eventgate/{version}"


class WebhookSettings(BaseModel):
    """Settings of the ``webhook`` destination."""

    # Inputs stay out of error text: the URL may hold credentials, headers and secrets do.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(
        description="http:// or https:// URL to send to; user:password@ in it becomes Basic auth."
    )
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method.")
    headers: dict[str, str] = Field(
        {},
        repr=False,
        description="Extra request headers, e.g. Authorization; values are never logged.",
    )
    mode: Literal["per_event", "batch"] = Field(
        "per_event",
        description="per_event: one request per event; batch: one request with a JSON array.",
    )
    secrets: list[SecretStr] = Field(
        [],
        description="Standard Webhooks secrets (whsec_<base64>); several sign in parallel.",
    )
    segment_shared_secret: SecretStr | None = Field(
        None, description="If set, X-Signature carries hex HMAC-SHA1 of the body (Segment)."
    )
    timeout_s: float = Field(10.0, gt=0, description="Whole-request timeout in seconds.")
    max_connections: int = Field(
        16, ge=1, description="Concurrent requests and pooled keep-alive connections."
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_bundle: Path | None = Field(
        None, description="PEM file of the CAs to trust instead of the system ones."
    )
    user_agent: str = Field(_default_user_agent(), description="User-Agent header.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # The URL itself is never echoed: it may carry credentials.
        try:
            url = URL(value)
        except (TypeError, ValueError):
            url = None
        if url is None or url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("must be an http:// or https:// URL, e.g. https://example.com/hook")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(
                    f"{name!r} is set by the webhook destination itself; remove it"
                    + (" and use the user_agent setting" if name.lower() == "user-agent" else "")
                )
            if any(c in header_value for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} contains a line break or NUL")
        return value

    @field_validator("secrets")
    @classmethod
    def _check_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, secret in enumerate(value):
            if _secret_key(secret.get_secret_value()) is None:
                raise ValueError(
                    f"secret #{index + 1} is not whsec_ followed by base64 "
                    "(whsec_<base64 of 24 to 64 random bytes>)"
                )
        return value

    @field_validator("segment_shared_secret")
    @classmethod
    def _check_shared_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (is an ${ENV} variable empty?); or leave it out")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> WebhookSettings:
        if self.ca_bundle is not None:
            if not self.verify_tls:
                raise ValueError("ca_bundle has no effect with verify_tls: false; drop one")
            if not self.ca_bundle.is_file():
                raise ValueError(f"ca_bundle: {self.ca_bundle} is not a file")
        return self


class WebhookDestination(BatchDestination[WebhookSettings]):
    """Sends events to an HTTP endpoint as JSON, signed per Standard Webhooks.

    In ``per_event`` mode each event is one request whose body is its ``raw`` JSON, sent
    concurrently (at most ``max_connections`` at once) with one outcome per event. In ``batch``
    mode the whole batch is one request whose body is a JSON array, and its outcome applies to
    every event. Each request carries ``webhook-id`` (the messageId; in batch mode derived from
    all messageIds), ``webhook-timestamp`` and, with ``secrets``, ``webhook-signature``; with
    ``segment_shared_secret`` also Segment's ``X-Signature``. Redirects are not followed.

    2xx is delivered; connection errors, timeouts, 408, 423, 429 and 5xx other than 501 and 505
    are retryable (``Retry-After`` becomes ``retry_after_s``); everything else is permanent.
    """

    type_name = "webhook"
    display_name = "Webhook"
    supports_user_deletion = True
    settings_model = WebhookSettings

    def __init__(self, name: str, settings: WebhookSettings) -> None:
        """Create the destination; nothing is connected until :meth:`open`."""
        super().__init__(name, settings)
        self._url = URL(settings.url)
        self._public_url = str(self._url.with_user(None).with_query(None).with_fragment(None))
        self._keys = [_secret_key(s.get_secret_value()) or b"" for s in settings.secrets]
        shared = settings.segment_shared_secret
        self._shared_secret = shared.get_secret_value().encode() if shared else None
        self._headers = {
            **settings.headers,
            "Content-Type": "application/json",
            "User-Agent": settings.user_agent,
        }
        self._secret_texts = _secret_texts(settings)
        self._session: aiohttp.ClientSession | None = None
        # Without it, requests queued for a pooled connection would use up their timeout waiting.
        self._slots = asyncio.Semaphore(settings.max_connections)

    async def open(self) -> None:
        """Create the HTTP session with its keep-alive pool of ``max_connections``.

        Raises:
            ConfigError: ``ca_bundle`` cannot be loaded as PEM certificates.
        """
        tls: ssl.SSLContext | bool = self.settings.verify_tls
        if self.settings.ca_bundle is not None:
            try:
                tls = ssl.create_default_context(cafile=str(self.settings.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    [
                        f"destination {self.name}: ca_bundle: cannot load "
                        f"{self.settings.ca_bundle} ({exc}); give a PEM file of CA certificates"
                    ]
                ) from exc
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections, ssl=tls),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_batch(self, events: Sequence[Event]) -> list[DeliveryError | None]:
        """Send ``events``; one outcome per event (in ``batch`` mode all share one outcome)."""
        if self._session is None:
            raise RuntimeError("WebhookDestination.send_batch called before open()")
        if not events:
            return []
        if self.settings.mode == "batch":
            body = b"[" + b",".join(event.raw for event in events) + b"]"
            outcome = await self._post(self._session, _batch_id(events), body)
            outcomes = [outcome] * len(events)
        else:
            session = self._session
            outcomes = list(await asyncio.gather(*(self._post_event(session, e) for e in events)))
        if any(o is not None and o.reason == _GONE for o in outcomes):
            log.error("webhook.gone", destination=self.name, url=self._public_url)
        return outcomes

    async def delete_user(self, user_id: str) -> int:
        """POST ``{"type": "delete", "userId": ...}``, signed like events; 1 when accepted.

        The ``webhook-id`` is ``delete-`` and a hash of the user id, the same on every retry.
        """
        if self._session is None:
            raise RuntimeError("WebhookDestination.delete_user called before open()")
        body = orjson.dumps({"type": "delete", "userId": user_id})
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        outcome = await self._post(self._session, f"delete-{digest}", body)
        if outcome is not None:
            raise outcome
        return 1

    async def _post_event(
        self, session: aiohttp.ClientSession, event: Event
    ) -> DeliveryError | None:
        if not _HEADER_SAFE.fullmatch(event.message_id):
            return PermanentDeliveryError(
                "the messageId cannot be sent as a webhook-id header "
                "(it must be printable ASCII without leading or trailing spaces)"
            )
        async with self._slots:
            return await self._post(session, event.message_id, event.raw)

    async def _post(
        self, session: aiohttp.ClientSession, webhook_id: str, body: bytes
    ) -> DeliveryError | None:
        """Send one request; return ``None`` on 2xx, else the error. Never raises."""
        headers = self._signed_headers(webhook_id, str(int(time.time())), body)
        try:
            async with session.request(
                self.settings.method, self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                prefix = await _read_prefix(response)
                if 200 <= response.status < 300:
                    return None
                return self._failure(response, prefix, body)
        except TimeoutError as exc:
            _drop_tracebacks(exc)
            return RetryableDeliveryError(
                f"timeout after {self.settings.timeout_s:g} s", request=self._request_sample(body)
            )
        except aiohttp.ClientError as exc:
            _drop_tracebacks(exc)
            detail = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
            return RetryableDeliveryError(
                f"connection error: {type(exc).__name__}{detail}",
                request=self._request_sample(body),
            )

    def _signed_headers(self, webhook_id: str, timestamp: str, body: bytes) -> dict[str, str]:
        headers = {**self._headers, "webhook-id": webhook_id, "webhook-timestamp": timestamp}
        if self._keys:
            signed = f"{webhook_id}.{timestamp}.".encode() + body
            headers["webhook-signature"] = " ".join(
                "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()
                for key in self._keys
            )
        if self._shared_secret is not None:
            headers["X-Signature"] = hmac.new(self._shared_secret, body, "sha1").hexdigest()
        return headers

    def _failure(
        self, response: aiohttp.ClientResponse, prefix: bytes, body: bytes
    ) -> DeliveryError:
        status = response.status
        version = response.version
        status_line = f"HTTP/{version.major}.{version.minor} " if version else "HTTP "
        status_line += str(status)
        if response.reason:
            status_line += f" {response.reason}"
        samples = {
            "request": self._request_sample(body),
            "response": self._redact(f"{status_line}\n\n{_truncate(prefix)}"),
        }
        reason = f"HTTP {status} from {self._url.host}"
        if status == 410:
            return PermanentDeliveryError(_GONE, **samples)
        if 300 <= status < 400:
            return PermanentDeliveryError(
                f"{reason}: redirects are not followed{self._location(response.headers)}; "
                "set url to the final address",
                **samples,
            )
        if status in _RETRYABLE_STATUSES or (
            500 <= status < 600 and status not in _NOT_RETRYABLE_5XX
        ):
            retry_after_s = _retry_after_s(response.headers.get("Retry-After"), time.time())
            return RetryableDeliveryError(reason, retry_after_s=retry_after_s, **samples)
        return PermanentDeliveryError(reason, **samples)

    def _location(self, headers: Mapping[str, str]) -> str:
        location = headers.get("Location")
        if not location:
            return ""
        try:
            target = self._url.join(URL(location)).with_user(None).with_query(None)
        except ValueError:
            return ""
        return f" (Location: {target.with_fragment(None)})"

    def _request_sample(self, body: bytes) -> str:
        return self._redact(
            f"{self.settings.method} {self._public_url}\n\n{_truncate(body, len(body))}"
        )

    def _redact(self, text: str) -> str:
        """Scrub configured secrets, in case a body echoes them (some receivers echo headers)."""
        for secret in self._secret_texts:
            text = text.replace(secret, "[redacted]")
        return text


@hookimpl(trylast=True)
def register_destination_types() -> list[type[Destination[Any]]]:
    """Register the built-in ``webhook`` destination type."""
    return [WebhookDestination]


def _secret_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret, or ``None`` if it is not one."""
    if not secret.startswith("whsec_"):
        return None
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def _secret_texts(settings: WebhookSettings) -> list[str]:
    """Every configured secret string long enough to scrub, longest first."""
    texts = {s.get_secret_value() for s in settings.secrets}
    if settings.segment_shared_secret is not None:
        texts.add(settings.segment_shared_secret.get_secret_value())
    for value in settings.headers.values():
        texts.update((value, value.rsplit(" ", 1)[-1]))  # "Bearer <token>": the token alone too
    return sorted((t for t in texts if len(t) >= _MIN_REDACTED_LENGTH), key=len, reverse=True)


def _batch_id(events: Sequence[Event]) -> str:
    """A webhook-id for a batch, the same whenever the same events are sent again."""
    digest = hashlib.sha256(b"\0".join(e.message_id.encode() for e in events)).hexdigest()[:16]
    first = events[0].message_id
    return f"{first}-batch-{digest}" if _HEADER_SAFE.fullmatch(first) else f"batch-{digest}"


async def _read_prefix(response: aiohttp.ClientResponse) -> bytes:
    """Up to one byte more than a sample holds; a failed read keeps what arrived."""
    data = b""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        while len(data) <= _SAMPLE_BYTES:
            chunk = await response.content.read(_SAMPLE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _truncate(data: bytes, total: int | None = None) -> str:
    if len(data) <= _SAMPLE_BYTES:
        return data.decode("utf-8", "replace")
    size = f"; {total} bytes in all" if total is not None else ""
    return data[:_SAMPLE_BYTES].decode("utf-8", "replace") + f"\n... [truncated{size}]"


def _retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), else ``None``."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without saying so
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _drop_tracebacks(exc: BaseException) -> None:
    """Cut the frames a failed request's exceptions hold: through aiohttp's chained causes they
    keep the whole request body alive in a reference cycle until a full collection (the soak
    saw 42 MB of them after a destination refused connections; docs/soak.md)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
