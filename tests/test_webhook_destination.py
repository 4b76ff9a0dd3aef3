"""Tests of the built-in ``webhook`` destination (destinations/webhook.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from pydantic import ValidationError

from destinations.webhook import WebhookDestination, WebhookSettings
from gateway.destination import Destination, deliver
from gateway.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.plugins import destination_types, make_plugin_manager
from gateway.testing import DestinationContract, make_event

SECRET_A = "whsec_" + base64.b64encode(b"first secret key, 32 bytes long!").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second secret key, rotated in...").decode()
SHARED_SECRET = "segment-shared-secret"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the receiver saw it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records every request and answers as told."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.status = 200
        self.status_for: dict[str, int] = {}  # by webhook-id
        self.statuses: list[int] = []  # answered first, one per request
        self.response_headers: dict[str, str] = {}
        self.response_body = b""
        self.echo_headers = False
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.server: TestServer | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve on a free port, over TLS if ``ssl_context`` is given."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app)
        await self.server.start_server(ssl=ssl_context)

    async def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            await self.server.close()

    def url(self, path: str = "/hook") -> str:
        """The absolute URL of ``path`` on this receiver."""
        assert self.server is not None
        return str(self.server.make_url(path))

    def messages(self) -> list[dict[str, Any]]:
        """Every message received, decoded; a batch body contributes each of its elements."""
        messages: list[dict[str, Any]] = []
        for recorded in self.requests:
            decoded = orjson.loads(recorded.body)
            messages.extend(decoded if isinstance(decoded, list) else [decoded])
        return messages

    async def _handle(self, request: web.Request) -> web.Response:
        recorded = Recorded(
            request.method,
            request.path,
            request.query_string,
            {str(name): value for name, value in request.headers.items()},
            await request.read(),
        )
        self.requests.append(recorded)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        status = self.statuses.pop(0) if self.statuses else self.status
        status = self.status_for.get(recorded.headers.get("webhook-id", ""), status)
        body = self.response_body
        if self.echo_headers:
            body = orjson.dumps(recorded.headers) + body
        return web.Response(status=status, headers=self.response_headers, body=body)


def verify_standard_webhook(
    secret: str, signature: str, headers: Mapping[str, str], body: bytes
) -> bool:
    """What a receiver does: recompute HMAC-SHA256 over ``id.timestamp.body`` and compare."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.digest(key, signed, "sha256")).decode()
    version, _, value = signature.partition(",")
    return version == "v1" and hmac.compare_digest(expected, value)


def signatures(headers: Mapping[str, str]) -> list[str]:
    """The space-separated signatures of the webhook-signature header."""
    return headers["webhook-signature"].split(" ")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


Opener = Callable[..., Awaitable[WebhookDestination]]


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.close()


@pytest.fixture(name="open_destination")
async def _open_destination(receiver: Receiver) -> AsyncIterator[Opener]:
    opened: list[WebhookDestination] = []

    async def open_destination(**settings: Any) -> WebhookDestination:
        settings.setdefault("url", receiver.url())
        destination = WebhookDestination("hook", WebhookSettings(**settings))
        await destination.open()
        opened.append(destination)
        return destination

    yield open_destination
    for destination in opened:
        await destination.close()


async def deliver_one(destination: WebhookDestination, seq: int = 1) -> DeliveryError | None:
    """Deliver ``make_event(seq)`` and return its outcome."""
    [outcome] = await deliver(destination, [make_event(seq)])
    return outcome


class TestWebhookDestinationContract(DestinationContract):
    """The webhook destination in per_event mode passes the destination contract."""

    settings: ClassVar[dict[str, Any]] = {"secrets": [SECRET_A]}

    @pytest.fixture(name="destination")
    async def _destination(self, receiver: Receiver) -> WebhookDestination:
        self.receiver = receiver
        settings = WebhookSettings(url=receiver.url(), **self.settings)
        destination = WebhookDestination("hook", settings)
        await destination.open()
        return destination

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        return self.receiver.messages()


class TestBatchWebhookDestinationContract(TestWebhookDestinationContract):
    """The webhook destination in batch mode passes the destination contract."""

    settings: ClassVar[dict[str, Any]] = {"secrets": [SECRET_A], "mode": "batch"}


def test_registered_as_builtin_plugin() -> None:
    """The built-in plugin registers WebhookDestination as type ``webhook``."""
    found = destination_types(make_plugin_manager(load_entry_points=False))
    assert found["webhook"].cls is WebhookDestination
    assert found["webhook"].plugin == "destinations.webhook"


async def test_per_event_request_carries_raw_body_and_headers(
    open_destination: Opener, receiver: Receiver
) -> None:
    """Each event is one request: its raw bytes, JSON content type, User-Agent, extra headers."""
    url = receiver.url("/in?team=a")
    destination = await open_destination(url=url, method="PUT", headers={"X-Team": "a"})
    events = [make_event(1), make_event(2)]
    assert await deliver(destination, events) == [None, None]
    by_id = {r.headers["webhook-id"]: r for r in receiver.requests}
    assert set(by_id) == {"web-00000001", "web-00000002"}
    for event in events:
        recorded = by_id[event.message_id]
        assert recorded.body == event.raw
        assert (recorded.method, recorded.path, recorded.query) == ("PUT", "/in", "team=a")
        assert recorded.headers["Content-Type"] == "application/json"
        assert recorded.headers["User-Agent"].startswith("eventgate/")
        assert recorded.headers["X-Team"] == "a"
        assert "webhook-signature" not in recorded.headers
        assert "X-Signature" not in recorded.headers
        assert abs(int(recorded.headers["webhook-timestamp"]) - time.time()) < 5


async def test_standard_webhooks_signature_verifies(
    open_destination: Opener, receiver: Receiver
) -> None:
    """A receiver recomputing HMAC-SHA256 over id.timestamp.body accepts every request."""
    destination = await open_destination(secrets=[SECRET_A])
    assert await deliver(destination, [make_event(seq) for seq in range(1, 4)]) == [None] * 3
    assert len(receiver.requests) == 3
    for recorded in receiver.requests:
        [signature] = signatures(recorded.headers)
        assert verify_standard_webhook(SECRET_A, signature, recorded.headers, recorded.body)
        assert not verify_standard_webhook(SECRET_B, signature, recorded.headers, recorded.body)


async def test_rotation_sends_one_signature_per_secret(
    open_destination: Opener, receiver: Receiver
) -> None:
    """With two secrets the header holds two signatures, each verifying with its own secret."""
    destination = await open_destination(secrets=[SECRET_A, SECRET_B])
    assert await deliver_one(destination) is None
    [recorded] = receiver.requests
    first, second = signatures(recorded.headers)
    assert verify_standard_webhook(SECRET_A, first, recorded.headers, recorded.body)
    assert verify_standard_webhook(SECRET_B, second, recorded.headers, recorded.body)


async def test_webhook_id_is_the_message_id_on_every_retry(
    open_destination: Opener, receiver: Receiver
) -> None:
    """webhook-id equals the messageId, on the failed attempt and on its retry alike."""
    receiver.statuses = [503]
    destination = await open_destination(secrets=[SECRET_A])
    assert isinstance(await deliver_one(destination), RetryableDeliveryError)
    assert await deliver_one(destination) is None
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["web-00000001"] * 2
    for recorded in receiver.requests:
        [signature] = signatures(recorded.headers)
        assert verify_standard_webhook(SECRET_A, signature, recorded.headers, recorded.body)


async def test_x_signature_is_hmac_sha1_of_the_body(
    open_destination: Opener, receiver: Receiver
) -> None:
    """With segment_shared_secret, X-Signature is the hex HMAC-SHA1 of the exact body."""
    destination = await open_destination(segment_shared_secret=SHARED_SECRET, mode="batch")
    assert await deliver(destination, [make_event(1), make_event(2)]) == [None, None]
    [recorded] = receiver.requests
    expected = hmac.new(SHARED_SECRET.encode(), recorded.body, hashlib.sha1).hexdigest()
    assert recorded.headers["X-Signature"] == expected


async def test_batch_mode_sends_one_json_array(
    open_destination: Opener, receiver: Receiver
) -> None:
    """Batch mode sends one request whose body is the events' raw JSON joined into an array."""
    destination = await open_destination(mode="batch", secrets=[SECRET_A])
    events = [make_event(seq) for seq in range(1, 6)]
    assert await deliver(destination, events) == [None] * 5
    assert await deliver(destination, events) == [None] * 5
    first, again = receiver.requests
    assert first.body == b"[" + b",".join(e.raw for e in events) + b"]"
    assert [m["messageId"] for m in orjson.loads(first.body)] == [e.message_id for e in events]
    assert first.headers["webhook-id"].startswith("web-00000001-batch-")
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    [signature] = signatures(first.headers)
    assert verify_standard_webhook(SECRET_A, signature, first.headers, first.body)


async def test_batch_mode_failure_applies_to_every_event(
    open_destination: Opener, receiver: Receiver
) -> None:
    """In batch mode one failed request fails every event of the batch."""
    receiver.status = 500
    destination = await open_destination(mode="batch")
    outcomes = await deliver(destination, [make_event(1), make_event(2)])
    assert all(isinstance(outcome, RetryableDeliveryError) for outcome in outcomes)
    assert len(receiver.requests) == 1


async def test_per_event_outcomes_are_independent(
    open_destination: Opener, receiver: Receiver
) -> None:
    """One rejected event fails alone; the others of the batch are delivered."""
    receiver.status_for = {"web-00000002": 400}
    destination = await open_destination()
    outcomes = await deliver(destination, [make_event(1), make_event(2), make_event(3)])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert outcomes[2] is None


async def test_per_event_concurrency_is_bounded(
    open_destination: Opener, receiver: Receiver
) -> None:
    """Events go out concurrently, never more than max_connections at once."""
    receiver.delay_s = 0.05
    destination = await open_destination(max_connections=2)
    assert await deliver(destination, [make_event(seq) for seq in range(6)]) == [None] * 6
    assert receiver.max_in_flight == 2


async def test_message_id_unusable_as_header_fails_only_its_event(
    open_destination: Opener, receiver: Receiver
) -> None:
    """A messageId with a line break fails permanently without a request; the rest arrive."""
    destination = await open_destination()
    outcomes = await deliver(destination, [make_event(1, messageId="a\nb"), make_event(2)])
    assert isinstance(outcomes[0], PermanentDeliveryError)
    assert "webhook-id" in outcomes[0].reason
    assert outcomes[1] is None
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["web-00000002"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *(pytest.param(s, None, id=f"{s}-delivered") for s in (200, 201, 204)),
        *(
            pytest.param(s, RetryableDeliveryError, id=f"{s}-retryable")
            for s in (408, 423, 429, 500, 502, 503, 504)
        ),
        *(
            pytest.param(s, PermanentDeliveryError, id=f"{s}-permanent")
            for s in (501, 505, 400, 401, 403, 404, 422)
        ),
    ],
)
async def test_status_classification(
    open_destination: Opener,
    receiver: Receiver,
    status: int,
    expected: type[DeliveryError] | None,
) -> None:
    """Each response status maps to delivered, retryable or permanent as WIRE.md section 6 says."""
    receiver.status = status
    destination = await open_destination()
    outcome = await deliver_one(destination)
    if expected is None:
        assert outcome is None
    else:
        assert type(outcome) is expected
        assert outcome.reason == f"HTTP {status} from 127.0.0.1"


async def test_410_is_permanent_and_logged_as_gone(receiver: Receiver) -> None:
    """410 fails permanently as 'gone' and logs webhook.gone with a credential-free URL."""
    receiver.status = 410
    url = receiver.url("/hook?token=tok_query").replace("://", "://user:pw_userinfo@")
    destination = WebhookDestination("hook", WebhookSettings(url=url))
    await destination.open()
    try:
        with structlog.testing.capture_logs() as logs:
            outcome = await deliver_one(destination)
    finally:
        await destination.close()
    assert isinstance(outcome, PermanentDeliveryError)
    assert outcome.reason == "410 Gone: the endpoint is gone"
    [entry] = [e for e in logs if e["event"] == "webhook.gone"]
    assert entry["log_level"] == "error"
    assert entry["destination"] == "hook"
    assert entry["url"] == receiver.url("/hook")
    assert "tok_query" not in str(outcome.request)
    assert "pw_userinfo" not in str(outcome.request)


@pytest.mark.parametrize("status", [pytest.param(301, id="301"), pytest.param(302, id="302")])
async def test_redirects_are_permanent_and_not_followed(
    open_destination: Opener, receiver: Receiver, status: int
) -> None:
    """A 3xx fails permanently, naming the target, and the target is never requested."""
    receiver.status = status
    receiver.response_headers = {"Location": "/moved?sig=tok_location"}
    destination = await open_destination()
    outcome = await deliver_one(destination)
    assert isinstance(outcome, PermanentDeliveryError)
    assert "redirects are not followed" in outcome.reason
    assert receiver.url("/moved") in outcome.reason
    assert "tok_location" not in outcome.reason
    assert [r.path for r in receiver.requests] == ["/hook"]


def _in_30_s() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        pytest.param(lambda: "7", 7.0, 7.0, id="seconds"),
        pytest.param(_in_30_s, 25.0, 35.0, id="http-date"),
        pytest.param(lambda: "soon, probably", None, None, id="garbage"),
    ],
)
async def test_retry_after_becomes_retry_after_s(
    open_destination: Opener,
    receiver: Receiver,
    header: Callable[[], str],
    low: float | None,
    high: float | None,
) -> None:
    """Retry-After in seconds or as an HTTP date is the error's retry_after_s; garbage is None."""
    receiver.status = 429
    receiver.response_headers = {"Retry-After": header()}
    destination = await open_destination()
    outcome = await deliver_one(destination)
    assert isinstance(outcome, RetryableDeliveryError)
    if low is None or high is None:
        assert outcome.retry_after_s is None
    else:
        assert outcome.retry_after_s is not None
        assert low <= outcome.retry_after_s <= high


async def test_slow_receiver_times_out_retryably(
    open_destination: Opener, receiver: Receiver
) -> None:
    """A receiver slower than timeout_s yields a retryable 'timeout' error, quickly."""
    receiver.delay_s = 0.5
    destination = await open_destination(timeout_s=0.05)
    started = time.monotonic()
    outcome = await deliver_one(destination)
    assert time.monotonic() - started < 0.4
    assert isinstance(outcome, RetryableDeliveryError)
    assert outcome.reason == "timeout after 0.05 s"
    assert outcome.request is not None


async def test_refused_connection_is_retryable(open_destination: Opener) -> None:
    """Nothing listening on the port is a retryable connection error."""
    destination = await open_destination(url=f"http://127.0.0.1:{closed_port()}/hook")
    outcome = await deliver_one(destination)
    assert isinstance(outcome, RetryableDeliveryError)
    assert outcome.reason.startswith("connection error: ClientConnectorError")


@pytest.mark.parametrize(
    ("exception", "reason"),
    [
        pytest.param(TimeoutError(), "timeout after 10 s", id="timeout"),
        pytest.param(
            aiohttp.ServerDisconnectedError(),
            "connection error: ServerDisconnectedError",
            id="disconnected",
        ),
    ],
)
async def test_transport_failures_are_retryable(
    open_destination: Opener, exception: Exception, reason: str
) -> None:
    """Timeouts and dropped connections reported by aiohttp are retryable, with a short reason."""
    url = "http://hooks.example.com/in"
    destination = await open_destination(url=url)
    with aioresponses() as mocked:
        mocked.post(url, exception=exception)
        outcome = await deliver_one(destination)
    assert isinstance(outcome, RetryableDeliveryError)
    assert outcome.reason == reason


async def test_samples_are_truncated_and_free_of_secrets(
    open_destination: Opener, receiver: Receiver
) -> None:
    """request/response samples stop at 2 KB and never hold a header secret or signing secret."""
    receiver.status = 500
    receiver.echo_headers = True  # as some debugging endpoints do
    receiver.response_body = b"x" * 5000
    destination = await open_destination(
        url=receiver.url("/hook?api_key=tok_query"),
        headers={"Authorization": "Bearer sek_test"},
        secrets=[SECRET_A],
        segment_shared_secret=SHARED_SECRET,
    )
    [outcome] = await deliver(destination, [make_event(1, properties={"blob": "y" * 5000})])
    assert isinstance(outcome, RetryableDeliveryError)
    assert outcome.request is not None
    assert outcome.response is not None
    assert outcome.request.startswith(f"POST {receiver.url('/hook')}\n\n")
    assert outcome.response.startswith("HTTP/1.1 500 Internal Server Error\n\n")
    for sample in (outcome.request, outcome.response):
        assert "truncated" in sample
        assert len(sample) < 2048 + 200
        for secret in ("sek_test", SECRET_A, SECRET_A.removeprefix("whsec_"), SHARED_SECRET):
            assert secret not in sample
        assert "tok_query" not in sample
    assert "webhook-signature" in outcome.response  # the echo is there, only scrubbed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"secrets": ["MfKQ9r8GKYqrTwjU"]}, "whsec_", id="secret-without-prefix"),
        pytest.param({"secrets": [SECRET_A, "whsec_not*base64!"]}, "#2", id="secret-not-base64"),
        pytest.param({"secrets": ["whsec_"]}, "whsec_", id="secret-empty-key"),
        pytest.param({"url": "ftp://example.com/in"}, "http", id="ftp-url"),
        pytest.param({"url": "example.com/in"}, "http", id="relative-url"),
        pytest.param({"url": "http://"}, "http", id="url-without-host"),
        pytest.param({"method": "GET"}, "POST", id="get-method"),
        pytest.param({"headers": {"webhook-id": "x"}}, "itself", id="own-header"),
        pytest.param({"headers": {"X-A": "a\r\nX-B: b"}}, "line break", id="header-injection"),
        pytest.param({"timeout_s": 0}, "greater than 0", id="zero-timeout"),
        pytest.param({"ca_bundle": "/nonexistent/ca.pem"}, "not a file", id="missing-ca"),
        pytest.param({"segment_shared_secret": ""}, "empty", id="empty-shared-secret"),
        pytest.param({"retries": 3}, "retries", id="unknown-key"),
    ],
)
def test_settings_are_validated(settings: dict[str, Any], message: str) -> None:
    """Bad secrets, URLs and other settings fail validation at startup, without echoing secrets."""
    with pytest.raises(ValidationError, match=message) as info:
        WebhookSettings.model_validate({"url": "https://example.com/in", **settings})
    for secret in ("MfKQ9r8GKYqrTwjU", "not*base64!", "a\r\nX-B", "example.com/in"):
        assert secret not in str(info.value)


def test_secrets_and_header_values_stay_out_of_repr() -> None:
    """Printing the settings shows neither the signing secrets nor the header values."""
    settings = WebhookSettings(
        url="https://example.com/in",
        headers={"Authorization": "Bearer sek_test"},
        secrets=[SECRET_A],
        segment_shared_secret=SHARED_SECRET,
    )
    for secret in ("sek_test", SECRET_A, SHARED_SECRET):
        assert secret not in repr(settings)


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A CA-capable self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    pytest.importorskip("cryptography", reason="the https test generates its certificate with it")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventgate test receiver")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(name="https_receiver")
async def _https_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, Path]]:
    cert_path, key_path = write_self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    receiver = Receiver()
    await receiver.start(context)
    yield receiver, cert_path
    await receiver.close()


async def test_ca_bundle_is_trusted_for_tls(
    open_destination: Opener, https_receiver: tuple[Receiver, Path]
) -> None:
    """A self-signed https receiver fails verification by default and works with ca_bundle."""
    receiver, cert_path = https_receiver
    untrusting = await open_destination(url=receiver.url())
    outcome = await deliver_one(untrusting)
    assert isinstance(outcome, RetryableDeliveryError)
    assert "Certificate" in outcome.reason
    trusting = await open_destination(url=receiver.url(), ca_bundle=cert_path)
    assert await deliver_one(trusting) is None
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["web-00000001"]


def test_a_failed_requests_exceptions_drop_their_frames() -> None:
    """The exceptions of a failed request keep no frames (which would hold its body alive)."""
    from destinations.webhook import _drop_tracebacks

    def fail() -> None:
        body = b"x" * 100_000  # a local of the failing frame, as aiohttp's request body is
        try:
            raise OSError(111, "refused", body[:1])
        except OSError as inner:
            raise aiohttp.ClientConnectionError("cannot connect") from inner

    with pytest.raises(aiohttp.ClientError) as caught:
        fail()
    exc = caught.value
    _drop_tracebacks(exc)
    assert exc.__traceback__ is None
    assert exc.__cause__ is not None
    assert exc.__cause__.__traceback__ is None
