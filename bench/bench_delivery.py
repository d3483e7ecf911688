"""Delivery: the same Track events to the same fast local gateway, by our resource and the SDK.

Variants (each in its own process; the gateway runs in another one and counts what arrived):

- ``sdk``: the official ``rudder-sdk-python`` with its default settings (``analytics.write_key``,
  ``analytics.dataPlaneUrl``, ``analytics.track(...)``, ``analytics.flush()``). Its queue holds
  10,000 events and ``track`` drops events when it is full, so the producer waits while the queue
  is full: every event is delivered and the figure is the SDK's sending rate.
- ``plain``: a plain batched client: httpx, orjson, 8,000 events (~3.4 MB) per request, gzip 6,
  one request at a time (the "~35k/s" reference of the issue).
- ``ours``: the events step's own path without its state commits: the events are stored first
  (untimed) as pending changes in a sync state, as the diff leaves them (properties already
  rendered JSON); the clock covers ``rudder_sync.events.iter_event_columns`` (DuckDB renders
  each event; Arrow batches of them, no Python object per event) feeding
  ``RudderstackResource(data_plane_url=..., write_key=...).deliver(...)`` with its default
  settings.
- ``ours_prebuilt``: ``deliver`` of events serialized (as Arrow columns) before the clock starts
  (transport only).
- ``ours_flat``: ``ours`` on --flat-events events (1M), with RSS sampled during the delivery, to
  show that memory stays flat.

    .venv/bin/python -m bench.bench_delivery --events 200000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import (
    emit,
    fmt_mb,
    invocation,
    log,
    markdown_table,
    ratio,
    record_section,
    rss_mb,
    run_child,
    wait_for_quiet,
)
from .gateway import RunningGateway

WRITE_KEY = "bench-write-key"
MODULE = "bench.bench_delivery"
VARIANTS = ("sdk", "plain", "ours", "ours_prebuilt")


# -- children ----------------------------------------------------------------------------------
def _sync() -> Any:
    from rudder_sync.config import SyncConfig

    from .data import SYNC, SYNC_NAME

    return SyncConfig(name=SYNC_NAME, **SYNC)


def child_sdk(url: str, count: int) -> dict[str, Any]:
    from rudderstack import analytics

    from .data import EVENT_NAMES, event_rows

    rows = [
        (mid, datetime.fromisoformat(ts.replace("Z", "+00:00")), uid, aid, EVENT_NAMES[ch], props)
        for mid, ts, uid, aid, ch, props, _ in event_rows(count)
    ]
    analytics.write_key = WRITE_KEY
    analytics.dataPlaneUrl = url
    errors: list[str] = []
    analytics.on_error = lambda error, batch: errors.append(str(error))
    waits = 0
    start_rss = rss_mb()
    cpu = time.process_time()
    started = time.perf_counter()
    for mid, ts, uid, aid, name, props in rows:
        client = analytics.default_client
        if client is not None:
            while client.queue.full():  # track() would drop the event: wait for the consumer
                waits += 1
                time.sleep(0.001)
        analytics.track(uid, name, properties=props, timestamp=ts, anonymous_id=aid, message_id=mid)
    analytics.flush()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "events": count,
        "errors": errors[:5],
        "queue_full_waits": waits,
        "start_rss_mb": start_rss,
    }


def child_plain(url: str, count: int, batch_events: int = 8_000) -> dict[str, Any]:
    import zlib

    import httpx
    import orjson

    from .data import EVENT_NAMES, event_rows

    rows = event_rows(count)
    client = httpx.Client(auth=(WRITE_KEY, ""), timeout=30)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    requests = 0
    start_rss = rss_mb()
    cpu = time.process_time()
    started = time.perf_counter()
    for offset in range(0, count, batch_events):
        batch = [
            {
                "type": "track",
                "event": EVENT_NAMES[change],
                "userId": uid,
                "anonymousId": aid,
                "properties": props,
                "messageId": mid,
                "timestamp": ts,
                "context": {"library": {"name": "plain", "version": "0"}},
            }
            for mid, ts, uid, aid, change, props, _ in rows[offset : offset + batch_events]
        ]
        body = orjson.dumps({"batch": batch})
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        payload = compressor.compress(body) + compressor.flush()
        response = client.post(url + "/v1/batch", content=payload, headers=headers)
        response.raise_for_status()
        requests += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "events": count,
        "requests": requests,
        "start_rss_mb": start_rss,
    }


def _outgoing(sync: Any, rows: Any) -> Any:
    """Each pending row serialized by `build_event`, in runs of Arrow columns as the events step
    reads them (for ours_prebuilt)."""
    import orjson

    from rudder_sync.events import READ_BATCH_ROWS, build_event
    from rudder_sync.rudderstack import EventColumns, OutgoingEvent

    run = []
    for i, (mid, ts, uid, aid, change, _props, props_json) in enumerate(rows):
        event = build_event(sync, change, mid, ts, uid, aid, props_json)
        run.append(OutgoingEvent(ref=i, message_id=mid, body=orjson.dumps(event)))
        if len(run) == READ_BATCH_ROWS:
            yield EventColumns.of(run)
            run = []
    if run:
        yield EventColumns.of(run)


@contextmanager
def _pending_state(count: int, chunk: int = 50_000) -> Iterator[Any]:
    """A sync state whose `pending` table holds the benchmark events, as a diff leaves them.

    Filled in chunks from the lazy generator, so that no Python copy of the events outlives the
    set-up (the real events step only ever holds one Arrow batch).
    """
    import shutil
    import tempfile

    import pyarrow as pa

    from rudder_sync.state import open_state

    from .data import SYNC_NAME, iter_event_rows

    folder = Path(tempfile.mkdtemp(prefix="rudder_sync_bench_delivery_"))
    try:
        with open_state(folder, SYNC_NAME, dry_run=False) as state:
            rows = iter_event_rows(count)
            change_id = 0
            while True:
                block = list(itertools.islice(rows, chunk))
                if not block:
                    break
                table = pa.table(
                    {
                        "__rs_change_id": range(change_id + 1, change_id + len(block) + 1),
                        "__rs_change": [r[4] for r in block],
                        "__rs_message_id": [r[0] for r in block],
                        "__rs_timestamp": [r[1] for r in block],
                        "__rs_user_id": [r[2] for r in block],
                        "__rs_anonymous_id": [r[3] for r in block],
                        "__rs_props": [r[6] for r in block],
                    }
                )
                change_id += len(block)
                state.conn.register("__bench_block", table)
                state.conn.execute(
                    "insert into pending by name select *, true as __rs_send, 0 as __rs_attempts "
                    "from __bench_block"
                ).fetchall()
                state.conn.unregister("__bench_block")
            del block, table
            state.conn.execute("checkpoint").fetchall()
            gc.collect()
            yield state
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_ours(url: str, count: int, prebuilt: bool, profile: bool) -> dict[str, Any]:
    """ours: the events step's path without its commits: `iter_event_columns` over a state
    holding the events as pending changes -> `RudderstackResource.deliver`.
    ours_prebuilt: `deliver` of EventColumns serialized before the clock starts."""
    from rudder_sync.events import iter_event_columns
    from rudder_sync.rudderstack import DeliveryStats, RudderstackResource

    from .common import RssSampler
    from .data import event_rows

    sync = _sync()
    resource = RudderstackResource(data_plane_url=url, write_key=WRITE_KEY)
    stats = DeliveryStats()
    accepted = 0
    with contextlib.ExitStack() as stack:
        if prebuilt:
            events: Any = list(_outgoing(sync, event_rows(count)))
        else:
            state = stack.enter_context(_pending_state(count))
            events = iter_event_columns(state, sync)
        start_rss = rss_mb()
        sampler = RssSampler(0.05)
        if profile:
            from .profiling import pyinstrument_to

            stack.enter_context(pyinstrument_to("delivery_ours"))
        with sampler:
            cpu = time.process_time()
            started = time.perf_counter()
            for outcome in resource.deliver(events, stats=stats):
                accepted += len(outcome.accepted)
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "events": accepted,
        "requests": stats.requests,
        "retries": stats.retries,
        "bytes_uncompressed": stats.bytes_uncompressed,
        "bytes_sent": stats.bytes_sent,
        "start_rss_mb": start_rss,
        "rss_timeline_mb": {
            f"{int(f * 100)}%": round(sampler.at_fraction(f), 1) for f in (0.1, 0.25, 0.5, 0.75, 1)
        },
        "delivery_peak_rss_mb": sampler.peak,
        "rss_growth_after_25pct_mb": sampler.growth_after(0.25),
    }


def run_as_child(args: argparse.Namespace) -> None:
    if args.child == "sdk":
        result = child_sdk(args.url, args.events)
    elif args.child == "plain":
        result = child_plain(args.url, args.events)
    else:
        result = child_ours(
            args.url, args.events, prebuilt=args.child == "ours_prebuilt", profile=args.profile
        )
    emit(result)


# -- parent ------------------------------------------------------------------------------------
def measure(
    gateway: RunningGateway, variant: str, events: int, profile: bool = False, quiet: float = 600
) -> dict:
    if quiet:
        wait_for_quiet(timeout=quiet)
    gateway.reset()
    gateway_cpu = gateway.cpu_seconds()
    command = [
        "python",
        "-m",
        MODULE,
        "--child",
        variant,
        "--url",
        gateway.url,
        "--events",
        str(events),
    ]
    import sys

    command[0] = sys.executable
    if profile:
        command.append("--profile")
    run = run_child(command, timeout=3600)
    if not run.ok:
        raise SystemExit(f"{variant} failed ({run.returncode}):\n{run.stderr[-4000:]}")
    stats = gateway.stats()
    gateway_cpu = gateway.cpu_seconds() - gateway_cpu
    result = run.result
    arrived = stats["events"]
    seconds = result["seconds"]
    row = {
        "variant": variant,
        "events": events,
        "arrived": arrived,
        "distinct": stats["distinct_message_ids"],
        "seconds": seconds,
        "eps": arrived / seconds,
        "requests": stats["requests"],
        "avg_body_kb": stats["bytes_body"] / max(1, stats["requests"]) / 1024,
        "max_body_kb": stats["max_body"] / 1024,
        "wire_mb": stats["bytes_wire"] / 1e6,
        "peak_rss_mb": run.peak_rss_mb,
        "start_rss_mb": result.get("start_rss_mb", 0.0),
        "client_cpu": result.get("cpu_seconds", 0.0),
        "gateway_cpu": gateway_cpu,
        "other_cpu": run.other_cpu_share(also_ours=gateway_cpu),
        "child": result,
    }
    ok = arrived == events and stats["distinct_message_ids"] == events
    log(
        f"  {variant:14s} {seconds:8.2f}s {row['eps']:10,.0f} events/s  arrived {arrived:,}"
        f"/{events:,} ({stats['requests']:,} requests, avg body {row['avg_body_kb']:,.0f} KB)"
        f"  peak RSS {run.peak_rss_mb:,.0f} MB; CPU s client {row['client_cpu']:.2f}"
        f" gateway {gateway_cpu:.2f}; other processes {row['other_cpu']:.0%} CPU"
        f"{'' if ok else '  !! NOT ALL EVENTS ARRIVED'}"
    )
    if not ok:
        raise SystemExit(f"{variant}: the gateway counted {arrived} events, expected {events}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="Delivery benchmark")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--flat-events",
        type=int,
        default=1_000_000,
        help="events for the memory-flatness run of ours (0: skip)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant, best kept")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile ours (pyinstrument + py-spy if available)",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600,
        help="before each variant, wait up to this many seconds for other processes to leave "
        "the machine idle (0: do not wait)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--child", choices=[*VARIANTS, "ours_flat"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_as_child(args)
        return

    variants = [v for v in args.variants.split(",") if v]
    rows: dict[str, dict] = {}
    with RunningGateway(WRITE_KEY) as gateway:
        log(f"gateway {gateway.url}; {args.events:,} Track events per variant")
        for variant in variants:
            repeats = args.repeat
            runs = [
                measure(gateway, variant, args.events, quiet=args.quiet_timeout)
                for _ in range(repeats)
            ]
            rows[variant] = max(runs, key=lambda r: r["eps"])
        flat = (
            measure(gateway, "ours_flat", args.flat_events, quiet=args.quiet_timeout)
            if args.flat_events
            else None
        )
        if args.profile:
            profile_delivery(gateway, args.events)

    body = report(rows, flat, args.events)
    print(body)
    if not args.no_record:
        record_section("bench_delivery", "Delivery", body, invocation())


def profile_delivery(gateway: RunningGateway, events: int) -> None:
    import sys

    from .profiling import record_py_spy

    log("profiling ours (pyinstrument, main thread)")
    measure(gateway, "ours", events, profile=True)
    log("profiling ours (py-spy, all threads)")
    gateway.reset()
    record_py_spy(
        [
            sys.executable,
            "-m",
            MODULE,
            "--child",
            "ours",
            "--url",
            gateway.url,
            "--events",
            str(events),
        ],
        "delivery_ours",
        focus=("RudderstackResource.deliver", "_worker ("),
    )


def report(rows: dict[str, dict], flat: dict | None, events: int) -> str:
    sdk = rows.get("sdk")
    headers = [
        "client",
        "events",
        "arrived (distinct)",
        "seconds",
        "events/s",
        "vs SDK",
        "requests",
        "avg body KB",
        "client CPU s",
        "gateway CPU s",
        "peak RSS MB",
        "other CPU %",
    ]
    labels = {
        "sdk": "rudder-sdk-python, defaults",
        "plain": "plain httpx+orjson, 8k events/request, sequential",
        "ours": "ours: iter_event_columns -> RudderstackResource.deliver",
        "ours_prebuilt": "ours, transport only (pre-serialized events)",
    }
    table = []
    for variant, row in rows.items():
        table.append(
            [
                labels[variant],
                f"{row['events']:,}",
                f"{row['arrived']:,} ({row['distinct']:,})",
                f"{row['seconds']:.2f}",
                f"{row['eps']:,.0f}",
                ratio(row["eps"], sdk["eps"]) if sdk else "-",
                f"{row['requests']:,}",
                f"{row['avg_body_kb']:,.0f}",
                f"{row['client_cpu']:.2f}",
                f"{row['gateway_cpu']:.2f}",
                fmt_mb(row["peak_rss_mb"]),
                f"{100 * row['other_cpu']:.0f}",
            ]
        )
    lines = [markdown_table(headers, table), ""]
    if sdk and "ours" in rows:
        met = rows["ours"]["eps"] >= 15 * sdk["eps"]
        lines.append(
            f"Target >= 15x the SDK: ours is {ratio(rows['ours']['eps'], sdk['eps'])} -> "
            f"{'MET' if met else 'MISSED'}."
        )
    if "ours" in rows:
        c = rows["ours"]["child"]
        lines.append(
            f"Ours: {c['requests']} requests, {c['bytes_uncompressed'] / 1e6:,.1f} MB JSON -> "
            f"{c['bytes_sent'] / 1e6:,.1f} MB gzip, max body {rows['ours']['max_body_kb']:,.0f} KB "
            "(limit 4,000 KB), 4 requests in flight."
        )
    if flat:
        c = flat["child"]
        timeline = ", ".join(f"{k} {v:,.0f}" for k, v in c["rss_timeline_mb"].items())
        growth = c["rss_growth_after_25pct_mb"]
        lines.append(
            f"\nMemory flatness: ours delivering {flat['events']:,} pending events in "
            f"{flat['seconds']:.1f}s ({flat['eps']:,.0f} events/s): RSS at 10/25/50/75/100 % of "
            f"the delivery (MB): {timeline}; largest RSS after the first quarter minus RSS at "
            f"25 %: {growth:+,.0f} MB; process peak {fmt_mb(flat['peak_rss_mb'])} MB "
            f"(dagster import included) -> {'flat' if growth < 50 else 'NOT flat'}."
        )
    lines.append(
        "\nEvents/s = events counted by the gateway / client-side seconds from the first "
        "`track`/`deliver` call to the last answer (event building included; process start-up "
        f"and preparing the {events:,} input events excluded). Each variant ran in its own "
        "process; the gateway (uvicorn, uvloop, httptools, 1 worker) in another, gunzipping "
        "and parsing every body with orjson and counting distinct messageIds. Client CPU s: "
        "the client's CPU time (all threads) over the timed part; other CPU %: share of the "
        "machine's CPU that other processes used meanwhile (0 = a quiet machine)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
