"""The built-in ``file`` destination: JSON lines under ``<directory>/<source>/<YYYY-MM-DD>/``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway.destination import BatchDestination, Destination, Event
from gateway.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.plugins import hookimpl

__all__ = ["FileDestination", "FileSettings", "register_destination_types"]

log = structlog.get_logger("eventgate.destinations.file")

# How often an idle destination looks for files past max_file_age_s.
_AGE_CHECK_INTERVAL_S = 1.0
_GZIP_LEVEL = 6
_NAME = re.compile(r"events-(\d{6})-(\d+)\.jsonl(\.gz|\.gz\.tmp)?")
_TIME_OF_DAY = re.compile(r"\d\d:\d\d:\d\d")


class FileSettings(BaseModel):
    """Settings of the ``file`` destination."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Field(
        description="Root directory; files go to <directory>/<source>/<YYYY-MM-DD>/."
    )
    max_file_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Start a new file before one grows past this size."
    )
    max_file_age_s: float = Field(
        3600.0, ge=0, description="Finish a file this many seconds after it was started."
    )
    gzip: bool = Field(
        False, description="Compress each finished file to .jsonl.gz and delete the .jsonl."
    )
    fsync: bool = Field(
        True, description="fsync every file a batch touched before reporting it delivered."
    )


@dataclass(slots=True)
class _ActiveFile:
    """The file one source currently appends to."""

    path: Path
    fd: int
    day: str
    size: int
    started_at: float
    dirty: bool = False  # a failed write may have left bytes past ``size``


class FileDestination(BatchDestination[FileSettings]):
    """Appends each event as one JSON line (its ``raw`` bytes) to a file per source and UTC day.

    Files are ``<directory>/<source>/<YYYY-MM-DD>/events-<HHMMSS>-<counter>.jsonl``, where the day
    and ``HHMMSS`` come from the ``receivedAt`` of the file's first event and ``counter`` grows per
    directory, so names sort in creation order within a time and are never reused. A source's file
    is finished (closed, then compressed if ``gzip``) when it would pass ``max_file_bytes``, when
    it is ``max_file_age_s`` old, when that source's events move to another day, and on
    :meth:`close`. Each batch is one ``write`` per file, fsync'd if ``fsync``, before
    :meth:`send_batch` returns.

    After a restart it never appends to an old file, since a finished uncompressed file looks
    just like an active one. Instead :meth:`open` repairs what a crash left: a torn last line is
    truncated (it was never acknowledged; the router redelivers it), a half-written ``.gz.tmp``
    is deleted and its compression redone, and with ``gzip`` leftover ``.jsonl`` files are
    compressed. This scans the whole directory once. Give each destination its own directory.
    """

    type_name = "file"
    integration_kind = "archive"  # archives keep everything, whatever integrations says
    display_name = "File"
    settings_model = FileSettings

    def __init__(
        self, name: str, settings: FileSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create the destination; ``clock`` (seconds, monotonic) measures file age."""
        super().__init__(name, settings)
        self._clock = clock
        # All file work runs in worker threads; this serializes it even if a caller was cancelled.
        self._mutex = threading.Lock()
        self._active: dict[str, _ActiveFile] = {}
        self._next_counter: dict[Path, int] = {}
        self._age_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Repair what an earlier crash left in ``directory``, then start the age timer."""
        await asyncio.to_thread(self._recover)
        self._age_task = asyncio.create_task(self._rotate_periodically())

    async def close(self) -> None:
        """Finish (and compress, if configured) every open file."""
        if self._age_task is not None:
            self._age_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._age_task
            self._age_task = None
        await asyncio.to_thread(self._finish_all)

    async def send_batch(self, events: Sequence[Event]) -> list[DeliveryError | None]:
        """Append ``events``; every ``None`` outcome is written (and fsync'd if configured).

        An ``OSError`` fails the events not yet written with a ``RetryableDeliveryError``; an
        event whose source cannot be a directory name fails with a ``PermanentDeliveryError``.
        """
        return await asyncio.to_thread(self._write_batch, events)

    async def rotate_expired(self) -> None:
        """Finish every file older than ``max_file_age_s``; the age timer calls this each second."""
        await asyncio.to_thread(self._rotate_expired)

    async def _rotate_periodically(self) -> None:
        while True:
            await asyncio.sleep(_AGE_CHECK_INTERVAL_S)
            await self.rotate_expired()

    # Everything below runs in a worker thread.

    def _write_batch(self, events: Sequence[Event]) -> list[DeliveryError | None]:
        outcomes: list[DeliveryError | None] = [None] * len(events)
        groups: dict[tuple[str, str], list[int]] = {}
        for index, event in enumerate(events):
            if _usable_as_directory_name(event.source):
                groups.setdefault((event.source, _day_and_time(event)[0]), []).append(index)
            else:
                outcomes[index] = PermanentDeliveryError(
                    "the source name cannot be used as a directory name"
                )
        with self._mutex:
            for (source, day), indexes in groups.items():
                done = 0
                while done < len(indexes):
                    try:
                        done += self._append(source, day, [events[i] for i in indexes[done:]])
                    except OSError as exc:
                        error = self._write_error(source, day, exc)
                        for i in indexes[done:]:
                            outcomes[i] = error
                        break
        return outcomes

    def _write_error(self, source: str, day: str, exc: OSError) -> RetryableDeliveryError:
        where = self.settings.directory / source / day
        log.warning(
            "file.write_failed", destination=self.name, directory=str(where), error=str(exc)
        )
        return RetryableDeliveryError(
            f"cannot write to {where}: {exc.strerror or type(exc).__name__}"
        )

    def _append(self, source: str, day: str, events: Sequence[Event]) -> int:
        """Write as many of ``events`` as fit in the source's file; return how many."""
        active = self._active_file(source, day, events[0])
        room = self.settings.max_file_bytes - active.size
        count = used = 0
        for event in events:
            needed = len(event.raw) + 1
            if used + needed > room and (count or active.size):
                break
            count += 1
            used += needed
        if count == 0:
            self._finish(source)
            return 0
        self._write(active, b"\n".join(event.raw for event in events[:count]) + b"\n")
        if active.size >= self.settings.max_file_bytes:
            self._finish(source)
        return count

    def _active_file(self, source: str, day: str, first: Event) -> _ActiveFile:
        active = self._active.get(source)
        if active is not None and (active.day != day or self._expired(active, self._clock())):
            self._finish(source)
            active = None
        if active is None:
            active = self._start_file(source, day, _day_and_time(first)[1])
            self._active[source] = active
        elif active.dirty:
            os.ftruncate(active.fd, active.size)
            active.dirty = False
        return active

    def _start_file(self, source: str, day: str, hhmmss: str) -> _ActiveFile:
        directory = self.settings.directory / source / day
        if directory not in self._next_counter:
            self._make_directory(directory)
            self._next_counter[directory] = _next_counter(directory)
        while True:
            counter = self._next_counter[directory]
            self._next_counter[directory] = counter + 1
            path = directory / f"events-{hhmmss}-{counter:06d}.jsonl"
            if _with_suffix(path, ".gz").exists() or _with_suffix(path, ".gz.tmp").exists():
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            if self.settings.fsync:
                _fsync_directory(directory)
            return _ActiveFile(path, fd, day, 0, self._clock())

    def _make_directory(self, directory: Path) -> None:
        missing = [p for p in (directory.parent, directory) if not p.is_dir()]
        directory.mkdir(parents=True, exist_ok=True)
        if self.settings.fsync:
            for path in missing:
                _fsync_directory(path.parent)

    def _write(self, active: _ActiveFile, data: bytes) -> None:
        """Append ``data`` whole, or truncate back so no partial line is left behind."""
        try:
            self._write_all(active.fd, data)
            if self.settings.fsync:
                os.fsync(active.fd)
        except OSError:
            try:
                os.ftruncate(active.fd, active.size)
            except OSError:
                active.dirty = True
            raise
        active.size += len(data)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _expired(self, active: _ActiveFile, now: float) -> bool:
        return active.size > 0 and now - active.started_at >= self.settings.max_file_age_s

    def _rotate_expired(self) -> None:
        with self._mutex:
            now = self._clock()
            for source in [s for s, a in self._active.items() if self._expired(a, now)]:
                self._finish(source)

    def _finish_all(self) -> None:
        with self._mutex:
            for source in list(self._active):
                self._finish(source)

    def _finish(self, source: str) -> None:
        """Close the source's file and compress it if configured; never raises."""
        active = self._active.pop(source)
        if active.dirty:
            with contextlib.suppress(OSError):
                os.ftruncate(active.fd, active.size)
                active.dirty = False
        with contextlib.suppress(OSError):
            os.close(active.fd)
        try:
            if active.size == 0 and not active.dirty:
                active.path.unlink()
            elif self.settings.gzip:
                _compress(active.path)
        except OSError as exc:
            # The .jsonl is complete; the next open() compresses it.
            log.warning("file.finish_failed", path=str(active.path), error=str(exc))

    def _recover(self) -> None:
        root = self.settings.directory
        if not root.is_dir():
            return
        for directory in sorted(root.glob("*/*")):
            if not directory.is_dir():
                continue
            try:
                self._recover_directory(directory)
            except OSError as exc:
                log.warning("file.recovery_failed", directory=str(directory), error=str(exc))

    def _recover_directory(self, directory: Path) -> None:
        names = {name for name in os.listdir(directory) if _NAME.fullmatch(name)}
        interrupted = {name.removesuffix(".gz.tmp") for name in names if name.endswith(".tmp")}
        for name in interrupted:
            (directory / f"{name}.gz.tmp").unlink()
        for name in sorted(n for n in names if n.endswith(".jsonl")):
            path = directory / name
            if f"{name}.gz" in names:
                path.unlink()  # compressed and renamed; only the delete was missing
                continue
            if _truncate_torn_tail(path) == 0:
                path.unlink()
            elif self.settings.gzip or name in interrupted:
                _compress(path)


@hookimpl(trylast=True)
def register_destination_types() -> list[type[Destination[Any]]]:
    """Register the built-in ``file`` destination type."""
    return [FileDestination]


@functools.lru_cache(maxsize=256)
def _usable_as_directory_name(source: str) -> bool:
    return source not in {"", ".", ".."} and not any(c in source for c in "/\\\0")


def _day_and_time(event: Event) -> tuple[str, str]:
    """The UTC day (``YYYY-MM-DD``) and ``HHMMSS`` of the event's ``receivedAt``."""
    if event.received_at is not None:  # the log's copy of receivedAt: no JSON decode needed
        with contextlib.suppress(ValueError, OverflowError, OSError):
            return _utc_day_and_time(int(event.received_at))
    received = event.message.get("receivedAt")
    if isinstance(received, str):
        with contextlib.suppress(ValueError):
            day = date.fromisoformat(received[:10]).isoformat()
            time_of_day = received[11:19]
            if _TIME_OF_DAY.fullmatch(time_of_day):
                return day, time_of_day.replace(":", "")
            return day, "000000"
    now = datetime.now(UTC)
    return now.date().isoformat(), now.strftime("%H%M%S")


@functools.lru_cache(maxsize=4)
def _utc_day_and_time(unix_second: int) -> tuple[str, str]:
    """Cached per second: consecutive events mostly share one (2 µs saved per event)."""
    at = datetime.fromtimestamp(unix_second, UTC)
    return at.date().isoformat(), at.strftime("%H%M%S")


def _next_counter(directory: Path) -> int:
    counters = [int(m.group(2)) for n in os.listdir(directory) if (m := _NAME.fullmatch(n))]
    return max(counters, default=0) + 1


def _with_suffix(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_torn_tail(path: Path) -> int:
    """Cut ``path`` back to just after its last newline; return the size it keeps."""
    with path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return size
        keep = end = size
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = keep = start
        if keep < size:
            file.truncate(keep)
            os.fsync(file.fileno())
            log.warning("file.torn_tail_truncated", path=str(path), dropped_bytes=size - keep)
    return keep


def _compress(path: Path) -> None:
    """Replace ``path`` by ``path.gz``: write ``.gz.tmp``, fsync, rename, delete ``path``."""
    tmp = _with_suffix(path, ".gz.tmp")
    try:
        with path.open("rb") as source, tmp.open("wb") as target:
            with gzip.GzipFile(
                filename=path.name, mode="wb", fileobj=target, compresslevel=_GZIP_LEVEL
            ) as compressed:
                shutil.copyfileobj(source, compressed, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        tmp.replace(_with_suffix(path, ".gz"))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)
    path.unlink()
