"""Dead letters wherever the configured storage keeps them: one API for the CLI and admin API.

The embedded log keeps them in its SQLite shards (:mod:`gateway.dlq`), the distributed log in
a JetStream stream (:mod:`gateway.log.jetstream_dlq`); both list, show, replay and purge alike.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway import dlq
from gateway.config import GatewayConfig, JetStreamConfig
from gateway.dlq import DeadLetterFilter, DeadLetterRow
from gateway.log import jetstream_dlq
from gateway.log.jetstream import JetStreamStorage

__all__ = ["DeadLetterStore"]


class DeadLetterStore:
    """The dead letters of a gateway's storage; JetStream is connected on first use."""

    def __init__(self, data_dir: Path, jetstream: JetStreamConfig | None = None) -> None:
        self.data_dir = data_dir
        self._storage = None if jetstream is None else JetStreamStorage(jetstream)
        self._opened = False

    @classmethod
    def of(cls, config: GatewayConfig) -> DeadLetterStore:
        """The store ``config``'s storage backend keeps dead letters in."""
        jetstream = config.storage.jetstream if config.storage.backend == "jetstream" else None
        return cls(config.storage.data_dir, jetstream)

    async def _js(self) -> JetStreamStorage:
        assert self._storage is not None
        if not self._opened:
            await self._storage.open()
            self._opened = True
        return self._storage

    async def close(self) -> None:
        """Disconnect from JetStream if connected."""
        if self._storage is not None and self._opened:
            self._opened = False
            await self._storage.close()

    async def list_letters(self, match: DeadLetterFilter, limit: int = 100) -> list[DeadLetterRow]:
        """The newest ``limit`` dead letters matching ``match``, newest first.

        Raises:
            StorageUnavailableError: JetStream cannot be reached.
        """
        if self._storage is None:
            return await asyncio.to_thread(dlq.list_letters, self.data_dir, match, limit)
        return await jetstream_dlq.list_letters(await self._js(), match, limit)

    async def show(self, key: str) -> DeadLetterRow | None:
        """The dead letter ``key`` names (as listed), or ``None``."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.show, self.data_dir, key)
        return await jetstream_dlq.show(await self._js(), key)

    async def replay(self, match: DeadLetterFilter) -> int:
        """Re-enqueue the matching dead letters for their own destination; return how many."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.replay, self.data_dir, match)
        return await jetstream_dlq.replay(await self._js(), match)

    async def purge(self, match: DeadLetterFilter) -> int:
        """Delete the matching dead letters for good; return how many."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.purge, self.data_dir, match)
        return await jetstream_dlq.purge(await self._js(), match)

    async def count_by_destination(self) -> dict[str, int]:
        """How many dead letters each destination has."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.count_by_destination, self.data_dir)
        return await jetstream_dlq.count_by_destination(await self._js())

    async def replay_one(self, key: str) -> tuple[str, str] | None:
        """Re-enqueue the dead letter ``key``; return its destination and event reference."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.replay_one, self.data_dir, key)
        return await jetstream_dlq.replay_one(await self._js(), key)

    async def delivery_state(self, destination: str, ref: str) -> str | None:
        """Where the event ``ref`` stands for ``destination`` (see :func:`dlq.delivery_state`)."""
        if self._storage is None:
            return await asyncio.to_thread(dlq.delivery_state, self.data_dir, destination, ref)
        return await jetstream_dlq.delivery_state(await self._js(), destination, ref)
