"""Tests for gateway/circuit.py: the per-destination circuit breaker."""

from __future__ import annotations

from gateway.circuit import CircuitBreaker


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[bool]) -> CircuitBreaker:
    return CircuitBreaker(
        "hook",
        failure_threshold=3,
        open_s=5,
        max_open_s=12,
        on_change=changes.append,
        clock=clock,
    )


def test_opens_after_consecutive_failures_and_probes_once() -> None:
    """Three failing attempts open it; after open_s exactly one caller may probe."""
    clock, changes = Clock(), []
    circuit = breaker(clock, changes)
    for _ in range(2):
        circuit.record(delivered=0, retryable_failures=10)
    assert circuit.allows()
    circuit.record(delivered=0, retryable_failures=10)
    assert changes == [True]
    assert not circuit.allows()
    assert circuit.wait_s() == 5
    clock.now += 5
    assert circuit.allows()  # the probe
    assert not circuit.allows()  # nobody else while it is out


def test_failed_probe_doubles_the_pause_up_to_the_cap() -> None:
    """Each failed probe reopens it for twice as long, never longer than max_open_s."""
    clock, changes = Clock(), []
    circuit = breaker(clock, changes)
    for _ in range(3):
        circuit.record(delivered=0, retryable_failures=1)
    for expected in (10, 12, 12):
        clock.now += circuit.wait_s()
        assert circuit.allows()
        circuit.record(delivered=0, retryable_failures=1)
        assert circuit.wait_s() == expected
    assert changes == [True]


def test_a_delivery_closes_it_and_resets() -> None:
    """A probe that delivers anything closes the circuit and resets the pause and count."""
    clock, changes = Clock(), []
    circuit = breaker(clock, changes)
    for _ in range(3):
        circuit.record(delivered=0, retryable_failures=1)
    clock.now += 5
    assert circuit.allows()
    circuit.record(delivered=1, retryable_failures=4)
    assert changes == [True, False]
    assert circuit.allows()
    assert not circuit.is_open
    for _ in range(3):
        circuit.record(delivered=0, retryable_failures=1)
    assert circuit.wait_s() == 5


def test_permanent_failures_do_not_trip_it() -> None:
    """Attempts that only failed permanently (bad events) say nothing about the destination."""
    clock, changes = Clock(), []
    circuit = breaker(clock, changes)
    for _ in range(10):
        circuit.record(delivered=0, retryable_failures=0)
    assert circuit.allows()
    assert changes == []
