"""Reading a Postgres model into the sync's state: ours (ADBC -> Arrow -> DuckDB) vs the baselines.

Variants, each in its own process, on the same 1M-row table of a real PostgreSQL server:

- ``ours``: what the snapshot step does: ``PostgresWarehouse.read_model`` streamed into the sync's
  DuckDB state (``SyncState.replace_model_rows``).
- ``psycopg_pandas``: the common hand-written way: psycopg ``fetchall()`` into a pandas DataFrame.
- ``copy_floor``: the floor: ``COPY (model) TO STDOUT (FORMAT binary)`` read and thrown away.

Targets (issue 9): ours at least 3x psycopg+pandas, and within 2x of the COPY floor. The server is
``$RUDDER_SYNC_TEST_PG_URL``, or one this benchmark starts with ``.ci/postgres`` and stops after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common

MODEL = "select id, user_id, email, plan, country, amount, updated_at, is_active from bench_users"
VARIANTS = ("ours", "psycopg_pandas", "copy_floor")
SETUP = """
create table bench_users as
select g as id, 'user-' || g as user_id, 'user' || g || '@example.com' as email,
       (array['free', 'pro', 'team'])[1 + g % 3] as plan, 'DE' as country,
       (g % 100000)::numeric(12, 2) / 100 as amount,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' as updated_at,
       g % 7 <> 0 as is_active
from generate_series(1, {rows}) as g
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best is kept)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-record", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument("--quiet-timeout", type=float, default=600)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        common.emit(CHILDREN[args.child](args.url))
        return
    with postgres_server() as server:
        database = _fresh_database(server, args.rows)
        results = {name: _measure(name, database, args) for name in args.variants.split(",")}
    body = _report(results, args.rows)
    print(body)
    if not args.no_record:
        common.record_section(
            "warehouse", "Reading a Postgres model into the state", body, common.invocation()
        )


class postgres_server:
    """$RUDDER_SYNC_TEST_PG_URL, or a throwaway server started with .ci/postgres."""

    def __enter__(self) -> str:
        self.folder: str | None = None
        url = os.environ.get("RUDDER_SYNC_TEST_PG_URL", "").strip()
        if url:
            return url
        self.folder = tempfile.mkdtemp(prefix="rudder-sync-bench-pg.")
        out = subprocess.run(
            [str(common.REPO / ".ci" / "postgres"), "start", self.folder],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().split("=", 1)[1]

    def __exit__(self, *exc: object) -> None:
        if self.folder:
            subprocess.run(
                [str(common.REPO / ".ci" / "postgres"), "stop", self.folder], check=False
            )


def _fresh_database(server: str, rows: int) -> str:
    import adbc_driver_postgresql.dbapi as adbc

    name = "rudder_sync_bench"
    with adbc.connect(server, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(f"drop database if exists {name} with (force)")
        cursor.execute(f"create database {name}")
    url = server.rsplit("/", 1)[0] + f"/{name}"
    common.log(f"set-up: {rows:,} rows in {name}")
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(SETUP.format(rows=rows))
        cursor.execute("vacuum analyze bench_users")
    return url


def _measure(name: str, url: str, args: argparse.Namespace) -> list[common.ChildRun]:
    runs = []
    for attempt in range(args.repeat):
        if args.quiet_timeout:
            common.wait_for_quiet(timeout=args.quiet_timeout)
        run = common.run_child(
            common.child_command("bench.bench_warehouse", "--child", name, "--url", url)
        )
        if not run.ok:
            sys.exit(f"{name} failed:\n{run.stderr[-3000:]}")
        common.log(f"{name} #{attempt + 1}: {run.result['seconds']:.2f}s")
        runs.append(run)
    return runs


# -- the variants (child side) -------------------------------------------------------------------
def _ours(url: str) -> dict[str, Any]:
    from rudder_sync.state import open_state
    from rudder_sync.warehouses import PostgresWarehouse

    warehouse = PostgresWarehouse(url=url)
    with tempfile.TemporaryDirectory() as folder, open_state(Path(folder), "bench", False) as state:
        started = time.perf_counter()
        with warehouse.read_model(MODEL) as reader:
            rows = state.replace_model_rows(reader)
        seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds}


def _psycopg_pandas(url: str) -> dict[str, Any]:
    import pandas as pd
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(MODEL)
        columns = [c.name for c in cursor.description or []]
        frame = pd.DataFrame(cursor.fetchall(), columns=columns)
    return {"rows": len(frame), "seconds": time.perf_counter() - started}


def _copy_floor(url: str) -> dict[str, Any]:
    import psycopg

    started = time.perf_counter()
    size = 0
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"copy ({MODEL}) to stdout (format binary)") as copy:
            for chunk in copy:
                size += len(chunk)
        rows = conn.execute("select count(*) from bench_users").fetchone()[0]  # type: ignore[index]
    return {"rows": rows, "seconds": time.perf_counter() - started, "bytes": size}


CHILDREN = {"ours": _ours, "psycopg_pandas": _psycopg_pandas, "copy_floor": _copy_floor}


# -- report --------------------------------------------------------------------------------------
def _report(results: dict[str, list[common.ChildRun]], rows: int) -> str:
    best = {name: min(runs, key=lambda r: r.result["seconds"]) for name, runs in results.items()}
    seconds = {name: run.result["seconds"] for name, run in best.items()}
    table = common.markdown_table(
        ["variant", "seconds (best of runs)", "rows/s", "peak RSS MB", "other CPU %"],
        [
            [
                name,
                common.fmt_seconds(seconds[name]),
                f"{run.result['rows'] / seconds[name]:,.0f}",
                common.fmt_mb(run.peak_rss_mb),
                f"{100 * run.other_cpu_share():.0f}",
            ]
            for name, run in best.items()
        ],
    )
    lines = [
        f"{common.fmt_rows(rows)} rows, columns: int, 4 text, numeric(12,2), timestamptz, "
        "bool. Seconds are inside the child: reading the model to its destination "
        "(for ours: into the sync's DuckDB state, committed).",
        "",
        table,
        "",
    ]
    if "ours" in seconds and "psycopg_pandas" in seconds:
        lines.append(
            f"- ours vs psycopg `fetchall` + pandas: "
            f"**{common.ratio(seconds['psycopg_pandas'], seconds['ours'])} faster** (target >= 3x)"
        )
    if "ours" in seconds and "copy_floor" in seconds:
        lines.append(
            f"- ours vs the bare `COPY ... (FORMAT binary)` floor: "
            f"**{common.ratio(seconds['ours'], seconds['copy_floor'])} the floor** "
            "(target within 2x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
