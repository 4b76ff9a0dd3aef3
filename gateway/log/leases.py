"""Which partitions this node delivers: leases in a JetStream KV bucket with a TTL.

Every node's router runs :class:`PartitionLeases`. A node heartbeats ``node.<id>``; each tick it
counts the live nodes, renews the leases (``partition.<n>``) it holds with a revision check,
releases those beyond its fair share (``ceil(partitions / nodes)``) and takes free ones up to it.
A lease is free when nobody holds it: released, or expired because its holder stopped renewing
(the bucket's TTL, counted by the server's clock). So a killed node's partitions move to the
others after at most ``lease_ttl_s``, and a new node takes its share within a few ticks.

The holder of a partition is its only reader, which keeps a user's events in order across
nodes. A node that cannot renew (NATS unreachable) gives its partitions up after the TTL, as
the server does; a holder that lost a lease without noticing (a long pause) may deliver a batch
the new holder delivers again: at least once, never lost, as the delivery contract allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable

import nats.js.errors
import structlog

from gateway.errors import StorageUnavailableError
from gateway.log.jetstream import JetStreamStorage

__all__ = ["PartitionLeases", "default_node_id"]

log = structlog.get_logger("eventgate.leases")

PartitionCallback = Callable[[int], Awaitable[None]]


def default_node_id() -> str:
    """This process's name among the nodes: host name and process id."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{host or 'node'}-{os.getpid()}"


class PartitionLeases:
    """Holds this node's fair share of the partitions, calling back as it gains or loses them."""

    def __init__(
        self,
        storage: JetStreamStorage,
        *,
        node_id: str,
        acquired: PartitionCallback,
        lost: PartitionCallback,
    ) -> None:
        self.storage = storage
        self.node_id = node_id
        self.partitions = storage.config.partitions
        self.ttl_s = storage.config.lease_ttl_s
        self.tick_s = self.ttl_s / 3
        self._acquired = acquired
        self._lost = lost
        self.held: dict[int, int] = {}
        """Partition -> the revision of our lease on it."""
        self._renewed_at: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take a first share at once, then keep the leases in the background."""
        await self._tick()
        self._task = asyncio.create_task(self._run(), name="eventgate-leases")

    async def stop(self) -> None:
        """Stop, give up every partition (after its workers stop), and leave the node list."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for number in sorted(self.held):
            await self._release(number)
        with contextlib.suppress(StorageUnavailableError, nats.js.errors.Error):
            await self.storage.call(self._kv().delete(f"node.{self.node_id}"))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
            except StorageUnavailableError as exc:
                log.warning("leases.unavailable", error=str(exc))
                try:
                    await self._expire_unrenewed()
                except Exception:  # the loop must outlive any one failure
                    log.exception("leases.expire_failed")
            except Exception:  # the loop must outlive any one failure
                log.exception("leases.tick_failed")

    def _kv(self) -> nats.js.kv.KeyValue:
        kv = self.storage.leases
        if kv is None:
            raise StorageUnavailableError("JetStream is not open")
        return kv

    async def _tick(self) -> None:
        kv = self._kv()
        await self.storage.call(kv.put(f"node.{self.node_id}", b"1"))
        nodes = await self._live_nodes()
        share = math.ceil(self.partitions / max(nodes, 1))
        for number in sorted(self.held):
            await self._renew(number)
        for number in sorted(self.held, reverse=True)[: max(len(self.held) - share, 0)]:
            await self._release(number)
        for number in self._free_candidates():
            if len(self.held) >= share:
                break
            await self._try_take(number)

    async def _live_nodes(self) -> int:
        """How many nodes heartbeat (the last value of each ``node.*`` key that is not deleted)."""
        bucket = self.storage.leases_bucket
        request = {"multi_last": [f"$KV.{bucket}.node.*"], "batch": 10_000}
        messages, _, _ = await self.storage.direct_batch(f"KV_{bucket}", request)
        live = [m for m in messages if m.headers is None or "KV-Operation" not in m.headers]
        return max(len(live), 1)

    def _free_candidates(self) -> list[int]:
        """Partitions we do not hold, starting at a node-specific offset to spread the takes."""
        start = sum(self.node_id.encode()) % self.partitions
        order = [(start + i) % self.partitions for i in range(self.partitions)]
        return [n for n in order if n not in self.held]

    async def _renew(self, number: int) -> None:
        try:
            revision = await self.storage.call(
                self._kv().update(f"partition.{number}", self.node_id.encode(), self.held[number])
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            log.warning("leases.lost", partition=number, node=self.node_id)
            self.held.pop(number, None)
            await self._lost(number)
            return
        self.held[number] = revision
        self._renewed_at[number] = time.monotonic()

    async def _try_take(self, number: int) -> None:
        try:
            revision = await self.storage.call(
                self._kv().create(f"partition.{number}", self.node_id.encode())
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another node holds it
        self.held[number] = revision
        self._renewed_at[number] = time.monotonic()
        log.info("leases.acquired", partition=number, node=self.node_id)
        await self._acquired(number)

    async def _release(self, number: int) -> None:
        revision = self.held.pop(number)
        await self._lost(number)  # the workers stop before another node may start
        with contextlib.suppress(StorageUnavailableError, nats.js.errors.Error):
            await self.storage.call(self._kv().delete(f"partition.{number}", last=revision))
        log.info("leases.released", partition=number, node=self.node_id)

    async def _expire_unrenewed(self) -> None:
        """Give up the partitions not renewed for a TTL: the server has freed them by now."""
        now = time.monotonic()
        for number in [n for n in self.held if now - self._renewed_at.get(n, now) > self.ttl_s]:
            self.held.pop(number)
            log.warning("leases.expired", partition=number, node=self.node_id)
            await self._lost(number)
