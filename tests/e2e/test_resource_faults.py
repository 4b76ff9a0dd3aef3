"""Resource faults against the real gateway: a full disk, 10,000 concurrent clients, slow clients.

What the gateway does in each case, and the figures measured here, are in docs/operations.md.
``EVENTGATE_HEAVY=1`` runs the larger variants by hand (more clients, a bigger disk to fill).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import WRITE_KEY
from tests.e2e.conftest import Gateway

HEAVY = os.environ.get("EVENTGATE_HEAVY") == "1"
DISK_MB = 64 if HEAVY else 16
# What the disk-full test leaves free for events before the disk is full.
FREE_MB = 40 if HEAVY else 3
CLIENTS = 20_000 if HEAVY else 10_000
SLOW_CLIENTS = 5_000 if HEAVY else 2_000
# Descriptors an ingress process holds besides its client connections (log, control store,
# metrics files, event loop, pipes; about 30 measured), with room to spare.
BASELINE_FDS = 100
_AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


# -- helpers -------------------------------------------------------------------------------


def ingress_pids(gateway: Gateway) -> list[int]:
    """The router's child processes (the ingress processes)."""
    assert gateway.process is not None
    router = gateway.process.pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == router:
                found.append(int(entry.name))
    return sorted(found)


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_files_limits(pid: int) -> tuple[int, int]:
    """The soft and hard limits of open files of ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def fds_by_process(gateway: Gateway) -> dict[int, int]:
    """Open descriptors of the router and of each ingress process."""
    assert gateway.process is not None
    pids = [gateway.process.pid, *ingress_pids(gateway)]
    return {pid: open_fds(pid) for pid in pids}


def wait_until_ingress_ready(gateway: Gateway, processes: int, timeout_s: float = 30) -> None:
    """Wait until every ingress process has opened its log and control store (the last file it
    opens before serving)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = ingress_pids(gateway)
        ready = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fd_dir = Path(f"/proc/{pid}/fd")
                targets = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
                ready += any(t.endswith("control.db") for t in targets)
        if len(pids) == processes and ready == processes:
            return
        time.sleep(0.05)
    raise AssertionError(f"the ingress processes did not start:\n{gateway.output()}")


def track_batch(ids: list[str], pad: int = 0) -> bytes:
    """A /v1/batch body of one track per id, each carrying ``pad`` bytes of properties."""
    properties = {"pad": "x" * pad} if pad else {}
    batch = [
        {"type": "track", "userId": "u1", "event": "Fill", "messageId": m, "properties": properties}
        for m in ids
    ]
    return orjson.dumps({"writeKey": WRITE_KEY, "batch": batch})


def refusal(status: int, body: bytes, headers: Any) -> str:
    """The ``code`` of a storage refusal, checking it is one (503, JSON, ``Retry-After``)."""
    assert status == 503, (status, body)
    payload = orjson.loads(body)
    assert payload["success"] is False
    assert payload["code"] in ("storage_full", "storage_unavailable"), payload
    assert headers["Retry-After"].isdigit(), headers
    return str(payload["code"])


async def send_until_refused(
    gateway: Gateway,
    acknowledged: set[str],
    refusals: Counter[str],
    *,
    prefix: str,
    pad: int,
    wanted: int = 20,
) -> None:
    """Four concurrent senders post batches until the gateway has refused ``wanted`` more."""
    target = sum(refusals.values()) + wanted
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def sender(number: int) -> None:
            request = 0
            while sum(refusals.values()) < target:
                request += 1
                ids = [f"{prefix}-{number}-{request}-{i}" for i in range(20)]
                async with session.post(
                    f"{gateway.url}/v1/batch", data=track_batch(ids, pad)
                ) as response:
                    body = await response.read()
                    if response.status == 200:
                        acknowledged.update(ids)
                    else:
                        refusals[refusal(response.status, body, response.headers)] += 1

        await asyncio.gather(*(sender(n) for n in range(4)))


async def post_until_accepted(
    gateway: Gateway, acknowledged: set[str], prefix: str, timeout_s: float
) -> float:
    """Post one-event batches until one is answered 200 (every other answer must be a storage
    refusal); return how long that took."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for attempt in range(1_000_000):
            ids = [f"{prefix}-{attempt}"]
            async with session.post(f"{gateway.url}/v1/batch", data=track_batch(ids)) as response:
                body = await response.read()
                if response.status == 200:
                    acknowledged.update(ids)
                    return time.monotonic() - started
                refusal(response.status, body, response.headers)
            assert time.monotonic() - started < timeout_s, "ingress never accepted again"
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def small_file_system(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``path`` (root only), unmounted afterwards."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CAP_SYS_ADMIN)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size_mb} MB tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_bytes: int) -> Path:
    """Write a file at ``path`` taking all free space of its file system but ``leave_bytes``."""
    stat = os.statvfs(path.parent)
    size = stat.f_bavail * stat.f_frsize - leave_bytes
    with path.open("wb") as filler:
        filler.truncate(0)
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= filler.write(chunk[: min(size, len(chunk))])
    return path


def assert_nothing_died(gateway: Gateway) -> None:
    """The router runs and has never had to restart an ingress process."""
    assert gateway.process is not None
    assert gateway.process.poll() is None, gateway.output()
    assert "supervisor.ingress_died" not in gateway.output(), gateway.output()


# -- a full disk ---------------------------------------------------------------------------


async def test_full_disk_answers_503_and_recovers_without_loss(tmp_path: Path) -> None:
    """On a file system that fills up (a real ENOSPC, the quota set above its size), ingress
    answers 503 with a JSON code and Retry-After, nothing crashes (also across a restart while
    full), ingress accepts again by itself once space is freed, and every event answered 200
    reaches the files on another file system."""
    with small_file_system(tmp_path / "disk", DISK_MB) as disk:
        gateway = Gateway(
            tmp_path,
            ingress_processes=2,
            storage={"data_dir": str(disk / "data"), "disk_quota_mb": 10 * DISK_MB},
        )
        gateway.start()
        try:
            await asyncio.to_thread(wait_until_ingress_ready, gateway, 2)
            filler = fill(disk / "filler", leave_bytes=FREE_MB << 20)
            acknowledged: set[str] = set()
            refusals: Counter[str] = Counter()
            await send_until_refused(gateway, acknowledged, refusals, prefix="a", pad=10_000)
            assert acknowledged, "nothing was accepted before the disk filled"
            assert_nothing_died(gateway)

            # A restart while the disk is full (shutdown checkpoints free a little: fill that
            # too): the processes start and refuse politely.
            assert await asyncio.to_thread(gateway.terminate) == 0, gateway.output()
            gateway.start()
            await asyncio.to_thread(wait_until_ingress_ready, gateway, 2)
            topped_up = fill(disk / "filler-2", leave_bytes=0)
            refused_before = sum(refusals.values())
            await asyncio.wait_for(
                send_until_refused(gateway, acknowledged, refusals, prefix="b", pad=10_000),
                60,
            )
            assert sum(refusals.values()) >= refused_before + 20

            topped_up.unlink()
            filler.unlink()
            recovered_s = await post_until_accepted(gateway, acknowledged, "after", timeout_s=30)
            print(f"refusals {dict(refusals)}; accepted again {recovered_s:.2f} s after freeing")
            await asyncio.to_thread(gateway.wait_for_files, acknowledged, 60)
            assert_nothing_died(gateway)
        finally:
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.kill()


async def test_disk_quota_answers_503_until_compaction_frees_room(tmp_path: Path) -> None:
    """With ``storage.disk_quota_mb`` reached, ingress answers 503 with Retry-After; once the
    file destination has the events and compaction deletes them, ingress accepts again by
    itself and every event answered 200 is delivered."""
    gateway = Gateway(tmp_path, ingress_processes=2, storage={"disk_quota_mb": 2})
    gateway.start()
    try:
        await asyncio.to_thread(wait_until_ingress_ready, gateway, 2)
        acknowledged: set[str] = set()
        refusals: Counter[str] = Counter()
        await send_until_refused(gateway, acknowledged, refusals, prefix="q", pad=10_000)
        assert set(refusals) == {"storage_full"}, refusals
        recovered_s = await post_until_accepted(gateway, acknowledged, "after", timeout_s=45)
        print(f"refusals {dict(refusals)}; accepted again after {recovered_s:.2f} s")
        await asyncio.to_thread(gateway.wait_for_files, acknowledged, 60)
        assert_nothing_died(gateway)
    finally:
        gateway.kill()


# -- many clients --------------------------------------------------------------------------


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's soft limit of open files to cover ``needed`` (skip if the hard limit
    cannot)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"{needed} connections need {needed} open files; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def keep_alive_client(
    url_port: int, opened: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that asked for /health once and is now an idle keep-alive connection."""
    async with opened:
        reader, writer = await asyncio.open_connection("127.0.0.1", url_port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        status, _ = await read_response(reader)
        assert status == 200
        return reader, writer


async def normal_requests(gateway: Gateway, count: int, within_s: float) -> float:
    """``count`` track calls, each on a new connection, each answered 200 within ``within_s``;
    return the slowest answer's time."""
    slowest = 0.0
    timeout = aiohttp.ClientTimeout(total=within_s)
    for n in range(count):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            started = time.monotonic()
            body = {"writeKey": WRITE_KEY, "userId": "u1", "event": "Normal", "messageId": f"n{n}"}
            async with session.post(f"{gateway.url}/v1/track", json=body) as response:
                assert response.status == 200, await response.text()
            slowest = max(slowest, time.monotonic() - started)
    return slowest


async def test_ten_thousand_connections_stay_bounded(tmp_path: Path) -> None:
    """10,000 concurrent keep-alive clients: every one is answered, other clients are still
    answered within 5 s, each ingress process holds about one descriptor per connection it
    serves, idle connections are closed after ``keepalive_timeout_s`` and the descriptors come
    back to where they started, nothing crashes."""
    raise_open_files_limit(CLIENTS + 1_000)
    gateway = Gateway(tmp_path, ingress_processes=2)
    config = gateway.config_path.read_text().replace(
        "shutdown_grace_s: 5", "shutdown_grace_s: 5\n  keepalive_timeout_s: 8"
    )
    gateway.config_path.write_text(config)
    # The gateway raises its own soft limit to the hard one: start it with the usual 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        gateway.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await asyncio.to_thread(wait_until_ingress_ready, gateway, 2)
        for pid in ingress_pids(gateway):
            if hard != resource.RLIM_INFINITY:  # the gateway raised its soft limit itself
                assert open_files_limits(pid) == (hard, hard)
        before = fds_by_process(gateway)
        started = time.monotonic()
        opened = asyncio.Semaphore(500)
        connections = await asyncio.gather(
            *(keep_alive_client(gateway.port, opened) for _ in range(CLIENTS))
        )
        opened_s = time.monotonic() - started
        held = fds_by_process(gateway)
        slowest = await normal_requests(gateway, 20, within_s=5)
        router = gateway.process.pid if gateway.process else 0
        ingress = [pid for pid in held if pid != router]
        print(
            f"{CLIENTS} connections opened and answered in {opened_s:.1f} s; fds before {before}, "
            f"holding {held}; slowest other client {slowest:.2f} s"
        )
        assert held[router] <= before[router] + 10, (before, held)
        assert sum(held[pid] for pid in ingress) >= CLIENTS
        for pid in ingress:
            assert held[pid] <= before[pid] + CLIENTS, (before, held)

        # Idle keep-alive connections are closed by the gateway, not by the clients.
        closing = time.monotonic()
        ends = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in connections)), 30
        )
        closed_s = time.monotonic() - closing
        assert all(end == b"" for end in ends)
        deadline = time.monotonic() + 10
        while any(fds_by_process(gateway)[pid] > before[pid] + BASELINE_FDS for pid in ingress):
            assert time.monotonic() < deadline, fds_by_process(gateway)
            await asyncio.sleep(0.1)
        print(f"idle connections closed by the gateway within {closed_s:.1f} s")
        await normal_requests(gateway, 5, within_s=5)
        assert_nothing_died(gateway)
    finally:
        for _, writer in connections:
            writer.close()
        gateway.kill()


# -- slow clients --------------------------------------------------------------------------

SLOW_TIMEOUT_S = 3


async def slow_client(port: int, body: bool, opened: asyncio.Semaphore) -> tuple[float, int | None]:
    """A slowloris connection: it trickles one byte a second, of its headers or (after complete
    headers) of its body, until the gateway closes it; return after how many seconds, and the
    status of an answer it got first, if any."""
    async with opened:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    if body:
        writer.write(
            b"POST /v1/track HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Authorization: " + _AUTH.encode() + b"\r\nContent-Length: 10000\r\n\r\n{"
        )
    else:
        writer.write(b"POST /v1/track HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            while True:
                await asyncio.sleep(1)
                writer.write(b"a")
                await writer.drain()

    trickling = asyncio.create_task(trickle())
    status = None
    try:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            status, _ = await read_response(reader)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        return time.monotonic() - started, status
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickling
        writer.close()


async def test_slow_clients_are_cut_off_and_do_not_starve_others(tmp_path: Path) -> None:
    """2,000 slowloris clients (half trickling headers, half a body) do not keep a normal client
    from a 200 within 5 s; the gateway closes slow-header connections after
    ``keepalive_timeout_s`` and answers slow bodies 408 after it, closing them at most 10 s
    (aiohttp's lingering time) later."""
    raise_open_files_limit(SLOW_CLIENTS + 1_000)
    gateway = Gateway(tmp_path, ingress_processes=2)
    config = gateway.config_path.read_text().replace(
        "shutdown_grace_s: 5", f"shutdown_grace_s: 5\n  keepalive_timeout_s: {SLOW_TIMEOUT_S}"
    )
    gateway.config_path.write_text(config)
    gateway.start()
    try:
        await asyncio.to_thread(wait_until_ingress_ready, gateway, 2)
        opened = asyncio.Semaphore(500)
        slow = [
            asyncio.create_task(slow_client(gateway.port, n % 2 == 1, opened))
            for n in range(SLOW_CLIENTS)
        ]
        await asyncio.sleep(1)  # every slow client is connected and trickling
        slowest = await normal_requests(gateway, 10, within_s=5)
        results = await asyncio.wait_for(asyncio.gather(*slow), 60)
        headers = [closed for closed, _ in results[0::2]]
        bodies = results[1::2]
        print(
            f"slowest normal client {slowest:.2f} s; slow headers closed after "
            f"{min(headers):.1f}-{max(headers):.1f} s; slow bodies answered "
            f"{Counter(s for _, s in bodies)}, closed after {min(c for c, _ in bodies):.1f}-"
            f"{max(c for c, _ in bodies):.1f} s"
        )
        assert min(headers) >= SLOW_TIMEOUT_S - 0.5
        assert max(headers) <= SLOW_TIMEOUT_S + 5
        assert {status for _, status in bodies} == {408}
        assert max(closed for closed, _ in bodies) <= SLOW_TIMEOUT_S + 10 + 5
        await normal_requests(gateway, 5, within_s=5)
        assert_nothing_died(gateway)
    finally:
        gateway.kill()
