"""State size: a year of daily runs, with the delivery log pruned (`delivery_log_retention`) or not.

A year is not waited for: each simulated day runs the state's own code on a real state file — the
diff's `replace_pending` (``--changes`` changed rows of a ``--model-rows`` model), delivery's
`commit_changes` in groups of `delivery.COMMIT_EVERY_EVENTS` (moving the snapshot and writing one
delivery log row per event), then `prune_delivery_log` with that day as ``now`` — and only the
clock is moved: the day's log rows get the day's time (one UPDATE of that run's rows), since the
commit stamps them with the real `now()`. Variants: ``30d`` (the default) and ``none`` (null: kept
forever). Reported: the file's size (after a checkpoint) on some days, the log's rows, and the
prune's time per run (median and max).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rudder_sync.delivery import COMMIT_EVERY_EVENTS
from rudder_sync.state import open_state, run

from . import common

START = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
VARIANTS = {"30d": timedelta(days=30), "none": None}


def _changes_sql(day: int, changes: int, model_rows: int, send: bool) -> str:
    """One day's diff output: ``changes`` keys (consecutive, wrapping over the model) changed."""
    first = day * changes
    return f"""
        select 'k' || ((i + {first}) % {model_rows}) as __rs_pk,
               '{"changed" if send else "added"}' as __rs_change,
               hash(i, {day})::ubigint as __rs_hash, {day + 1}::bigint as __rs_version,
               {str(send).lower()} as __rs_send,
               md5(i::varchar || '/' || {day})::uuid::varchar as __rs_message_id,
               '{(START + timedelta(days=day)).isoformat()}' as __rs_timestamp,
               'u' || ((i + {first}) % {model_rows}) as __rs_user_id,
               null::varchar as __rs_anonymous_id, null::varchar as __rs_props,
               null::varchar as __rs_origin
        from range({model_rows if not send else changes}) t(i)
    """


def simulate(
    folder: Path, retention: timedelta | None, days: int, changes: int, model_rows: int
) -> dict:
    """A state through ``days`` daily runs; sizes on the sampled days and the prune's times."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("sim.*"):
        old.unlink()
    path = folder / "sim.duckdb"
    prunes: list[float] = []
    sizes: dict[int, float] = {}
    samples = {1, 30, 60, 90, 180, 270, days} & set(range(1, days + 1))
    with open_state(folder, "sim", dry_run=False) as state:
        with state.transaction():  # the baseline: the model's rows, committed without events
            state.replace_pending(None, _changes_sql(0, 0, model_rows, send=False), START)
        state.commit_silent_changes()
        for day in range(1, days + 1):
            now = START + timedelta(days=day)
            with state.transaction():
                state.replace_pending(None, _changes_sql(day, changes, model_rows, True), now)
            run_id = uuid.uuid4().hex
            for first in range(1, changes + 1, COMMIT_EVERY_EVENTS):
                last = min(first + COMMIT_EVERY_EVENTS, changes + 1)
                state.commit_changes(range(first, last), run_id, "delivered")
            run(
                state.conn,
                "update delivery_log set logged_at = ? where run_id = ?",
                [now, run_id],
            )
            began = time.perf_counter()
            state.prune_delivery_log(retention, now=now)
            prunes.append(time.perf_counter() - began)
            if day in samples:
                run(state.conn, "checkpoint")
                sizes[day] = path.stat().st_size / 1e6
                common.log(f"  day {day}: {sizes[day]:.1f} MB")
        log_rows = state.count("delivery_log")
        snapshot_rows = state.count("snapshot")
    return {
        "sizes": sizes,
        "final_mb": path.stat().st_size / 1e6,
        "log_rows": log_rows,
        "snapshot_rows": snapshot_rows,
        "prune_median_ms": statistics.median(prunes) * 1000,
        "prune_max_ms": max(prunes) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--changes", type=int, default=100_000, help="changed rows per day")
    parser.add_argument("--model-rows", type=int, default=1_000_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "state_size")
    parser.add_argument("--no-record", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    results = {}
    for name in args.variants.split(","):
        common.log(f"{name}: {args.days} days of {args.changes} changes ({args.model_rows} rows)")
        began = time.perf_counter()
        results[name] = simulate(
            args.workdir / name, VARIANTS[name], args.days, args.changes, args.model_rows
        )
        results[name]["wall_s"] = time.perf_counter() - began
    days = sorted({d for r in results.values() for d in r["sizes"]})
    rows = [
        [
            name,
            *(f"{r['sizes'][d]:.1f}" for d in days),
            f"{r['log_rows']:,}",
            f"{r['snapshot_rows']:,}",
            f"{r['prune_median_ms']:.1f} / {r['prune_max_ms']:.1f}",
            common.fmt_seconds(r["wall_s"]),
        ]
        for name, r in results.items()
    ]
    headers = [
        "retention",
        *(f"MB day {d}" for d in days),
        "log rows",
        "snapshot rows",
        "prune ms (median / max)",
        "simulation s",
    ]
    table = common.markdown_table(headers, rows)
    print(table)
    if not args.no_record:
        body = (
            f"{args.days} simulated daily runs of {args.changes:,} changes each on a "
            f"{args.model_rows:,}-row model, through the state's own diff, commit and prune "
            f"code (only the clock is simulated).\n\n{table}\n"
        )
        common.record_section("state_size", "State size over a year", body, common.invocation())


if __name__ == "__main__":
    main()
