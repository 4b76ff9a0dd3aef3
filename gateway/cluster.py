"""Distributed mode: a node's router delivers the JetStream partitions it holds a lease on.

Every gateway node runs the same processes as on one machine; the difference is where the log
is (a JetStream cluster) and which part of it this node's router delivers (its fair share of
the partitions, see :mod:`gateway.log.leases`). Ingress on any node appends to any partition.
"""

from __future__ import annotations

import structlog

from gateway.config import GatewayConfig
from gateway.log.jetstream import JetStreamStorage
from gateway.log.leases import PartitionLeases, default_node_id
from gateway.router import Router

__all__ = ["LeasedDelivery", "jetstream_storage"]

log = structlog.get_logger("eventgate.cluster")


def jetstream_storage(config: GatewayConfig) -> JetStreamStorage:
    """The JetStream storage ``config`` describes (not yet connected)."""
    return JetStreamStorage(config.storage.jetstream)


class LeasedDelivery:
    """Starts and stops ``router``'s workers as this node gains and loses partitions."""

    def __init__(
        self, router: Router, storage: JetStreamStorage, *, node_id: str | None = None
    ) -> None:
        self.router = router
        self.storage = storage
        self.grace_s = min(router.config.server.shutdown_grace_s, storage.config.lease_ttl_s / 3)
        self.leases = PartitionLeases(
            storage,
            node_id=node_id or default_node_id(),
            acquired=self._acquired,
            lost=self._lost,
        )

    async def start(self) -> None:
        """Connect, give new destinations their cursors, then take a share of the partitions.

        Raises:
            StorageUnavailableError: JetStream cannot be reached.
        """
        await self.storage.open()
        await self.storage.ensure_cursors(list(self.router.destinations))
        await self.leases.start()
        log.info("cluster.started", node=self.leases.node_id, partitions=sorted(self.leases.held))

    async def stop(self) -> None:
        """Give every partition back (its workers stop first), then disconnect."""
        await self.leases.stop()
        await self.storage.close()

    async def _acquired(self, partition: int) -> None:
        event_log = self.storage.partition(partition)
        await event_log.open()
        await self.router.add_shard(partition, event_log)

    async def _lost(self, partition: int) -> None:
        await self.router.remove_shard(partition, self.grace_s)
        await self.storage.partition(partition).close()
