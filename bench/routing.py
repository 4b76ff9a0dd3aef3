"""Routing benchmark: ingest-to-delivery throughput with routing rules beside none.

Runs two configurations of the real ``eventgate serve`` (defaults, a temp config and data dir,
a free port), one after the other on the same machine in the same run, interleaved A/B/A/B:

- **no rules**: one source, one ``file`` destination (``batch: {max_events: 1000, max_age_s:
  0.2}``);
- **rules**: the same plus a tracking plan on the source (the 4 ecommerce events, typed
  properties, ``required``; ``unplanned_properties: omit``, ``violations: allow``), a source
  transformation (hash ``context.traits.email``), 10 destination filters of every kind and a
  destination transformation; all but 2 "staff" users' events are still delivered.

The same ecommerce track events (``warehouse.py``'s, plus an email for known users) are POSTed
to ``/v1/batch`` (500 per request, 8 connections), timed from the first POST until the file
destination's ``eventgate_events_delivered_total`` reaches the expected count, and until the last
POST returned (ingest alone). The files are read back: every expected event must be there once
and, with rules, in the shape the rules give it. CPU used by the gateway and by anything else
(other people's processes) is measured per run: the 2-core machine is shared.

    .venv/bin/python bench/routing.py [--events 200000] [--pairs 2] [--profile]

Prints events/s per run, the medians and the ratio rules/no rules against the 0.8 target; writes
``bench/results/routing.json``; exits 1 if an event went missing (or was not shaped as expected).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import warehouse  # noqa: E402
from delivery import BATCH, CONCURRENCY, WRITE_KEY, blast, free_port, wait_http  # noqa: E402
from ingest import machine_busy_s  # noqa: E402

TARGET = 0.8  # rules / no rules, end to end
STAFF = ("user-0000", "user-1000")  # the only users a filter drops


def track(run: str, i: int, when: datetime) -> dict[str, Any]:
    """``warehouse.py``'s ``i``-th ecommerce track event, with ``context.traits.email`` if known."""
    message = warehouse.track(run, i, when)
    if "userId" in message:  # two events in three come from a known user
        message["context"]["traits"] = {"email": f" User{i % 2000}@Example.com"}
    return message


def expected(n: int) -> int:
    """How many of events 0..n-1 the rules deliver: all but the staff users' (``no-staff``)."""
    return sum(1 for i in range(n) if not (i % 3 and f"user-{i % 2000:04d}" in STAFF))


def schema(required: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required.split()}


TYPES = "string number boolean object integer"
STR, NUM, BOOL, OBJ, INT = ({"type": t} for t in TYPES.split())
PRODUCT = {"product_id": STR, "sku": STR, "name": STR, "variant": OBJ}
PRODUCT |= {"price": NUM | {"minimum": 0}}
ORDER = {"order_id": STR, "currency": STR | {"pattern": "^[A-Z]{3}$"}, "revenue": NUM}
ORDER |= {"shipping": NUM, "tax": NUM}
PLAN = {  # Product Viewed's "position" is not planned: omitted (from 1 event in 4)
    "name": "shop",
    "track": {
        "Product Viewed": schema(
            "product_id sku price", PRODUCT | {"brand": STR, "category": STR, "in_stock": BOOL}
        ),
        "Product Added": schema(
            "product_id sku price quantity",
            PRODUCT | {"quantity": INT | {"minimum": 1}, "cart_id": STR, "gift": BOOL},
        ),
        "Checkout Started": schema(
            "order_id value currency",
            ORDER | {"value": NUM, "step": INT, "coupon_applied": BOOL, "cart": OBJ},
        ),
        "Order Completed": schema(
            "order_id total currency",
            ORDER
            | {"total": NUM | {"minimum": 0}, "repeat_customer": BOOL}
            | {"address": schema("city zip", {"city": STR, "zip": STR})},
        ),
    },
}
SOURCE_RULES = {
    "tracking_plan": "shop",
    "protocols": {"unplanned_properties": "omit", "violations": "allow"},
    "transformations": [{"name": "hash-email", "hash_properties": ["context.traits.email"]}],
}
FILTERS = [  # they run in Segment's order: sample, drop, only_send, drop/allow properties
    {"name": "all-users", "sample": {"percent": 100, "path": "userId"}},
    {"name": "no-tests", "if": "match(event, 'Test *') or properties.test = true", "drop": True},
    {"name": "no-staff", "if": f"userId in {list(STAFF)}", "drop": True},
    {"name": "no-bots", "if": "match(context.userAgent, '*[Bb]ot*')", "drop": True},
    {"name": "no-internal", "if": "contains(context.page.url, '://internal.')", "drop": True},
    {"name": "no-free-orders", "if": "exists(properties.total) and properties.total <= 0"}
    | {"drop": True},
    {"name": "ecommerce-only", "only_send": True}
    | {"if": "match(event, 'Product *') or event in ['Checkout Started', 'Order Completed']"},
    {"name": "no-client-details", "drop_properties": {"context": ["ip", "userAgent"]}},
    {"name": "top-level", "allow_properties": {"": ["event", "properties", "context"]}},
    {"name": "page-fields", "allow_properties": {"context.page": ["path", "url", "title"]}},
]
DESTINATION_TRANSFORM = {"name": "order-total", "if": "event = 'Order Completed'"}
DESTINATION_TRANSFORM |= {"property_renames": {"total": "order_total"}}
DESTINATION_TRANSFORM |= {"drop_properties": ["repeat_customer"]}


def misshapen(message: dict[str, Any]) -> bool:
    """Whether a message the rules delivered lacks something the rules do to every event."""
    context, properties = message.get("context", {}), message.get("properties", {})
    return (
        not {"ip", "userAgent"}.isdisjoint(context)
        or "referrer" in context.get("page", {})
        or len(context.get("traits", {}).get("email", "0" * 64)) != 64  # a sha256 hex digest
        or "position" in properties
        or "total" in properties
        or message.get("userId") in STAFF
    )


def read_output(directory: Path, rules: bool) -> dict[str, int]:
    """Lines, distinct messageIds and (with rules) misshapen messages in the JSON-lines files."""
    lines = bad = 0
    ids: set[str] = set()
    for path in directory.rglob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            message = orjson.loads(line)
            lines += 1
            ids.add(message["messageId"])
            bad += rules and misshapen(message)
    return {"lines": lines, "distinct": len(ids), "misshapen": bad}


def start_gateway(rules: bool, tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Write a config into ``tmp`` and start ``eventgate serve`` with it on a free port."""
    port = free_port()
    source: dict[str, Any] = {"name": "bench", "write_keys": [WRITE_KEY]}
    destination: dict[str, Any] = {"name": "files", "type": "file"}
    destination |= {"batch": {"max_events": 1000, "max_age_s": 0.2}}
    destination |= {"settings": {"directory": str(tmp / "files")}}
    config: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": port}}
    config |= {"storage": {"data_dir": str(tmp / "data")}}
    config |= {"sources": [source], "destinations": [destination]}
    if rules:
        source |= SOURCE_RULES
        destination |= {"filters": FILTERS, "transformations": [DESTINATION_TRANSFORM]}
        config["tracking_plans"] = [PLAN]
    tmp.mkdir()
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    serve = ["serve", "--config", str(tmp / "gateway.yaml"), "--log-level", "warning"]
    with (tmp / "gateway.out").open("wb") as out:
        command = [sys.executable, "-m", "gateway", *serve]
        gateway = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
    return f"http://127.0.0.1:{port}", gateway


def gateway_pids(router: int) -> list[int]:
    """The router process, then its ingress processes."""
    pgrep = subprocess.run(["pgrep", "-P", str(router)], check=False, capture_output=True)
    return [router, *sorted(int(pid) for pid in pgrep.stdout.split())]


def cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds ``pids`` have used so far (this process's if empty)."""
    if not pids:
        return sum(os.times()[:2])
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_profilers(out: Path, name: str, pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """``py-spy record --format raw`` on the router process and the first ingress process."""
    py_spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-p"]
    files = [out.with_name(f"routing-profile-{name}-{role}.txt") for role in ("router", "ingress")]
    return [
        subprocess.Popen([*py_spy, str(pid), "-o", str(file)], stdout=subprocess.DEVNULL)
        for pid, file in zip(pids, files, strict=False)
    ]


def stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


async def delivered(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith('eventgate_events_delivered_total{destination="files"}'):
                return float(line.split()[-1])
    return 0.0


async def one_run(
    args: argparse.Namespace, rules: bool, tmp: Path, bodies: list[bytes], profile: str | None
) -> dict[str, Any]:
    """Start a gateway, POST every body, time ingest and delivery, stop it, read the files."""
    n = len(bodies) * BATCH
    want = expected(n) if rules else n
    url, gateway = start_gateway(rules, tmp)
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        await wait_http(f"{url}/health")
        pids = gateway_pids(gateway.pid)
        if profile:
            profilers = start_profilers(args.out, profile, pids)
            await asyncio.sleep(1)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            cpu = [machine_busy_s(), cpu_s(pids), cpu_s([])]
            per_process = [cpu_s([pid]) for pid in pids]
            started = time.monotonic()
            await blast(session, f"{url}/v1/batch", bodies)
            ingested = time.monotonic() - started
            while (count := await delivered(session, url)) < want:
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"{count:.0f} of {want} events delivered in {args.timeout}s")
                if gateway.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {gateway.returncode}")
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - started
            cpu = [
                b - a for a, b in zip(cpu, [machine_busy_s(), cpu_s(pids), cpu_s([])], strict=True)
            ]
            per_process = [cpu_s([pid]) - used for pid, used in zip(pids, per_process, strict=True)]
            await asyncio.sleep(0.5)  # anything delivered beyond the expected count shows by now
            count = await delivered(session, url)
    finally:
        for profiler in profilers:
            stop(profiler, signal.SIGINT)
        stop(gateway, signal.SIGTERM)
    output = await asyncio.to_thread(read_output, tmp / "files", rules)
    complete = output["lines"] == output["distinct"] == want == count and not output["misshapen"]
    return {
        "config": "rules" if rules else "no rules",
        **{"events": n, "expected": want, "delivered_metric": count, "output": output},
        **{"complete": complete, "seconds": seconds, "ingest_seconds": ingested},
        **{"events_per_s": n / seconds, "ingest_events_per_s": n / ingested},
        "gateway_cores": cpu[1] / seconds,
        "router_cores": per_process[0] / seconds,
        "ingress_cores": [used / seconds for used in per_process[1:]],
        "cpu_us_per_event": {
            "router": per_process[0] / n * 1e6,
            "ingress": sum(per_process[1:]) / n * 1e6,
        },
        "other_cores": max(cpu[0] - cpu[1] - cpu[2], 0) / seconds,  # the script's not counted
        "exit_code": gateway.returncode,
        "gateway_output": (tmp / "gateway.out").read_text().splitlines()[-20:],
    }


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print a line per run, the medians and the ratios; return them."""
    print(f"\n{'run':<4} {'configuration':<15} {'end to end ev/s':>15} {'ingest ev/s':>11}", end="")
    print(f" {'gateway':>7} {'router':>6} {'ingress':>11} {'other':>5}  check")
    for i, r in enumerate(runs, 1):
        check = "ok" if r["complete"] else f"FAILED: {r['output']}, {r['expected']:,} expected"
        print(f"{i:<4} {r['config']:<15} {r['events_per_s']:>15,.0f}", end="")
        print(f" {r['ingest_events_per_s']:>11,.0f} {r['gateway_cores']:>7.2f}", end="")
        ingress = "+".join(f"{used:.2f}" for used in r["ingress_cores"])
        print(f" {r['router_cores']:>6.2f} {ingress:>11}", end="")
        print(f" {r['other_cores']:>5.2f}  {check}")
    summary: dict[str, Any] = {}
    for config in ("no rules", "rules"):
        mine = [r for r in runs if r["config"] == config]
        median = [
            statistics.median(r[k] for r in mine) for k in ("events_per_s", "ingest_events_per_s")
        ]
        summary[config] = {"end_to_end": median[0], "ingest": median[1]}
        cpu = {
            role: statistics.median(r["cpu_us_per_event"][role] for r in mine)
            for role in ("router", "ingress")
        }
        summary[config]["cpu_us_per_event"] = cpu
        print(f"{'':<4} {'median ' + config:<15} {median[0]:>15,.0f} {median[1]:>11,.0f}", end="")
        print(f"   CPU per event: router {cpu['router']:.1f} us, ingress {cpu['ingress']:.1f} us")
    for kind in ("end_to_end", "ingest"):
        summary[f"ratio_{kind}"] = summary["rules"][kind] / summary["no rules"][kind]
    summary["met"] = summary["ratio_end_to_end"] >= TARGET
    met = "met" if summary["met"] else "NOT met"
    print(f"ratio rules/no rules: end to end {summary['ratio_end_to_end']:.3f} ", end="")
    print(f"(ingest alone {summary['ratio_ingest']:.3f}); target >= {TARGET}: {met}")
    print("gateway, router, ingress, other: cores the gateway's processes (the router process,")
    print("each ingress process) and anything but them and this script used from the first POST")
    print("until every event was delivered; CPU per event: the router's and the ingress processes'")
    if any(r["other_cores"] > 0.25 for r in runs):
        print("WARNING: other processes used CPU during the runs; rerun on a quiet machine")
    return summary


async def run(args: argparse.Namespace, tmp: Path) -> int:
    n = args.events - args.events % BATCH
    run_id, when = f"{os.getpid()}{int(time.time()):x}", datetime.now(UTC) - timedelta(seconds=2)
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    bodies = [
        orjson.dumps(
            {"batch": [track(run_id, i, when) for i in range(s, s + BATCH)], "sentAt": sent_at}
            | {"writeKey": WRITE_KEY}
        )
        for s in range(0, n, BATCH)
    ]
    print(
        f"{n:,} events ({sum(map(len, bodies)) / 2**20:.0f} MiB of /v1/batch bodies), "
        f"{args.pairs} pair(s) no rules / rules; the rules deliver {expected(n):,} of them"
    )
    schedule = [(rules, None) for _ in range(args.pairs) for rules in (False, True)]
    if args.profile:  # one more pair under py-spy, left out of the figures
        schedule += [(False, "none"), (True, "rules")]
    runs: list[dict[str, Any]] = []
    profiled: list[dict[str, Any]] = []
    for k, (rules, profile) in enumerate(schedule):
        result = await one_run(args, rules, tmp / f"run-{k}", bodies, profile)
        (profiled if profile else runs).append(result)
        under = " (under py-spy)" if profile else ""
        print(f"  {result['config']:<8} {result['events_per_s']:>8,.0f} events/s end to end{under}")
    summary = report(runs)
    meta = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "commit": args.commit}
    meta |= {"uncommitted": args.dirty, "python": platform.python_version(), "argv": sys.argv[1:]}
    meta |= {"cores": os.cpu_count(), "batch": BATCH, "connections": CONCURRENCY, "target": TARGET}
    used = {"source": SOURCE_RULES, "plan": PLAN, "filters": FILTERS}
    used |= {"destination_transformation": DESTINATION_TRANSFORM}
    results = meta | {"rules": used, "summary": summary, "runs": runs, "profiled_runs": profiled}
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {args.out}")
    if not all(r["complete"] for r in runs + profiled):
        print("FAILED: an event went missing, was duplicated or was misshapen", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Run the benchmark; exit 1 unless every run delivered exactly the expected events."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--pairs", type=int, default=2, help="no rules / rules pairs (A/B/A/B)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait per run")
    parser.add_argument("--profile", action="store_true", help="one more pair, under py-spy")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "routing.json")
    args = parser.parse_args()
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=False, capture_output=True)
    status = [*git, "status", "--short", "gateway", "destinations"]  # uncommitted code measured
    args.commit = head.stdout.decode().strip()
    args.dirty = (
        subprocess.run(status, check=False, capture_output=True).stdout.decode().splitlines()
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eventgate-routing-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
