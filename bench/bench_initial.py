"""An initial sync (`send_initial_results: true`) of a 200k-row model, end to end, against
rudder-sdk-python sending the same number of Track events with its defaults.

- ``ours``: `dagster job execute` of the sync on a fresh state (process start-up, the model read
  from the DuckDB warehouse, the diff, every row sent as `added`, the state committed).
- ``sdk``: `bench.bench_delivery`'s SDK child: `analytics.track` per event (events of the same
  shape built beforehand), then `flush()`; its seconds exclude process start-up and building the
  events, so the baseline is the SDK's best case.

Both send to the same counting gateway (`bench.gateway`). Target (issue 13): ours at least 20x
faster than the SDK's wall time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bench_end_to_end import WRITE_KEY, execute
from .common import (
    DEFAULT_WORKDIR,
    fmt_mb,
    fmt_rows,
    invocation,
    log,
    markdown_table,
    record_section,
    run_child,
    wait_for_quiet,
)
from .data import fresh_project
from .gateway import RunningGateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--quiet-timeout", type=float, default=600)
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows = args.rows
    root = args.workdir / f"initial_{rows}"
    config = fresh_project(root, rows, send_initial_results=True)
    log(f"initial sync of {fmt_rows(rows)} rows in {root}")
    with RunningGateway(WRITE_KEY) as gateway:
        ours = execute(root, config, gateway.url, "ours", args.timeout, args.quiet_timeout)
        arrived = gateway.stats()["events"]
        if arrived != rows:
            raise SystemExit(f"ours: the gateway counted {arrived} events, expected {rows}")
        gateway.reset()
        if args.quiet_timeout:
            wait_for_quiet(timeout=args.quiet_timeout)
        sdk = run_child(
            [sys.executable, "-m", "bench.bench_delivery", "--child", "sdk"]
            + ["--url", gateway.url, "--events", str(rows)],
            timeout=args.timeout,
        )
        if not sdk.ok or gateway.stats()["events"] != rows:
            raise SystemExit(f"sdk failed:\n{sdk.stderr[-3000:]}")
    sdk_seconds = sdk.result["seconds"]
    log(f"  sdk sending: {sdk_seconds:.2f}s (process wall {sdk.wall_seconds:.2f}s)")
    ratio = sdk_seconds / ours.wall_seconds
    body = "\n".join(
        [
            f"{fmt_rows(rows)} rows, every row sent as `added` (send_initial_results: true).",
            "",
            markdown_table(
                ["variant", "seconds", "events/s", "peak RSS MB", "other CPU %"],
                [
                    [
                        "ours: `dagster job execute`, fresh state (wall, start-up included)",
                        f"{ours.wall_seconds:.2f}",
                        f"{rows / ours.wall_seconds:,.0f}",
                        fmt_mb(ours.peak_rss_mb),
                        f"{100 * ours.other_cpu_share():.0f}",
                    ],
                    [
                        "rudder-sdk-python defaults: track() per event + flush() "
                        "(events built beforehand, start-up excluded)",
                        f"{sdk_seconds:.2f}",
                        f"{rows / sdk_seconds:,.0f}",
                        fmt_mb(sdk.maxrss_mb),
                        f"{100 * sdk.other_cpu_share():.0f}",
                    ],
                ],
            ),
            "",
            f"- SDK time / ours: **{ratio:.1f}x** (target >= 20x: "
            f"{'met' if ratio >= 20 else 'MISSED'}).",
        ]
    )
    print(body)
    if not args.no_record:
        record_section("bench_initial", "Initial sync against the SDK", body, invocation())


if __name__ == "__main__":
    main()
