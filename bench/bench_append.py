"""`mode: append` against `mode: diff` on the same append-only events table, in one invocation.

A DuckDB warehouse with an `events` table of N rows (one a second, so 10M rows span ~116 days)
and two syncs of the same model, sending one Track event per new row: `events_append` (`mode:
append`, `cursor: created_at`, `lookback: 1h`) and `events_diff` (the default full diff, the
DuckDB model read in place). Then:

1. each sync's first run records its baseline and sends nothing;
2. NEW rows (default 10k) are appended after the table's end;
3. each sync runs once more (`dagster job execute`, its own process), both sending the NEW
   events to the same counting gateway: rows read out of the warehouse (the snapshot step's
   count), wall and step times, peak RSS of the process tree; 2 and 3 repeat for --rounds
   rounds, and the figures are their medians.

Targets (issue 27): append reads at most 2x the new rows (the lookback included) and its
snapshot + diff steps are at least 20x faster than diff mode's.

    .venv/bin/python -m bench.bench_append --rows 10000000 --new 10000
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
from pathlib import Path

import duckdb
import yaml

from .common import (
    DEFAULT_WORKDIR,
    ChildRun,
    child_command,
    child_env,
    emit,
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
from .gateway import RunningGateway

WRITE_KEY = "bench-write-key"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
APPEND, DIFF = "events_append", "events_diff"
T0 = "2025-01-01 00:00:00+00"  # the table's end before the new rows
LOOKBACK_SECONDS = 3600
STEP_RE = re.compile(r'Finished execution of step "(\w+)__(\w+)" in ([\dhms.]+?)\.?(?:\s|$)')
DURATION_RE = re.compile(r"([\d.]+)(ms|h|m|s)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ROWS_RE = re.compile(r"model returned (\d+) rows")
SYNC_BODY = {
    "model": "select event_id, user_id, amount, plan, created_at from events",
    "primary_key": "event_id",
    "type": "track",
    "user_id": "user_id",
    "mapping": {"amount": "amount", "plan": "plan"},
    "events": {"added": "Order Completed"},
    "timestamp": "created_at",
    "guard": {"max_events": None},
}


def setup(root: Path, rows: int, reuse: bool) -> Path:
    """The project: the warehouse of ``rows`` events (kept with --reuse) and the two syncs."""
    root.mkdir(parents=True, exist_ok=True)
    warehouse = root / "warehouse.duckdb"
    kept = root / f"events_{rows}.duckdb"
    if not (reuse and kept.exists()):
        log(f"  creating {fmt_rows(rows)} events")
        kept.unlink(missing_ok=True)
        with duckdb.connect(str(kept)) as conn:
            conn.execute(_insert_sql(rows, 1, rows + 1, create=True))
    shutil.copyfile(kept, warehouse)
    shutil.rmtree(root / "state", ignore_errors=True)
    config = root / "rudder_sync.yaml"
    syncs = {
        APPEND: {**SYNC_BODY, "mode": "append", "cursor": "created_at", "lookback": "1h"},
        DIFF: SYNC_BODY,
    }
    config.write_text(
        yaml.safe_dump({"warehouse": "warehouse.duckdb", "state": "state", "syncs": syncs})
    )
    return config


def _insert_sql(rows: int, first: int, stop: int, create: bool = False) -> str:
    """Events first..stop-1, one a second, event ``rows`` at T0 (later ones after it)."""
    select = f"""
        select i::bigint as event_id, 'usr_' || (i % 50000)::varchar as user_id,
               round((i % 997) * 1.37, 2) as amount,
               ['free', 'pro', 'team'][1 + (i % 3)::int] as plan,
               timestamptz '{T0}' - to_seconds({rows} - i) as created_at
        from range({first}, {stop}) t(i)
    """
    return f"create table events as {select}" if create else f"insert into events {select}"


def execute(root: Path, config: Path, url: str, sync: str, label: str, quiet: float) -> ChildRun:
    if quiet:
        wait_for_quiet(timeout=quiet)
    env = child_env()
    env.update(
        RUDDER_SYNC_CONFIG=str(config),
        RUDDERSTACK_DATA_PLANE_URL=url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", sync]
    run = run_child(command, env=env, cwd=root, timeout=7200)
    output = run.stdout + run.stderr
    if run.returncode != 0 or "RUN_SUCCESS" not in output:
        raise SystemExit(f"{label}: dagster job execute failed:\n{output[-5000:]}")
    steps = _steps(run)
    log(
        f"  {label:34s} {run.wall_seconds:7.2f}s wall, peak RSS {fmt_mb(run.peak_rss_mb)} MB, "
        f"rows read {_rows_read(run):,}; " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items())
    )
    return run


def _steps(run: ChildRun) -> dict[str, float]:
    return {
        step: sum(float(v) * UNITS[u] for v, u in DURATION_RE.findall(text))
        for _, step, text in STEP_RE.findall(run.stdout + run.stderr)
    }


def _rows_read(run: ChildRun) -> int:
    return sum(int(n) for n in ROWS_RE.findall(run.stdout + run.stderr))


def engine_child(config: Path, sync: str, state: Path) -> None:
    """The snapshot and diff steps' own work, without Dagster: the sync's state backend on a
    copy of its state (what the next Dagster run would do), timed in this process."""
    import time
    from datetime import UTC, datetime

    from rudder_sync.append import sync_backend
    from rudder_sync.config import load_config
    from rudder_sync.diff import DiffMode
    from rudder_sync.warehouses import build_warehouse

    project = load_config(config)
    warehouse = build_warehouse(project.warehouse)
    backend = sync_backend(project.syncs[sync], warehouse, state)
    started = time.perf_counter()
    # the snapshot step's reads share one warehouse connection, as in the asset (assets.py)
    with warehouse.session(), backend.open(False) as opened:
        taken = backend.take_snapshot(opened, None, [])
        snapshot = time.perf_counter() - started
        backend.run_diff(opened, [], DiffMode(), datetime.now(UTC))
    emit(
        {
            "seconds": time.perf_counter() - started,
            "snapshot_seconds": snapshot,
            "rows": sum(taken.rows_by_window.values()),
        }
    )


def engine(root: Path, config: Path, sync: str, quiet: float) -> ChildRun:
    """`engine_child` in a process of its own, on a copy of the sync's state."""
    scratch = root / "engine_state"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for path in (root / "state").glob(f"{sync}.duckdb*"):
        shutil.copy(path, scratch / path.name)
    if quiet:
        wait_for_quiet(timeout=quiet)
    args = ["--child-engine", sync, "--config", str(config), "--state", str(scratch)]
    run = run_child(child_command("bench.bench_append", *args), env=child_env(), timeout=3600)
    if not run.ok:
        raise SystemExit(f"engine {sync} failed:\n{run.stderr[-3000:]}")
    log(
        f"  engine {sync:27s} {run.result['seconds']:7.2f}s (snapshot "
        f"{run.result['snapshot_seconds']:.2f}s), rows read {run.result['rows']:,}, peak RSS "
        f"{fmt_mb(run.peak_rss_mb)} MB"
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description="mode: append vs mode: diff")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of NEW rows, each run by both syncs"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--reuse", action="store_true", help="keep the events table on disk")
    parser.add_argument("--quiet-timeout", type=float, default=600)
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--child-engine", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_engine:
        engine_child(args.config, args.child_engine, args.state)
        return

    root = args.workdir / f"append_{args.rows}"
    log(f"append vs diff: {fmt_rows(args.rows)} events + {fmt_rows(args.new)} new, in {root}")
    config = setup(root, args.rows, args.reuse)
    rounds: list[dict[str, ChildRun]] = []
    engines: list[dict[str, ChildRun]] = []
    with RunningGateway(WRITE_KEY) as gateway:
        firsts = {
            sync: execute(root, config, gateway.url, sync, f"1. {sync}: first run", 0)
            for sync in (APPEND, DIFF)
        }
        assert gateway.stats()["events"] == 0, "first runs must send nothing"
        for number in range(args.rounds):
            first = args.rows + 1 + number * args.new
            with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
                conn.execute(_insert_sql(args.rows, first, first + args.new))
            engines.append(
                {sync: engine(root, config, sync, args.quiet_timeout) for sync in (APPEND, DIFF)}
            )
            measured: dict[str, ChildRun] = {}
            for sync in (APPEND, DIFF):
                gateway.reset()
                label = f"{number + 2}. {sync}: {args.new:,} new"
                measured[sync] = execute(root, config, gateway.url, sync, label, args.quiet_timeout)
                stats = gateway.stats()
                if stats["events"] != args.new or stats["distinct_message_ids"] != args.new:
                    raise SystemExit(f"{sync}: the gateway counted {stats['events']} events")
            rounds.append(measured)
    body = report(args.rows, args.new, firsts, rounds, engines)
    print(body)
    if not args.no_record:
        record_section("bench_append", "Append mode", body, invocation())


def report(
    rows: int,
    new: int,
    firsts: dict[str, ChildRun],
    rounds: list[dict[str, ChildRun]],
    engines: list[dict[str, ChildRun]],
) -> str:
    headers = [
        "run",
        "rows read",
        "wall s",
        "snapshot / diff / events s",
        "peak RSS MB",
        "other CPU %",
    ]

    def line(label: str, run: ChildRun) -> list[str]:
        s = _steps(run)
        return [
            label,
            f"{_rows_read(run):,}",
            f"{run.wall_seconds:.2f}",
            " / ".join(f"{s.get(k, 0):.2f}" for k in ("snapshot", "diff", "events")),
            fmt_mb(run.peak_rss_mb),
            f"{100 * run.other_cpu_share():.0f}",
        ]

    table = [
        line(f"first run, {APPEND} (baseline: the last hour)", firsts[APPEND]),
        line(f"first run, {DIFF} (baseline: every row)", firsts[DIFF]),
    ]
    for number, measured in enumerate(rounds, start=1):
        for sync in (APPEND, DIFF):
            table.append(line(f"round {number}: {new:,} new rows, {sync}", measured[sync]))
            run = engines[number - 1][sync]
            table.append(
                [
                    f"round {number}: {sync}, snapshot + diff without Dagster",
                    f"{run.result['rows']:,}",
                    f"{run.wall_seconds:.2f}",
                    f"{run.result['snapshot_seconds']:.2f} / "
                    f"{run.result['seconds'] - run.result['snapshot_seconds']:.2f} / -",
                    fmt_mb(run.peak_rss_mb),
                    f"{100 * run.other_cpu_share():.0f}",
                ]
            )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    def work(run: ChildRun) -> float:
        s = _steps(run)
        return s.get("snapshot", 0) + s.get("diff", 0)

    runs_a = [m[APPEND] for m in rounds]
    runs_d = [m[DIFF] for m in rounds]
    read_a = max(_rows_read(r) for r in runs_a)
    work_a, work_d = median([work(r) for r in runs_a]), median([work(r) for r in runs_d])
    all_a = median([sum(_steps(r).values()) for r in runs_a])
    all_d = median([sum(_steps(r).values()) for r in runs_d])
    wall_a = median([r.wall_seconds for r in runs_a])
    wall_d = median([r.wall_seconds for r in runs_d])
    rss_a = max(r.peak_rss_mb for r in runs_a)
    rss_d = max(r.peak_rss_mb for r in runs_d)
    engine_a = median([e[APPEND].result["seconds"] for e in engines])
    engine_d = median([e[DIFF].result["seconds"] for e in engines])
    engine_rss_a = max(e[APPEND].peak_rss_mb for e in engines)
    engine_rss_d = max(e[DIFF].peak_rss_mb for e in engines)
    verdict = [
        f"Medians of {len(rounds)} rounds:",
        "",
        f"- rows read by append: at most {read_a:,} = {read_a / new:.2f}x the {new:,} new rows "
        f"(target <= 2x; the rest is the 1h lookback at one row a second; the band the run "
        f"before left is counted in the warehouse, not read) against "
        f"{max(_rows_read(r) for r in runs_d):,} for diff mode.",
        f"- snapshot + diff, their own work (the state backend's take_snapshot and run_diff in "
        f"a process of their own, on a copy of the state, without Dagster): {engine_a:.2f}s "
        f"against {engine_d:.2f}s: {ratio(engine_d, engine_a)} faster (target >= 20x); peak "
        f"RSS {fmt_mb(engine_rss_a)} MB against {fmt_mb(engine_rss_d)} MB.",
        f"- snapshot + diff steps as Dagster times them (each step's work plus Dagster's "
        f"per-step cost and first imports in a fresh process): {work_a:.2f}s against "
        f"{work_d:.2f}s: {ratio(work_d, work_a)} faster.",
        f"- all three steps (the events step sends the same {new:,} events in both): "
        f"{all_a:.2f}s against {all_d:.2f}s: {ratio(all_d, all_a)}; wall time of the whole "
        f"`dagster job execute` (process start-up and definitions included): {wall_a:.2f}s "
        f"against {wall_d:.2f}s: {ratio(wall_d, wall_a)}.",
        f"- peak RSS: {fmt_mb(rss_a)} MB against {fmt_mb(rss_d)} MB.",
    ]
    intro = (
        f"An events table of {rows:,} DuckDB rows (one a second), then {len(rounds)} rounds of "
        f"{new:,} rows appended after its end; one sync in `mode: append` (`cursor: "
        "created_at`, `lookback: 1h`), one in diff mode (the model read in place), the same "
        "model and events; each run is a `dagster job execute` in a process of its own, "
        "sending to the counting gateway (every round's new events arrived, each messageId "
        "once). Step times are Dagster's (each step's own work plus Dagster's per-step cost: "
        "outputs, metadata, checks)."
    )
    return "\n\n".join([intro, markdown_table(headers, table), "\n".join(verdict)])


if __name__ == "__main__":
    main()
