"""Partition leases between nodes, against a real nats-server."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config import JetStreamConfig
from gateway.log.jetstream import JetStreamStorage
from gateway.log.leases import PartitionLeases
from tests.nats import NatsServer
from tests.test_router import eventually

_prefixes = itertools.count()
PARTITIONS = 4


class Node:
    """One node's leases, recording the partitions its callbacks say it delivers."""

    def __init__(self, storage: JetStreamStorage, name: str) -> None:
        self.storage = storage
        self.delivering: set[int] = set()
        self.leases = PartitionLeases(
            storage, node_id=name, acquired=self._acquired, lost=self._lost
        )

    async def _acquired(self, partition: int) -> None:
        self.delivering.add(partition)

    async def _lost(self, partition: int) -> None:
        self.delivering.discard(partition)

    async def crash(self) -> None:
        """Stop renewing without giving anything back, as a killed process would."""
        assert self.leases._task is not None
        self.leases._task.cancel()
        await self.storage.close()


@pytest.fixture(name="make_node")
async def _make_node(nats_server: NatsServer) -> AsyncIterator[Callable[[str], object]]:
    prefix = f"L{next(_prefixes)}_{time.time_ns()}"
    nodes: list[Node] = []

    async def make_node(name: str) -> Node:
        config = JetStreamConfig(
            servers=[nats_server.url], stream_prefix=prefix, partitions=PARTITIONS, lease_ttl_s=1
        )
        storage = JetStreamStorage(config)
        await storage.open()
        node = Node(storage, name)
        await node.leases.start()
        nodes.append(node)
        return node

    yield make_node
    for node in nodes:
        if node.storage.is_connected:
            await node.leases.stop()
            await node.storage.close()


def _disjoint_and_complete(*nodes: Node) -> bool:
    held = [n.delivering for n in nodes]
    union = set().union(*held)
    return union == set(range(PARTITIONS)) and sum(map(len, held)) == PARTITIONS


async def test_a_lone_node_takes_every_partition(make_node: Callable[[str], object]) -> None:
    """The only node delivers every partition as soon as it starts."""
    node = await make_node("a")  # type: ignore[misc]
    assert node.delivering == set(range(PARTITIONS))


async def test_a_second_node_gets_its_fair_share(make_node: Callable[[str], object]) -> None:
    """A node that joins takes half the partitions; no partition is held twice or by nobody."""
    first = await make_node("a")  # type: ignore[misc]
    second = await make_node("b")  # type: ignore[misc]
    await eventually(lambda: len(second.delivering) == PARTITIONS // 2, timeout_s=15)
    await eventually(lambda: _disjoint_and_complete(first, second), timeout_s=15)


async def test_a_stopped_node_hands_over_at_once(make_node: Callable[[str], object]) -> None:
    """A node shutting down releases its partitions and the other takes them all."""
    first = await make_node("a")  # type: ignore[misc]
    second = await make_node("b")  # type: ignore[misc]
    await eventually(lambda: _disjoint_and_complete(first, second), timeout_s=15)
    await first.leases.stop()
    assert first.delivering == set()
    await eventually(lambda: second.delivering == set(range(PARTITIONS)), timeout_s=15)


async def test_a_crashed_nodes_partitions_move_after_the_ttl(
    make_node: Callable[[str], object],
) -> None:
    """Partitions of a node that stopped renewing (killed) are taken over once they expire."""
    first = await make_node("a")  # type: ignore[misc]
    second = await make_node("b")  # type: ignore[misc]
    await eventually(lambda: _disjoint_and_complete(first, second), timeout_s=15)
    await first.crash()
    await eventually(lambda: second.delivering == set(range(PARTITIONS)), timeout_s=20)


async def test_a_lost_renewal_stops_delivery(make_node: Callable[[str], object]) -> None:
    """When another node has taken a partition, the old holder's next renewal gives it up."""
    node = await make_node("a")  # type: ignore[misc]
    kv = node.storage.leases
    assert kv is not None
    await kv.put("partition.0", b"someone-else")  # a new revision: our renewal must fail
    await eventually(lambda: 0 not in node.delivering, timeout_s=10)
