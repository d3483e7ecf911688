"""Diff engine: our snapshot + diff against a naive pandas diff and the bare DuckDB query (floor).

For each model size N, a set-up process (not timed) writes a warehouse with `users` (N rows),
commits the first snapshot through rudder_sync's real code (a track sync without
send_initial_results: the baseline is recorded, nothing is sent), keeps that table as
`users_base`, and changes `users`: 1 % removed, 1 % changed (a carried column), 1 % added.
Then each variant runs in its own process (peak RSS is per variant):

- ``floor``: the bare DuckDB query: `users` FULL OUTER JOIN `users_base` on the key, comparing a
  hash of the carried columns, fetched as a DataFrame (the least work that finds the same diff).
- ``pandas``: both tables loaded into pandas, ``merge(how="outer", indicator=True)``, carried
  columns compared.
- ``ours``: what the `<sync>/snapshot` and `<sync>/diff` assets run, on a fresh copy of the
  committed state: ``steps.take_snapshot`` and ``steps.run_diff`` (fingerprint, diff and the
  DataFrame the diff asset returns). The DuckDB warehouse is read in place (attached read-only
  into the state's connection), as by default.
- ``ours_copy``: the same with ``read_in_place: false``: the snapshot step copies the model's
  rows into the state through Arrow, as for every other warehouse.

All three must find the same counts of added / changed / removed rows.

    .venv/bin/python -m bench.bench_diff --rows 100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_WORKDIR,
    PROFILES,
    emit,
    fmt_mb,
    fmt_rows,
    fmt_seconds,
    invocation,
    log,
    markdown_table,
    ratio,
    record_section,
    rss_mb,
    run_child,
    wait_for_quiet,
)
from .data import CARRIED, SYNC_NAME, create_users, expected_changes, mutate_users, write_project

MODULE = "bench.bench_diff"
VARIANTS = ("floor", "pandas", "ours", "ours_copy")

FLOOR_SQL = f"""
    select coalesce(n.id, o.id) as id,
           case when o.id is null then 'added' when n.id is null then 'removed'
                else 'changed' end as change_type,
           {", ".join(f"coalesce(n.{c}, o.{c}) as {c}" for c in CARRIED)}
    from users n full outer join users_base o on n.id = o.id
    where o.id is null or n.id is null
       or hash({", ".join(f"n.{c}" for c in CARRIED)})
          <> hash({", ".join(f"o.{c}" for c in CARRIED)})
"""


def data_dir(workdir: Path, rows: int) -> Path:
    return workdir / f"diff_{rows}"


# -- children ----------------------------------------------------------------------------------
def child_setup(root: Path, rows: int) -> dict[str, Any]:
    """Warehouse, baseline state through the real code path, then the 1/1/1 % mutation."""
    import duckdb

    from rudder_sync.config import load_config
    from rudder_sync.diff import DiffMode
    from rudder_sync.state import open_state
    from rudder_sync.steps import run_diff, take_snapshot
    from rudder_sync.warehouses import DuckDBWarehouse

    if root.exists():
        shutil.rmtree(root)
    config_path = write_project(root)
    project = load_config(config_path)
    sync = project.syncs[SYNC_NAME]
    started = time.perf_counter()
    with duckdb.connect(str(project.warehouse.path)) as conn:
        create_users(conn, rows)
    generated = time.perf_counter()
    baseline_dir = root / "baseline_state"
    warehouse = DuckDBWarehouse(database=str(project.warehouse.path))
    with open_state(baseline_dir, SYNC_NAME, dry_run=False) as state:
        take_snapshot(state, sync, warehouse, None, [])
        summary = run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC)).summaries[""]
        committed = state.commit_silent_changes()
        state.conn.execute("checkpoint")
    baseline = time.perf_counter()
    with duckdb.connect(str(project.warehouse.path)) as conn:
        conn.execute("create or replace table users_base as from users")
        expected = mutate_users(conn, rows)
        conn.execute("checkpoint")
    return {
        "generate_seconds": generated - started,
        "baseline_seconds": baseline - generated,
        "baseline_counts": summary.counts,
        "baseline_committed": committed,
        "expected": expected,
        "warehouse_mb": project.warehouse.path.stat().st_size / 1e6,
        "state_mb": (baseline_dir / f"{SYNC_NAME}.duckdb").stat().st_size / 1e6,
    }


def child_floor(root: Path) -> dict[str, Any]:
    import duckdb
    import pandas  # noqa: F401 - imported before the clock starts, as in the other variants

    start_rss = rss_mb()
    started = time.perf_counter()
    conn = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    frame = conn.sql(FLOOR_SQL).df()
    seconds = time.perf_counter() - started
    counts = frame["change_type"].value_counts().to_dict()
    return {
        "seconds": seconds,
        "counts": counts,
        "frame_rows": len(frame),
        "start_rss_mb": start_rss,
    }


def child_pandas(root: Path) -> dict[str, Any]:
    import duckdb
    import pandas as pd

    start_rss = rss_mb()
    started = time.perf_counter()
    conn = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    columns = ", ".join(["id", *CARRIED])
    old = conn.sql(f"select {columns} from users_base").df()
    new = conn.sql(f"select {columns} from users").df()
    loaded = time.perf_counter()
    merged = old.merge(new, on="id", how="outer", suffixes=("_old", "_new"), indicator=True)
    differs = pd.Series(False, index=merged.index)
    for column in CARRIED:
        a, b = merged[f"{column}_old"], merged[f"{column}_new"]
        differs |= ~((a == b) | (a.isna() & b.isna()))
    change = pd.Series(None, index=merged.index, dtype=object)
    change[merged["_merge"] == "right_only"] = "added"
    change[merged["_merge"] == "left_only"] = "removed"
    change[(merged["_merge"] == "both") & differs] = "changed"
    result = merged[change.notna()].assign(change_type=change[change.notna()])
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "load_seconds": loaded - started,
        "counts": result["change_type"].value_counts().to_dict(),
        "frame_rows": len(result),
        "start_rss_mb": start_rss,
    }


def child_ours(root: Path, profile: str | None = None, in_place: bool = True) -> dict[str, Any]:
    from rudder_sync.config import load_config
    from rudder_sync.diff import DiffMode
    from rudder_sync.state import open_state
    from rudder_sync.steps import run_diff, take_snapshot
    from rudder_sync.warehouses import DuckDBWarehouse

    project = load_config(root / "rudder_sync.yaml")
    sync = project.syncs[SYNC_NAME]
    state_dir = root / "run_state"
    if state_dir.exists():
        shutil.rmtree(state_dir)
    shutil.copytree(root / "baseline_state", state_dir)
    warehouse = DuckDBWarehouse(database=str(project.warehouse.path), read_in_place=in_place)
    timings: Counter[str] = Counter()
    context: Any
    if profile:
        import rudder_sync.state as state_module

        from .profiling import TimedConnection, pyinstrument_to

        connect = state_module._connect_with_wait
        state_module._connect_with_wait = lambda *a: TimedConnection(connect(*a), timings)  # type: ignore[assignment]
        context = pyinstrument_to(profile)
    else:
        import contextlib

        context = contextlib.nullcontext()
    start_rss = rss_mb()
    with context:
        started = time.perf_counter()
        with open_state(state_dir, SYNC_NAME, dry_run=False) as state:  # the <sync>/snapshot asset
            taken = take_snapshot(state, sync, warehouse, None, [])
        snapshot = time.perf_counter()
        with open_state(state_dir, SYNC_NAME, dry_run=False) as state:  # the <sync>/diff asset
            result = run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC))
        done = time.perf_counter()
    if taken.read_in_place != in_place:
        raise SystemExit(f"the snapshot read in place: {taken.read_in_place}, not {in_place}")
    if profile:
        PROFILES.mkdir(exist_ok=True)
        total = sum(timings.values())
        lines = [f"DuckDB statements of snapshot + diff, {total:.2f}s in all:"]
        lines += [f"{s:8.3f}s  {100 * s / total:5.1f}%  {sql}" for sql, s in timings.most_common()]
        (PROFILES / f"{profile}.sql.txt").write_text("\n".join(lines) + "\n")
    summary = result.summaries[""]
    return {
        "seconds": done - started,
        "snapshot_seconds": snapshot - started,
        "diff_seconds": done - snapshot,
        "model_rows": summary.model_rows,
        "counts": summary.counts,
        "frame_rows": len(result.frame),
        "start_rss_mb": start_rss,
        "state_mb": (state_dir / f"{SYNC_NAME}.duckdb").stat().st_size / 1e6,
    }


def run_as_child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if args.child == "setup":
        emit(child_setup(root, args.child_rows))
    elif args.child == "floor":
        emit(child_floor(root))
    elif args.child == "pandas":
        emit(child_pandas(root))
    else:
        emit(child_ours(root, args.profile_name, in_place=args.child == "ours"))


# -- parent ------------------------------------------------------------------------------------
def _command(variant: str, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", MODULE, "--child", variant, "--root", str(root), *extra]


def setup(root: Path, rows: int) -> dict[str, Any]:
    log(f"set-up {fmt_rows(rows)} rows in {root} (warehouse, baseline commit, mutation)...")
    run = run_child(_command("setup", root, "--child-rows", str(rows)), timeout=7200)
    if not run.ok:
        raise SystemExit(f"set-up failed ({run.returncode}):\n{run.stderr[-4000:]}")
    r = run.result
    log(
        f"  generated in {r['generate_seconds']:.1f}s, baseline snapshot+diff+commit in "
        f"{r['baseline_seconds']:.1f}s (peak RSS {fmt_mb(run.peak_rss_mb)} MB); warehouse "
        f"{r['warehouse_mb']:,.0f} MB, state {r['state_mb']:,.0f} MB"
    )
    r["baseline_peak_rss_mb"] = run.peak_rss_mb
    return r


def measure(
    root: Path, variant: str, expected: dict[str, int], max_rss_mb: float, quiet: float
) -> dict:
    if quiet:
        wait_for_quiet(timeout=quiet)
    run = run_child(_command(variant, root), timeout=7200, max_rss_mb=max_rss_mb)
    if run.killed_for_memory:
        log(f"  {variant:7s} killed: passed {max_rss_mb:,.0f} MB RSS (or the time limit)")
        return {"variant": variant, "failed": f"killed above {max_rss_mb:,.0f} MB RSS"}
    if not run.ok:
        error = _last_error(run.stderr)
        log(f"  {variant:7s} FAILED after {run.wall_seconds:.1f}s: {error}")
        return {
            "variant": variant,
            "failed": f"failed: {error}",
            "peak_rss_mb": run.peak_rss_mb,
            "wall_seconds": run.wall_seconds,
        }
    result = dict(run.result)
    counts = {k: int(result["counts"].get(k, 0)) for k in expected}
    if counts != expected:
        raise SystemExit(f"{variant} found {counts}, expected {expected}")
    result.update(
        variant=variant,
        peak_rss_mb=run.peak_rss_mb,
        wall_seconds=run.wall_seconds,
        other_cpu=run.other_cpu_share(),
    )
    extra = ""
    if variant.startswith("ours"):
        extra = (
            f" (snapshot {result['snapshot_seconds']:.2f}s, diff and frame "
            f"{result['diff_seconds']:.2f}s)"
        )
    log(
        f"  {variant:7s} {result['seconds']:8.2f}s  peak RSS {fmt_mb(run.peak_rss_mb)} MB "
        f"(at start {fmt_mb(result['start_rss_mb'])}){extra}; other processes "
        f"{result['other_cpu']:.0%} CPU"
    )
    return result


def _last_error(stderr: str) -> str:
    """The exception line of a child's traceback, shortened for a table cell."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:160]
    return (lines[-1] if lines else "no output")[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description="Diff engine benchmark")
    parser.add_argument("--rows", default="100000,1000000,10000000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--repeat", type=int, default=0, help="runs per variant, best kept (0: 3 up to 1M, else 1)"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--reuse", action="store_true", help="reuse an existing set-up")
    parser.add_argument(
        "--max-rss-mb", type=float, default=20_000, help="kill a variant above this RSS"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="also profile ours at this size (pyinstrument, SQL timings, py-spy if available)",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600,
        help="before each variant, wait up to this many seconds for other processes to leave "
        "the machine idle (0: do not wait)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--child", choices=["setup", *VARIANTS], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--child-rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_as_child(args)
        return

    sizes = [int(n) for n in args.rows.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    results: dict[int, dict[str, Any]] = {}
    for rows in sizes:
        root = data_dir(args.workdir, rows)
        ready = (root / "baseline_state" / f"{SYNC_NAME}.duckdb").exists()
        saved = root / "setup.json"
        if args.reuse and ready:
            info = json.loads(saved.read_text()) if saved.exists() else {}
            info["expected"] = expected_changes(rows)
        else:
            info = setup(root, rows)
            saved.write_text(json.dumps(info))
        repeat = args.repeat or (3 if rows <= 1_000_000 else 1)
        log(f"{fmt_rows(rows)} rows: {info['expected']}, best of {repeat}")
        per_variant: dict[str, Any] = {}
        for variant in variants:
            runs = [
                measure(root, variant, info["expected"], args.max_rss_mb, args.quiet_timeout)
                for _ in range(repeat)
            ]
            good = [r for r in runs if "failed" not in r]
            per_variant[variant] = min(good, key=lambda r: r["seconds"]) if good else runs[0]
        results[rows] = {"info": info, "variants": per_variant, "repeat": repeat}
    if args.profile:
        profile_ours(args.workdir, args.profile)

    body = report(results)
    print(body)
    if not args.no_record:
        record_section("bench_diff", "Diff engine", body, invocation())


def profile_ours(workdir: Path, rows: int) -> None:
    from .profiling import record_py_spy

    root = data_dir(workdir, rows)
    if not (root / "baseline_state").exists():
        setup(root, rows)
    name = f"diff_ours_{fmt_rows(rows)}"
    log(f"profiling ours at {fmt_rows(rows)} rows (pyinstrument + DuckDB statement timings)")
    run = run_child(_command("ours", root, "--profile-name", name), timeout=7200)
    if not run.ok:
        raise SystemExit(f"profile run failed:\n{run.stderr[-4000:]}")
    log(f"  statement timings: {PROFILES / (name + '.sql.txt')}")
    log("profiling ours (py-spy, native frames)")
    record_py_spy(
        _command("ours", root),
        name,
        focus=("replace_table", "compute_diff", "pending_frame", "read_model", "open_state"),
    )


def report(results: dict[int, dict[str, Any]]) -> str:
    headers = [
        "rows",
        "changes",
        "floor s",
        "pandas s",
        "ours s",
        "ours / floor",
        "pandas / ours",
        "floor RSS MB",
        "pandas RSS MB",
        "ours RSS MB",
        "ours: snapshot / diff+frame s",
        "ours_copy s (snapshot / diff+frame)",
        "ours_copy RSS MB",
        "other CPU %",
    ]
    table = []
    notes = []
    for rows, entry in results.items():
        v = entry["variants"]
        floor, pandas, ours = v.get("floor", {}), v.get("pandas", {}), v.get("ours", {})
        copy = v.get("ours_copy", {})

        def secs(r: dict) -> str:
            if r.get("failed"):
                return "FAILED (see below)"
            return fmt_seconds(r["seconds"]) if r else "-"

        def rss(r: dict) -> str:
            return fmt_mb(r["peak_rss_mb"]) if r.get("peak_rss_mb") else "-"

        ok = all("seconds" in r for r in (floor, pandas, ours))

        def phases(r: dict) -> str:
            return (
                f"{r['snapshot_seconds']:.2f} / {r['diff_seconds']:.2f}" if "seconds" in r else "-"
            )

        changes = sum(entry["info"]["expected"].values())
        table.append(
            [
                f"{rows:,}",
                f"{changes:,}",
                secs(floor),
                secs(pandas),
                secs(ours),
                ratio(ours["seconds"], floor["seconds"])
                if "seconds" in ours and "seconds" in floor
                else "-",
                ratio(pandas["seconds"], ours["seconds"]) if ok else "-",
                rss(floor),
                rss(pandas),
                rss(ours),
                phases(ours),
                f"{secs(copy)} ({phases(copy)})" if copy else "-",
                rss(copy),
                f"{100 * max(r.get('other_cpu', 0.0) for r in (floor, pandas, ours, copy)):.0f}",
            ]
        )
        for r in (floor, pandas, ours, copy):
            if r.get("failed"):
                after = f" after {r['wall_seconds']:.1f}s" if r.get("wall_seconds") else ""
                peak = f", peak RSS {fmt_mb(r['peak_rss_mb'])} MB" if r.get("peak_rss_mb") else ""
                notes.append(f"- {fmt_rows(rows)} {r['variant']}: {r['failed']}{after}{peak}.")
        info = entry["info"]
        if "baseline_seconds" in info:
            notes.append(
                f"- {fmt_rows(rows)} set-up (not timed as a variant): first run of the sync "
                f"(snapshot + diff + silent commit of {rows:,} rows) "
                f"{info['baseline_seconds']:.1f}s, peak RSS {fmt_mb(info['baseline_peak_rss_mb'])}"
                " MB."
            )
        if "seconds" in ours:
            notes.append(
                f"- {fmt_rows(rows)}: ours started at {fmt_mb(ours['start_rss_mb'])} MB RSS after "
                f"imports (dagster included), floor at {fmt_mb(floor.get('start_rss_mb', 0))} MB; "
                f"state file after the run {ours['state_mb']:,.0f} MB; best of {entry['repeat']}."
            )
    lines = [markdown_table(headers, table), "", *notes, ""]
    lines.append(
        "Seconds: from the first statement to the DataFrame of changes (process start-up and "
        "imports excluded; the warehouse file is in the page cache for every variant). Peak RSS: "
        "the variant's own process (kernel high-water mark, imports included). Every variant found "
        "the same 1 % added / 1 % changed / 1 % removed. Other CPU %: the largest share of the "
        "machine's CPU that other processes used during the kept runs (0 = a quiet machine)."
    )
    lines.append(_targets(results))
    return "\n".join(lines)


def _targets(results: dict[int, dict[str, Any]]) -> str:
    out = ["", "Targets:"]
    for rows, entry in results.items():
        v = entry["variants"]
        ours, floor, pandas = v.get("ours", {}), v.get("floor", {}), v.get("pandas", {})
        if ours.get("failed"):
            out.append(f"- {fmt_rows(rows)}: ours FAILED ({ours['failed']}) -> every target MISSED")
            continue
        if "seconds" not in ours or "seconds" not in floor:
            continue
        within = ours["seconds"] <= 2 * floor["seconds"]
        text = (
            f"- {fmt_rows(rows)}: ours / floor = {ratio(ours['seconds'], floor['seconds'])} "
            f"({'MET' if within else 'MISSED'}: within 2x)"
        )
        if "seconds" in v.get("ours_copy", {}):
            copy = v["ours_copy"]
            text += f"; ours_copy / floor = {ratio(copy['seconds'], floor['seconds'])}"
        if "seconds" in pandas:
            text += f"; pandas / ours = {ratio(pandas['seconds'], ours['seconds'])}"
        elif pandas.get("failed"):
            text += f"; pandas {pandas['failed']}"
        if rows >= 10_000_000:
            under = ours["peak_rss_mb"] <= 1536
            text += (
                f"; peak RSS {fmt_mb(ours['peak_rss_mb'])} MB "
                f"({'MET' if under else 'MISSED'}: <= 1.5 GB)"
            )
        out.append(text)
    return "\n".join(out)


if __name__ == "__main__":
    main()
