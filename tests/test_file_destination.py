"""Tests of the built-in ``file`` destination (destinations/file.py)."""

from __future__ import annotations

import errno
import gzip
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from destinations.file import FileDestination, FileSettings
from gateway.destination import Destination, Event, deliver
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.plugins import destination_types, make_plugin_manager
from gateway.testing import DestinationContract, make_event

DAY = "2026-11-23"
LINE_BYTES = len(make_event(1).raw) + 1


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


class DiskFullOnceDestination(FileDestination):
    """A file destination that, once armed, writes half a buffer and then fails with ENOSPC."""

    fail_next_write = False

    def _write_all(self, fd: int, data: bytes) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(fd, data)


def read_file(path: Path) -> list[dict[str, Any]]:
    """The messages in one .jsonl or .jsonl.gz file, checking every line is whole."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a partial line"
    return [orjson.loads(line) for line in data.splitlines()]


def data_files(root: Path) -> list[Path]:
    """Every finished or active data file under ``root``, sorted by path."""
    return sorted(p for p in root.rglob("events-*") if p.suffix in {".jsonl", ".gz"})


def read_all(root: Path) -> list[dict[str, Any]]:
    """Every message under ``root``, file by file in name order."""
    return [message for path in data_files(root) for message in read_file(path)]


def ids(messages: list[dict[str, Any]]) -> list[str]:
    """The messageIds of ``messages`` in order."""
    return [message["messageId"] for message in messages]


Opener = Callable[..., Awaitable[FileDestination]]


@pytest.fixture(name="open_destination")
async def _open_destination(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[FileDestination] = []

    async def open_destination(
        cls: type[FileDestination] = FileDestination, clock: FakeClock | None = None, **kw: Any
    ) -> FileDestination:
        kw.setdefault("directory", tmp_path / "out")
        destination = cls("files", FileSettings(**kw), clock=clock or FakeClock())
        await destination.open()
        opened.append(destination)
        return destination

    yield open_destination
    for destination in opened:
        await destination.close()


class TestFileDestinationContract(DestinationContract):
    """The file destination with default settings passes the destination contract."""

    @pytest.fixture(name="destination")
    async def _destination(self, tmp_path: Path) -> FileDestination:
        destination = FileDestination("files", FileSettings(directory=tmp_path))
        await destination.open()
        return destination

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        assert isinstance(destination, FileDestination)
        return read_all(destination.settings.directory)


class TestGzipFileDestinationContract(TestFileDestinationContract):
    """The file destination rotating after every line into .gz files passes the contract."""

    @pytest.fixture(name="destination")
    async def _destination(self, tmp_path: Path) -> FileDestination:
        settings = FileSettings(directory=tmp_path, gzip=True, max_file_bytes=1, fsync=False)
        destination = FileDestination("files", settings)
        await destination.open()
        return destination


def test_registered_as_builtin_plugin() -> None:
    """The built-in plugin registers FileDestination as type ``file``."""
    found = destination_types(make_plugin_manager(load_entry_points=False))
    assert found["file"].cls is FileDestination
    assert found["file"].plugin == "destinations.file"


def test_settings_reject_unknown_keys(tmp_path: Path) -> None:
    """A misspelled setting fails validation instead of being ignored."""
    with pytest.raises(ValidationError, match="max_file_byte"):
        FileSettings.model_validate({"directory": str(tmp_path), "max_file_byte": 1})


async def test_lines_land_under_source_and_day(open_destination: Opener, tmp_path: Path) -> None:
    """Each event is its raw bytes plus a newline in <dir>/<source>/<receivedAt day>/."""
    destination = await open_destination()
    batch = [make_event(1, "web"), make_event(2, "ios"), make_event(3, "web")]
    assert await deliver(destination, batch) == [None, None, None]
    web = data_files(tmp_path / "out" / "web" / DAY)
    ios = data_files(tmp_path / "out" / "ios" / DAY)
    assert [p.name for p in web] == ["events-002947-000001.jsonl"]
    assert web[0].read_bytes() == batch[0].raw + b"\n" + batch[2].raw + b"\n"
    assert ios[0].read_bytes() == batch[1].raw + b"\n"


async def test_rotates_by_size(open_destination: Opener, tmp_path: Path) -> None:
    """A file never grows past max_file_bytes; the next line starts a new file."""
    destination = await open_destination(max_file_bytes=2 * LINE_BYTES + 1)
    batch = [make_event(seq) for seq in range(1, 6)]
    assert await deliver(destination, batch) == [None] * 5
    files = data_files(tmp_path / "out")
    assert [len(read_file(p)) for p in files] == [2, 2, 1]
    assert all(p.stat().st_size <= 2 * LINE_BYTES + 1 for p in files)
    assert ids(read_all(tmp_path / "out")) == [e.message_id for e in batch]


async def test_line_larger_than_max_gets_a_file_of_its_own(
    open_destination: Opener, tmp_path: Path
) -> None:
    """An event bigger than max_file_bytes is still written, alone in its file."""
    destination = await open_destination(max_file_bytes=10)
    assert await deliver(destination, [make_event(1), make_event(2)]) == [None, None]
    assert [len(read_file(p)) for p in data_files(tmp_path / "out")] == [1, 1]


async def test_rotates_by_age_before_the_next_write(
    open_destination: Opener, tmp_path: Path
) -> None:
    """A batch arriving after max_file_age_s goes to a new file."""
    clock = FakeClock()
    destination = await open_destination(clock=clock, max_file_age_s=60)
    await deliver(destination, [make_event(1)])
    clock.advance(59)
    await deliver(destination, [make_event(2)])
    clock.advance(1)
    await deliver(destination, [make_event(3)])
    assert [len(read_file(p)) for p in data_files(tmp_path / "out")] == [2, 1]


async def test_rotate_expired_finishes_an_idle_file(
    open_destination: Opener, tmp_path: Path
) -> None:
    """rotate_expired compresses a file past its age even when no event follows."""
    clock = FakeClock()
    destination = await open_destination(clock=clock, max_file_age_s=60, gzip=True)
    await deliver(destination, [make_event(1)])
    await destination.rotate_expired()
    assert [p.suffix for p in data_files(tmp_path / "out")] == [".jsonl"]
    clock.advance(60)
    await destination.rotate_expired()
    assert [p.suffix for p in data_files(tmp_path / "out")] == [".gz"]


async def test_rotates_when_the_day_changes(open_destination: Opener, tmp_path: Path) -> None:
    """An event received on the next day finishes the file and opens one in the new day."""
    destination = await open_destination(gzip=True)
    batch = [make_event(1), make_event(2, receivedAt="2026-11-24T00:00:01.000Z")]
    assert await deliver(destination, batch) == [None, None]
    assert [p.relative_to(tmp_path / "out").as_posix() for p in data_files(tmp_path / "out")] == [
        f"web/{DAY}/events-002947-000001.jsonl.gz",
        "web/2026-11-24/events-000001-000001.jsonl",
    ]


async def test_gzip_on_rotation_keeps_every_line(open_destination: Opener, tmp_path: Path) -> None:
    """Rotated files become valid .gz files; after close nothing is left uncompressed."""
    destination = await open_destination(gzip=True, max_file_bytes=3 * LINE_BYTES)
    batch = [make_event(seq) for seq in range(1, 11)]
    assert await deliver(destination, batch) == [None] * 10
    await destination.close()
    files = data_files(tmp_path / "out")
    assert {p.suffix for p in files} == {".gz"}
    assert ids(read_all(tmp_path / "out")) == [e.message_id for e in batch]
    assert not list((tmp_path / "out").rglob("*.tmp"))


async def test_torn_tail_is_truncated_on_open(open_destination: Opener, tmp_path: Path) -> None:
    """A half-written last line left by a crash is cut off and new files never reuse the name."""
    directory = tmp_path / "out" / "web" / DAY
    directory.mkdir(parents=True)
    torn = directory / "events-002947-000001.jsonl"
    torn.write_bytes(make_event(1).raw + b"\n" + make_event(2).raw[:25])
    destination = await open_destination()
    assert torn.read_bytes() == make_event(1).raw + b"\n"
    await deliver(destination, [make_event(2)])
    assert ids(read_all(tmp_path / "out")) == ["web-00000001", "web-00000002"]
    assert data_files(directory)[-1].name == "events-002948-000002.jsonl"


async def test_file_without_any_whole_line_is_removed(
    open_destination: Opener, tmp_path: Path
) -> None:
    """A leftover file holding only part of one line is deleted on open."""
    directory = tmp_path / "out" / "web" / DAY
    directory.mkdir(parents=True)
    (directory / "events-002947-000001.jsonl").write_bytes(b'{"type":"tra')
    await open_destination()
    assert data_files(tmp_path / "out") == []


async def test_interrupted_compression_is_redone(open_destination: Opener, tmp_path: Path) -> None:
    """A leftover .gz.tmp is deleted and its file compressed again, even with gzip off."""
    directory = tmp_path / "out" / "web" / DAY
    directory.mkdir(parents=True)
    (directory / "events-002947-000001.jsonl").write_bytes(make_event(1).raw + b"\n")
    (directory / "events-002947-000001.jsonl.gz.tmp").write_bytes(b"\x1f\x8b half")
    await open_destination()
    assert [p.name for p in directory.iterdir()] == ["events-002947-000001.jsonl.gz"]
    assert ids(read_all(tmp_path / "out")) == ["web-00000001"]


async def test_finished_compression_deletes_the_original(
    open_destination: Opener, tmp_path: Path
) -> None:
    """A .jsonl whose .jsonl.gz already exists was compressed; open deletes it."""
    directory = tmp_path / "out" / "web" / DAY
    directory.mkdir(parents=True)
    line = make_event(1).raw + b"\n"
    (directory / "events-002947-000007.jsonl").write_bytes(line)
    (directory / "events-002947-000007.jsonl.gz").write_bytes(gzip.compress(line))
    destination = await open_destination()
    await deliver(destination, [make_event(1)])
    assert [p.name for p in data_files(directory)] == [
        "events-002947-000007.jsonl.gz",
        "events-002947-000008.jsonl",
    ]


async def test_os_error_is_retryable(open_destination: Opener, tmp_path: Path) -> None:
    """An unwritable directory fails each event retryably, with no payload in the reason."""
    (tmp_path / "blocker").write_text("a file where a directory should be")
    destination = await open_destination(directory=tmp_path / "blocker")
    outcomes = await deliver(destination, [make_event(1), make_event(2, "ios")])
    assert all(isinstance(outcome, RetryableDeliveryError) for outcome in outcomes)
    assert "blocker" in str(outcomes[0])
    assert "Order Completed" not in str(outcomes[0])


async def test_failed_write_leaves_no_partial_line(
    open_destination: Opener, tmp_path: Path
) -> None:
    """A write that fails half-way is truncated back, and the retry appends whole lines."""
    destination = await open_destination(cls=DiskFullOnceDestination)
    assert isinstance(destination, DiskFullOnceDestination)
    assert await deliver(destination, [make_event(1)]) == [None]
    destination.fail_next_write = True
    outcomes = await deliver(destination, [make_event(2), make_event(3)])
    assert all(isinstance(outcome, RetryableDeliveryError) for outcome in outcomes)
    assert "No space left" in str(outcomes[0])
    assert await deliver(destination, [make_event(2), make_event(3)]) == [None, None]
    assert ids(read_all(tmp_path / "out")) == ["web-00000001", "web-00000002", "web-00000003"]


async def test_unusable_source_name_fails_only_its_events(
    open_destination: Opener, tmp_path: Path
) -> None:
    """An event whose source cannot be a directory name fails permanently; the rest arrive."""
    destination = await open_destination()
    outcomes = await deliver(destination, [make_event(1, ".."), make_event(2)])
    assert isinstance(outcomes[0], PermanentDeliveryError)
    assert outcomes[1] is None
    assert ids(read_all(tmp_path / "out")) == ["web-00000002"]


@pytest.mark.parametrize(
    "received_at",
    [
        pytest.param(None, id="missing"),
        pytest.param("../../etc/passwd", id="path-like"),
        pytest.param("yesterday", id="not-a-date"),
    ],
)
async def test_unusable_received_at_falls_back_to_today(
    open_destination: Opener, tmp_path: Path, received_at: str | None
) -> None:
    """An event without a usable receivedAt is filed under today's UTC date."""
    destination = await open_destination()
    event: Event = make_event(1, receivedAt=received_at)
    assert await deliver(destination, [event]) == [None]
    (day,) = [p.name for p in (tmp_path / "out" / "web").iterdir()]
    assert len(day) == 10
    assert day[4] == day[7] == "-"
