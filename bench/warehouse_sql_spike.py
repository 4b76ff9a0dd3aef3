"""Spike: loading 5,000-event batches with DuckDB doing the per-row work, beside the Python path.

Both loaders get the same batches of ``bench/warehouse.py``'s ``track()`` events, normalized as
ingress stores them, alternately in the same run, each into its own DuckDB file kept open
(``release_file_after_s: null``):

- **python**: ``WarehouseDestination.send_batch`` as it is (``rows_of``, ``plan_table``, JSON
  lines, ``INSERT ... ON CONFLICT``);
- **python, plain insert**: the same with a plain ``INSERT`` (what ``ON CONFLICT`` costs);
- **sql**: ``DuckDBSqlWarehouse.load_events`` (raw JSON lines, DuckDB builds the rows).

Each batch is timed wall-clock and in process CPU time (all threads, DuckDB's included); the time
spent inside DuckDB calls is measured through a timing proxy around the connection, so
python = CPU - DuckDB. Prints medians per loader (first batches, which create the tables, left
out) and checks that both files end up with the same rows.

    .venv/bin/python bench/warehouse_sql_spike.py [--batches 12] [--events 5000] [--threads 1]

``--end-to-end N`` instead runs ``bench/warehouse.py --backend duckdb`` (the real gateway, HTTP
ingest and router) N times each way, alternately: as it is, and with a ``sitecustomize`` module
(written to a temp dir put on ``PYTHONPATH``, so the gateway's child processes get it too) that
makes the ``warehouse`` destination load through ``DuckDBSqlWarehouse.load_events``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import duckdb  # noqa: E402
from warehouse import track  # noqa: E402

from destinations.warehouse import WarehouseDestination, WarehouseSettings  # noqa: E402
from destinations.warehouse.duckdb_backend import DuckDBWarehouse  # noqa: E402
from destinations.warehouse.duckdb_sql import DuckDBSqlWarehouse  # noqa: E402
from gateway.destination import Event  # noqa: E402
from gateway.events import RequestContext, normalize  # noqa: E402


class Timed:
    """A DuckDB connection whose calls add their duration to ``spent``."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, spent: list[float]) -> None:
        self._conn = conn
        self._spent = spent

    def _time(self, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self._spent[0] += time.perf_counter() - started

    def execute(self, *args: Any) -> Timed:
        self._time(self._conn.execute, *args)
        return self

    def fetchall(self) -> Any:
        return self._time(self._conn.fetchall)

    def fetchone(self) -> Any:
        return self._time(self._conn.fetchone)

    @property
    def description(self) -> Any:
        return self._conn.description

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._conn, name)
        if name in ("begin", "commit", "rollback"):
            return lambda: self._time(attribute)
        return attribute


class TimedPython(DuckDBWarehouse):
    """The Python path's backend, its DuckDB calls timed; ``plain``: INSERT without ON CONFLICT."""

    def __init__(self, *args: Any, plain: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent = [0.0]
        self.plain = plain

    def _load(self, conn: Any, tables: Any) -> Any:
        return super()._load(Timed(conn, self.spent), tables)  # type: ignore[arg-type]

    def _insert(self, conn: Any, schema: str, plan: Any) -> None:
        if not self.plain:
            super()._insert(conn, schema, plan)
            return
        import destinations.warehouse.duckdb_backend as backend

        original = backend._on_conflict
        backend._on_conflict = lambda plan, target: (
            "" if plan.table != "users" else original(plan, target)
        )
        try:
            super()._insert(conn, schema, plan)
        finally:
            backend._on_conflict = original


class TimedSql(DuckDBSqlWarehouse):
    """The SQL path, its DuckDB calls timed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent = [0.0]

    def _load_events(self, conn: Any, events: Sequence[Event]) -> Any:
        return super()._load_events(Timed(conn, self.spent), events)  # type: ignore[arg-type]


def batches(count: int, size: int) -> list[list[Event]]:
    """``count`` batches of ``size`` normalized track events, as the router hands them over."""
    run = f"{int(time.time()):x}"
    now = datetime.now(UTC)
    request = RequestContext(source="bench", received_at=now, client_ip="127.0.0.1", sent_at=now)
    out = []
    for b in range(count):
        batch = []
        for i in range(b * size, (b + 1) * size):
            message = normalize(track(run, i, now - timedelta(seconds=2)), request)
            batch.append(
                Event(seq=i, source="bench", message_id=message.message_id, raw=message.body)
            )
        out.append(batch)
    return out


def dump(path: Path) -> dict[tuple[str, str], Any]:
    """Every table's column types and rows (as text, by id), uuid_ts left out."""
    conn = duckdb.connect(str(path), read_only=True)
    out: dict[tuple[str, str], Any] = {}
    tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables")
    for schema, table in tables.fetchall():
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? AND column_name <> 'uuid_ts' "
            "ORDER BY column_name",
            [schema, table],
        ).fetchall()
        names = ", ".join(f'"{c}"::VARCHAR' for c, _ in columns)
        rows = conn.execute(f'SELECT {names} FROM "{schema}"."{table}" ORDER BY id').fetchall()
        out[(schema, table)] = (columns, rows)
    conn.close()
    return out


SHIM = """
import os

if os.environ.get("EVENTGATE_WAREHOUSE_SQL") == "1":
    import destinations.warehouse as warehouse
    from destinations.warehouse.backend import WarehouseDataError
    from destinations.warehouse.duckdb_sql import DuckDBSqlWarehouse
    from gateway.errors import RetryableDeliveryError

    original = warehouse._backend_for

    def backend_for(settings):
        if settings.backend != "duckdb":
            return original(settings)
        return DuckDBSqlWarehouse(
            settings.path,
            max_columns=settings.max_columns,
            release_file_after_s=settings.release_file_after_s,
        )

    async def send_batch(self, events):
        async with self._lock:
            try:
                try:
                    result = await self.backend.load_events(events)
                except (ConnectionError, OSError, TimeoutError) as exc:
                    raise RetryableDeliveryError(f"warehouse unreachable: {exc}") from exc
                self._report(result)
            except WarehouseDataError as exc:
                if len(events) == 1:
                    return [warehouse._refused(exc)]
                return [await self._load_alone(event) for event in events]
        return None

    warehouse._backend_for = backend_for
    warehouse.WarehouseDestination.send_batch = send_batch
"""


def end_to_end(runs: int) -> int:
    """``bench/warehouse.py --backend duckdb`` as it is and through the SQL path, alternately."""
    import json
    import os
    import subprocess

    shim = Path(tempfile.mkdtemp(prefix="eventgate-sql-shim-"))
    (shim / "sitecustomize.py").write_text(SHIM)
    found: dict[str, list[float]] = {"python": [], "sql": []}
    for run in range(2 * runs):
        name = ("python", "sql")[run % 2]
        out = shim / f"{name}-{run}.json"
        env = {**os.environ, "PYTHONPATH": str(shim), "EVENTGATE_WAREHOUSE_SQL": str(run % 2)}
        command = [sys.executable, str(ROOT / "bench" / "warehouse.py"), "--backend", "duckdb"]
        subprocess.run([*command, "--out", str(out)], env=env, check=True, capture_output=True)
        (result,) = json.loads(out.read_text())["results"]
        assert result["complete"], result["warehouse"]
        found[name].append(result["gateway"]["rows_per_s"])
        print(f"{name:<7} end to end: {result['gateway']['rows_per_s']:>9,.0f} rows/s")
    for name, rates in found.items():
        print(
            f"{name:<7} median:     {statistics.median(rates):>9,.0f} rows/s over {len(rates)} runs"
        )
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="DuckDB threads (0: default)")
    parser.add_argument("--warmup", type=int, default=2, help="batches left out of the medians")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N", help="see above")
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end(args.end_to_end)
    work = batches(args.batches, args.events)
    tmp = Path(tempfile.mkdtemp(prefix="eventgate-sql-spike-"))
    settings = WarehouseSettings(path=tmp / "python.duckdb", release_file_after_s=None)
    loaders: dict[str, Any] = {}
    python = WarehouseDestination("python", settings)
    python.backend = TimedPython(settings.path, max_columns=1000, release_file_after_s=None)
    plain = WarehouseDestination("plain", settings)
    plain.backend = TimedPython(
        tmp / "plain.duckdb", max_columns=1000, release_file_after_s=None, plain=True
    )
    sql = TimedSql(
        tmp / "sql.duckdb",
        max_columns=1000,
        release_file_after_s=None,
        threads=args.threads or None,
    )
    for destination in (python, plain):
        await destination.open()
    await sql.open()
    loaders = {
        "python": (python.send_batch, python.backend),
        "python, plain insert": (plain.send_batch, plain.backend),
        "sql": (sql.load_events, sql),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in loaders}
    gc.collect()
    gc.freeze()
    names = list(loaders)
    for number, batch in enumerate(work):
        for name in names[number % 3 :] + names[: number % 3]:  # rotated: no loader always first
            load, backend = loaders[name]
            backend.spent[0] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            await load(batch)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if number >= args.warmup:
                results[name].append((wall, cpu, backend.spent[0]))
    gc.unfreeze()
    for destination in (python, plain):
        await destination.close()
    await sql.close()
    n = args.events
    rows = 2 * n
    print(f"{len(work)} batches of {n:,} track events ({rows:,} rows); medians of the last "
          f"{len(work) - args.warmup}; DuckDB threads: {args.threads or 'default'}")  # fmt: skip
    print(f"{'loader':<22} {'wall us/ev':>10} {'(q1-q3)':>11} {'cpu us/ev':>10} {'duckdb':>8} "
          f"{'python':>8} {'rows/s (wall)':>14} {'rows/s (cpu)':>13}")  # fmt: skip
    for name, measured in results.items():
        walls = statistics.quantiles([m[0] / n * 1e6 for m in measured], n=4)
        wall = statistics.median(m[0] for m in measured)
        cpu = statistics.median(m[1] for m in measured)
        inside = statistics.median(m[2] for m in measured)
        print(
            f"{name:<22} {wall / n * 1e6:>10.1f} {walls[0]:>5.1f}-{walls[2]:<5.1f} "
            f"{cpu / n * 1e6:>10.1f} {inside / n * 1e6:>8.1f} {(cpu - inside) / n * 1e6:>8.1f} "
            f"{rows / wall:>14,.0f} {rows / cpu:>13,.0f}"
        )
    base = statistics.median(m[0] for m in results["python"])
    fast = statistics.median(m[0] for m in results["sql"])
    print(f"speed-up (wall, median): {base / fast:.2f}x; fallbacks: {sql.fallbacks or 'none'}")
    same = dump(settings.path) == dump(tmp / "sql.duckdb")
    print(f"python and sql files hold the same tables and rows: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
