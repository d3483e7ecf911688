"""End to end: `dagster job execute` of a sync whose diff has N changed rows, to the local gateway.

A temp project (YAML + warehouse of N rows, a track sync without send_initial_results), then:

1. a first run commits the baseline and sends nothing (timed, for reference);
2. a run with no change: the fixed cost of a run (process start, definitions, snapshot and diff of
   N rows, nothing to send) -- baseline (a);
3. every row changes a carried column; the measured run sends N `changed` events: wall time,
   events per second, peak RSS of the process tree, step durations from Dagster's log;
4. baseline (b): the events step's read + build + send path without its commits and without
   Dagster: N pending events read from a sync state by `iter_event_columns` and sent by the
   resource to the same gateway (`bench.bench_delivery --child ours_flat`).

The gateway counts the events (all N must arrive, with N distinct messageIds).

    .venv/bin/python -m bench.bench_end_to_end --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import duckdb

from .common import (
    DEFAULT_WORKDIR,
    ChildRun,
    child_env,
    fmt_mb,
    fmt_rows,
    invocation,
    log,
    markdown_table,
    ratio,
    record_section,
    run_child,
    wait_for_quiet,
)
from .data import SYNC_NAME, change_all_users, fresh_project
from .gateway import RunningGateway

WRITE_KEY = "bench-write-key"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
STEP_RE = re.compile(r'Finished execution of step "[^"]*__(\w+)" in ([\dhms.]+?)\.?(?:\s|$)')
DURATION_RE = re.compile(r"([\d.]+)(ms|h|m|s)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
RUN_RE = re.compile(r"RUN_SUCCESS")


def _env(config: Path, url: str | None) -> dict[str, str]:
    env = child_env()
    env["RUDDER_SYNC_CONFIG"] = str(config)
    if url:
        env["RUDDERSTACK_DATA_PLANE_URL"] = url
        env["RUDDERSTACK_WRITE_KEY"] = WRITE_KEY
    return env


def _steps(run: ChildRun) -> dict[str, float]:
    steps = {}
    for name, text in STEP_RE.findall(run.stdout + run.stderr):
        steps[name] = sum(float(v) * UNITS[u] for v, u in DURATION_RE.findall(text))
    return steps


def execute(
    root: Path, config: Path, url: str, label: str, timeout: float, quiet: float
) -> ChildRun:
    if quiet:
        wait_for_quiet(timeout=quiet)
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
    run = run_child(command, env=_env(config, url), cwd=root, timeout=timeout)
    output = run.stdout + run.stderr
    if run.returncode != 0 or not RUN_RE.search(output):
        raise SystemExit(
            f"{label}: dagster job execute failed ({run.returncode}):\n{output[-5000:]}"
        )
    steps = _steps(run)
    log(
        f"  {label:28s} {run.wall_seconds:8.2f}s wall, peak RSS {fmt_mb(run.peak_rss_mb)} MB; "
        + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items())
        + f"; other processes {run.other_cpu_share():.0%} CPU"
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description="End-to-end benchmark")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument(
        "--profile", action="store_true", help="also run the measured job under py-spy"
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600,
        help="before each run, wait up to this many seconds for other processes to leave the "
        "machine idle (0: do not wait)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows = args.rows
    root = args.workdir / f"e2e_{rows}"
    config = fresh_project(root, rows)
    log(f"end to end, {fmt_rows(rows)} rows in {root}")
    with RunningGateway(WRITE_KEY) as gateway:
        first = execute(
            root, config, gateway.url, "1. first run (baseline)", args.timeout, args.quiet_timeout
        )
        assert gateway.stats()["events"] == 0, "the baseline run must send nothing"
        idle = execute(
            root, config, gateway.url, "2. no change (fixed cost)", args.timeout, args.quiet_timeout
        )
        assert gateway.stats()["events"] == 0, "a run without change must send nothing"
        with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
            change_all_users(conn)
        state_backup = None
        if args.profile:
            state_backup = root / "state_before_measured_run"
            shutil.copytree(root / "state", state_backup)
        gateway.reset()
        gateway_cpu = gateway.cpu_seconds()
        measured = execute(
            root, config, gateway.url, "3. all rows changed", args.timeout, args.quiet_timeout
        )
        gateway_cpu = gateway.cpu_seconds() - gateway_cpu
        stats = gateway.stats()
        if stats["events"] != rows or stats["distinct_message_ids"] != rows:
            raise SystemExit(f"the gateway counted {stats['events']} events, expected {rows}")
        log(f"  gateway: {stats['events']:,} events in {stats['requests']:,} requests")
        gateway.reset()
        if args.quiet_timeout:
            wait_for_quiet(timeout=args.quiet_timeout)
        floor_gateway_cpu = gateway.cpu_seconds()
        floor_run = run_child(
            [
                sys.executable,
                "-m",
                "bench.bench_delivery",
                "--child",
                "ours_flat",
                "--url",
                gateway.url,
                "--events",
                str(rows),
            ],
            timeout=args.timeout,
        )
        if not floor_run.ok or gateway.stats()["events"] != rows:
            raise SystemExit(f"delivery floor failed:\n{floor_run.stderr[-3000:]}")
        floor_gateway_cpu = gateway.cpu_seconds() - floor_gateway_cpu
        floor_seconds = floor_run.result["seconds"]
        log(f"  4. pending events -> resource, no commits: {floor_seconds:.2f}s")
        if args.profile and state_backup is not None:
            profile_measured_run(root, config, gateway, state_backup, args.timeout)

    body = report(rows, first, idle, measured, stats, gateway_cpu, floor_run, floor_gateway_cpu)
    print(body)
    if not args.no_record:
        record_section("bench_end_to_end", "End to end", body, invocation())


def profile_measured_run(
    root: Path, config: Path, gateway: RunningGateway, state_backup: Path, timeout: float
) -> None:
    """Re-run the measured job from the same state under py-spy (all threads, native)."""
    from .profiling import record_py_spy

    shutil.rmtree(root / "state")
    shutil.copytree(state_backup, root / "state")
    gateway.reset()
    log("profiling the measured run (py-spy)")
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
    env = _env(config, gateway.url)
    os.chdir(root)
    record_py_spy(command, "end_to_end", env=env, focus=("execute_step", "_worker ("))


def report(
    rows: int,
    first: ChildRun,
    idle: ChildRun,
    measured: ChildRun,
    stats: dict[str, Any],
    gateway_cpu: float,
    floor_run: ChildRun,
    floor_gateway_cpu: float,
) -> str:
    floor_seconds = floor_run.result["seconds"]
    steps = _steps(measured)
    events_seconds = steps.get("events", 0.0)
    eps_wall = rows / measured.wall_seconds
    eps_step = rows / events_seconds if events_seconds else 0.0
    headers = [
        "run",
        "wall s",
        "events",
        "events/s (wall)",
        "peak RSS MB",
        "snapshot / diff / events s",
        "other CPU %",
    ]

    def step_text(run: ChildRun) -> str:
        s = _steps(run)
        return " / ".join(f"{s.get(k, 0):.2f}" for k in ("snapshot", "diff", "events"))

    table = [
        [
            "1. first run: baseline committed, nothing sent",
            f"{first.wall_seconds:.2f}",
            "0",
            "-",
            fmt_mb(first.peak_rss_mb),
            step_text(first),
            f"{100 * first.other_cpu_share():.0f}",
        ],
        [
            "2. no change (baseline a: fixed cost of a run)",
            f"{idle.wall_seconds:.2f}",
            "0",
            "-",
            fmt_mb(idle.peak_rss_mb),
            step_text(idle),
            f"{100 * idle.other_cpu_share():.0f}",
        ],
        [
            f"3. all {rows:,} rows changed (measured)",
            f"{measured.wall_seconds:.2f}",
            f"{stats['events']:,}",
            f"{eps_wall:,.0f}",
            fmt_mb(measured.peak_rss_mb),
            step_text(measured),
            f"{100 * measured.other_cpu_share(also_ours=gateway_cpu):.0f}",
        ],
        [
            f"4. {rows:,} pending events -> resource, no commits, no Dagster (baseline b)",
            f"{floor_seconds:.2f}",
            f"{rows:,}",
            f"{rows / floor_seconds:,.0f}",
            "-",
            "-",
            f"{100 * floor_run.other_cpu_share(also_ours=floor_gateway_cpu):.0f}",
        ],
    ]
    timeline = ", ".join(
        f"{int(f * 100)}% {measured.rss_at(f):,.0f}" for f in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    )
    lines = [
        markdown_table(headers, table),
        "",
        f"- Measured run: {measured.wall_seconds:.1f}s wall for {rows:,} events = "
        f"{eps_wall:,.0f} events/s over the whole `dagster job execute` "
        f"(process start-up included); the events step alone {events_seconds:.1f}s = "
        f"{eps_step:,.0f} events/s.",
        f"- Ratios: measured wall / (no-change run + baseline b) = "
        f"{ratio(measured.wall_seconds, idle.wall_seconds + floor_seconds)}; events step / "
        f"baseline b = {ratio(events_seconds, floor_seconds)} (what the events step adds to "
        "reading, building and sending: commits of the state and the delivery log, Dagster "
        "metadata and the events DataFrame).",
        f"- Gateway: {stats['requests']:,} requests, average body "
        f"{stats['bytes_body'] / max(1, stats['requests']) / 1024:,.0f} KB, "
        f"{stats['bytes_wire'] / 1e6:,.1f} MB on the wire, gateway CPU {gateway_cpu:.1f}s.",
        f"- Tree RSS of the measured run (MB) at 10/25/50/75/90/100 % of its wall time: "
        f"{timeline}.",
        "",
        "Runs use `dagster job execute -m rudder_sync.definitions -j bench_users` without "
        "DAGSTER_HOME (an ephemeral instance, as the CLI tests do), the in-process executor, "
        "RUDDER_SYNC_CONFIG / RUDDERSTACK_DATA_PLANE_URL / RUDDERSTACK_WRITE_KEY set, the change "
        "guard off in the YAML. Step seconds are Dagster's own `STEP_SUCCESS` durations.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
