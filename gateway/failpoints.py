"""Failpoints: named places where a crash test makes the process kill itself (SIGKILL).

Off unless ``EVENTGATE_FAILPOINTS`` is set, and then one dictionary lookup per hit. The
variable lists ``name=N`` or ``name=LOW-HIGH`` entries, comma-separated: the process dies at
the N-th hit of that failpoint (a number drawn from LOW..HIGH when the process starts, so a
restarted process dies at another moment). The crash matrix in ``tests/e2e`` uses them to
kill the gateway during a group commit, a delivery, a warehouse load or a retry, which random
timing alone rarely hits.

Places: ``log.commit`` (SQLite: rows written, before COMMIT), ``log.append`` (JetStream: every
publish acked, before the request is answered), ``worker.delivering`` (a batch is being sent:
the kill lands during the plugin's I/O, e.g. a warehouse load), ``worker.delivered`` (the
plugin reported the batch, before its outcome and cursor are saved), ``worker.retrying`` (due
retries are being sent).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

__all__ = ["hit", "hit_soon"]


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    rng = random.Random(os.urandom(8))  # noqa: S311 - when to crash, not a secret
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = entry.partition("=")
        low, _, high = count.partition("-")
        armed[name] = rng.randint(int(low), int(high or low))
    return armed


_ARMED = _parse(os.environ.get("EVENTGATE_FAILPOINTS", ""))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    """Count a pass through failpoint ``name``; at its armed count, SIGKILL this process."""
    if _ARMED and name in _ARMED:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _ARMED[name]:
            _die(name)


def hit_soon(name: str, within_s: float = 0.05) -> None:
    """Like :func:`hit`, but the kill comes a random moment later (during what follows)."""
    if _ARMED and name in _ARMED:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _ARMED[name]:
            delay = random.uniform(0, within_s)  # noqa: S311 - timing, not security
            asyncio.get_running_loop().call_later(delay, _die, name)


def _die(name: str) -> None:
    print(f"eventgate: failpoint {name} fired in pid {os.getpid()}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
