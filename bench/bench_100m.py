"""A large model in local mode (issue 25 item 5): time, peak RSS and disk of the first run (which
adopts the model as the baseline and sends nothing: `send_initial_results: false`, the default)
and of a run after 0.1 % of the rows changed (N / 1000 `changed` events to the counting gateway).

Each size gets a new project: the warehouse (`bench.data`'s users, a DuckDB file, read in place),
then `dagster job execute` twice. Disk is what the state folder, the stored frames and the
warehouse take after each run, and the free space of the file system they are on. A run is
killed past ``--max-rss-mb`` (the machine has 23.5 GiB), and the table says so.

    .venv/bin/python -m bench.bench_100m --rows 10000000,30000000

100M rows fit this machine in local mode since a first run stages its baseline (see RESULTS.md,
"A large model in local mode"): about 21 min for the first run on a loaded machine, so the sizes
measured are given with ``--rows``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb

from .bench_end_to_end import DAGSTER, RUN_RE, WRITE_KEY, _env, _steps
from .common import (
    DEFAULT_WORKDIR,
    ChildRun,
    fmt_mb,
    fmt_rows,
    invocation,
    log,
    markdown_table,
    record_section,
    run_child,
    wait_for_quiet,
)
from .data import SYNC_NAME, fresh_project
from .gateway import RunningGateway

CHANGED_EVERY = 1000  # rows with id % 1000 = 7 change: 0.1 %


def tree_mb(path: Path) -> float:
    """Bytes the files under ``path`` take on disk (allocated blocks), in MB."""
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files) / 1e6


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def run_job(root: Path, config: Path, url: str, label: str, args: Any) -> dict[str, Any]:
    """One `dagster job execute` of the sync: its figures, and the disk after it."""
    if args.quiet_timeout:
        wait_for_quiet(timeout=args.quiet_timeout)
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
    run: ChildRun = run_child(
        command, env=_env(config, url), cwd=root, timeout=args.timeout, max_rss_mb=args.max_rss_mb
    )
    output = run.stdout + run.stderr
    ok = run.returncode == 0 and bool(RUN_RE.search(output)) and not run.killed_for_memory
    figures = {
        "label": label,
        "ok": ok,
        "killed": run.killed_for_memory,
        "wall": run.wall_seconds,
        "cpu": run.cpu_seconds,
        "rss": run.peak_rss_mb,
        "other": run.other_cpu_share(),
        "steps": _steps(run),
        "state_mb": tree_mb(root / "state" / f"{SYNC_NAME}.duckdb"),
        "outputs_mb": tree_mb(root / "state" / "outputs"),
        "free_gb": free_gb(root),
    }
    if not ok:
        (root / f"{label}.log").write_text(output)
        figures["error"] = output[-2000:]
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in figures["steps"].items())
    log(
        f"  {label}: {'ok' if ok else 'FAILED'} {run.wall_seconds:.1f}s wall ({steps}), CPU "
        f"{run.cpu_seconds:.1f}s, peak RSS {fmt_mb(run.peak_rss_mb)} MB, state "
        f"{figures['state_mb']:,.0f} MB, frames {figures['outputs_mb']:,.0f} MB, "
        f"free {figures['free_gb']:.1f} GB, other processes {run.other_cpu_share():.0%} CPU"
    )
    return figures


def measure(rows: int, args: Any, gateway: RunningGateway) -> dict[str, Any]:
    root = args.workdir / f"large_{rows}"
    started = time.perf_counter()
    config = fresh_project(root, rows)
    made = time.perf_counter() - started
    warehouse_mb = tree_mb(root / "warehouse.duckdb")
    log(f"{fmt_rows(rows)} rows: warehouse {warehouse_mb:,.0f} MB in {made:.0f}s ({root})")
    gateway.reset()
    first = run_job(root, config, gateway.url, "first run (baseline, nothing sent)", args)
    result: dict[str, Any] = {"rows": rows, "warehouse_mb": warehouse_mb, "first": first}
    if not first["ok"]:
        return result
    if gateway.stats()["events"]:
        raise SystemExit("the first run sent events; it must adopt the baseline")
    with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
        conn.execute(
            "update users set plan = case when plan = 'free' then 'pro' else 'free' end "
            f"where id % {CHANGED_EVERY} = 7"
        )
    expected = sum(1 for _ in range(7, rows, CHANGED_EVERY))
    gateway.reset()
    second = run_job(root, config, gateway.url, "0.1 % changed", args)
    events = gateway.stats()["events"]
    if second["ok"] and events != expected:
        raise SystemExit(f"the gateway counted {events} events, expected {expected}")
    second["events"] = events
    result["second"] = second
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="10000000,30000000", help="comma-separated sizes")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--max-rss-mb", type=float, default=20_000)
    parser.add_argument("--quiet-timeout", type=float, default=120)
    parser.add_argument("--keep", action="store_true", help="keep each size's project")
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(size) for size in args.rows.split(",")]
    results = []
    with RunningGateway(WRITE_KEY) as gateway:
        for rows in sizes:
            results.append(measure(rows, args, gateway))
    body = report(results)
    print(body)
    if not args.no_record:
        record_section("bench_100m", "A large model in local mode (measured)", body, invocation())


def report(results: list[dict[str, Any]]) -> str:
    table = []
    for result in results:
        for key in ("first", "second"):
            run = result.get(key)
            if run is None:
                continue
            steps = run["steps"]
            table.append(
                [
                    fmt_rows(result["rows"]),
                    run["label"],
                    "ok" if run["ok"] else ("killed (RSS)" if run["killed"] else "failed"),
                    f"{run['wall']:.1f}",
                    " / ".join(f"{steps.get(k, 0):.1f}" for k in ("snapshot", "diff", "events")),
                    f"{run['cpu']:.1f}",
                    fmt_mb(run["rss"]),
                    f"{result['warehouse_mb']:,.0f}",
                    f"{run['state_mb']:,.0f}",
                    f"{run['outputs_mb']:,.0f}",
                    f"{run['free_gb']:.1f}",
                    f"{100 * run['other']:.0f}",
                ]
            )
    return markdown_table(
        [
            "rows",
            "run",
            "result",
            "wall s",
            "snapshot / diff / events s",
            "CPU s",
            "peak RSS MB",
            "warehouse MB",
            "state MB",
            "stored frames MB",
            "free GB after",
            "other CPU %",
        ],
        table,
    )


if __name__ == "__main__":
    main()
