"""Tests for gateway/failpoints.py: parsing the armed counts, and staying off by default."""

from __future__ import annotations

import subprocess
import sys

from gateway import failpoints


def test_counts_and_ranges_are_parsed() -> None:
    """``name=N`` arms the N-th hit; ``name=LOW-HIGH`` a number drawn from the range."""
    armed = failpoints._parse("log.commit=3, worker.delivered=2-5,")
    assert armed["log.commit"] == 3
    assert 2 <= armed["worker.delivered"] <= 5
    assert set(armed) == {"log.commit", "worker.delivered"}


def test_unarmed_failpoints_never_fire() -> None:
    """Without EVENTGATE_FAILPOINTS, hitting a failpoint many times does nothing."""
    for _ in range(1000):
        failpoints.hit("log.commit")


def test_an_armed_failpoint_kills_the_process_at_its_count() -> None:
    """A process armed with ``x=3`` survives two hits and dies by SIGKILL at the third."""
    code = (
        "from gateway import failpoints as f\n"
        "for i in range(3):\n"
        "    print(i, flush=True)\n"
        "    f.hit('x')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"EVENTGATE_FAILPOINTS": "x=3", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == -9
    assert done.stdout.split() == ["0", "1", "2"]
    assert "failpoint x fired" in done.stderr
