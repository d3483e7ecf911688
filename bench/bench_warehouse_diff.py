"""Diff in the warehouse (`state_schema`) vs local mode: a 1 % change of an N-row PostgreSQL model.

Both modes run in one invocation on the same data: a `users` table of N rows generated in the
server (`generate_series`), a track sync without send_initial_results, delivering to the local
gateway (`bench.gateway`). For each mode:

1. the table is created afresh (and, in-warehouse, the state schema dropped); a first run
   commits the baseline and sends nothing (timed, for reference);
2. 1 % of the rows are removed, 1 % changed (a carried column) and 1 % added, in the server;
3. the measured run: the sync's job (snapshot, diff, events) in its own process, as
   `dagster job execute` runs it (the job from `rudder_sync.definitions`, in-process executor,
   ephemeral instance). Both modes must send the same 3 % of events.

Measured per run: wall time of the job and of each step (Dagster's STEP_SUCCESS durations), the
process's peak RSS (`ru_maxrss`), the rows read out of the warehouse (local mode: every model
row; in-warehouse: the diff's `rows_transferred` metadata), the bytes read out and written in
(Arrow bytes, counted in the child: see ``count_transfers``) and the server's CPU time (the
work in-warehouse mode moves there). Target: in-warehouse reads out at most 2 % of local mode's
rows and its run is faster.

    .venv/bin/python -m bench.bench_warehouse_diff --rows 10000000
    .venv/bin/python -m bench.bench_warehouse_diff --rows 10000000 --link 100:10

The server is ``$RUDDER_SYNC_TEST_PG_URL``, or one started with ``.ci/postgres`` and stopped after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import common
from .bench_warehouse import postgres_server
from .gateway import RunningGateway
from .link import LinkSpec, ThrottledLink
from .pg import ServerCpu, fresh_database, sql, through

SYNC_NAME = "bench_users"
SCHEMA = "rudder_sync"
DATABASE = "rudder_sync_bench_diff"
URL_ENV_VAR = "RUDDER_SYNC_BENCH_PG_URL"
WRITE_KEY = "bench-write-key"
MODES = ("local", "in_warehouse")
EVENTS = {
    "added": "User Signed Up",
    "changed": "User Changed Plan",
    "removed": "User Deleted Account",
}
SYNC: dict[str, Any] = {
    "model": "select id, user_id, email, plan, country, score, updated_at from users",
    "primary_key": "id",
    "type": "track",
    "user_id": "user_id",
    "mapping": {"email": "email", "plan": "plan", "country": "country", "score": "score"},
    "events": EVENTS,
    "send_initial_results": False,
    # a benchmark changes more rows than the guard's defaults let through, on purpose
    "guard": {"max_removed_fraction": None, "max_changed_fraction": None, "max_events": None},
}
USERS_DDL = """
create table users (
    id bigint primary key, user_id text not null, email text, plan text, country text,
    score double precision, updated_at timestamptz
) with (autovacuum_enabled = off)
"""
# Rows id in [start, stop]: deterministic, so that both modes see the same data.
USERS_ROWS = """
insert into users
select g, 'usr_' || lpad(g::text, 9, '0'), 'user' || g || '@example.com',
       (array['free', 'starter', 'pro', 'team', 'enterprise'])[1 + (g * 7) % 5],
       (array['DE', 'FR', 'US', 'GB', 'NL', 'ES', 'IT', 'SE', 'PL', 'BR', 'JP'])[1 + (g * 13) % 11],
       ((g * 37) % 100000) / 100.0,
       timestamptz '2024-06-01 00:00:00+00' + (g % 86400) * interval '1 second'
from generate_series({start}, {stop}) as g
"""
MUTATION = (
    "delete from users where id % 100 = 1",
    "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
    "updated_at = updated_at + interval '1 day' where id % 100 = 2",
)


# -- data and project --------------------------------------------------------------------------
def create_users(url: str, rows: int) -> None:
    """The table afresh (autovacuum off: we vacuum it ourselves, so it never runs mid-run)."""
    sql(
        url,
        "drop table if exists users",
        USERS_DDL,
        USERS_ROWS.format(start=1, stop=rows),
        "vacuum analyze users",
    )


def mutate_users(url: str, rows: int) -> None:
    """1 % removed (id % 100 = 1), 1 % changed (id % 100 = 2: plan), 1 % added (new ids)."""
    added = USERS_ROWS.format(start=rows + 1, stop=rows + rows // 100)
    sql(url, *MUTATION, added, "vacuum analyze")


def expected_events(rows: int) -> dict[str, int]:
    """Event name -> count the measured run must send."""
    counts = {
        "removed": len(range(1, rows + 1, 100)),
        "changed": len(range(2, rows + 1, 100)),
        "added": rows // 100,
    }
    return {EVENTS[change]: count for change, count in counts.items()}


def write_project(root: Path, mode: str) -> Path:
    """A fresh project folder: the sync YAML (in-warehouse: with state_schema), state/ beside."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    warehouse: dict[str, Any] = {"type": "postgres", "url": {"env": URL_ENV_VAR}}
    if mode == "in_warehouse":
        warehouse["state_schema"] = SCHEMA
    document = {"warehouse": warehouse, "state": "state", "syncs": {SYNC_NAME: SYNC}}
    path = root / "rudder_sync.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- the runs (parent side) --------------------------------------------------------------------
@dataclass
class Run:
    """One job run in its own process, with what the server and the gateway spent meanwhile."""

    child: common.ChildRun
    server_cpu: float | None
    gateway_cpu: float
    events: dict[str, int]

    @property
    def result(self) -> dict[str, Any]:
        return self.child.result

    def other_cpu_share(self) -> float:
        return self.child.other_cpu_share(also_ours=(self.server_cpu or 0.0) + self.gateway_cpu)


def execute(
    config: Path,
    url: str,
    gateway: RunningGateway,
    server: ServerCpu,
    label: str,
    args: argparse.Namespace,
) -> Run:
    """Run the sync's job in a child process and check that it succeeded."""
    if args.quiet_timeout:
        common.wait_for_quiet(timeout=args.quiet_timeout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_HOME"))}
    env.update(
        RUDDER_SYNC_CONFIG=str(config),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        **{URL_ENV_VAR: url},
    )
    gateway.reset()
    server_before, gateway_before = server.seconds(), gateway.cpu_seconds()
    child = common.run_child(
        common.child_command("bench.bench_warehouse_diff", "--child", str(config)),
        env=env,
        timeout=args.timeout,
    )
    time.sleep(0.5)  # let the postmaster reap the run's backends (their CPU then counts)
    server_after = server.seconds()
    server_cpu = (
        server_after - server_before
        if server_after is not None and server_before is not None
        else None
    )
    if not child.ok or not child.result:
        sys.exit(f"{label}: the job failed ({child.returncode}):\n{child.stderr[-5000:]}")
    stats = gateway.stats()
    run = Run(child, server_cpu, gateway.cpu_seconds() - gateway_before, stats["event_names"])
    steps = child.result["steps"]
    common.log(
        f"  {label:24s} job {child.result['seconds']:7.2f}s (process {child.wall_seconds:.2f}s), "
        + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items())
        + f"; ru_maxrss {common.fmt_mb(child.maxrss_mb)} MB; {stats['events']:,} events; "
        f"model rows out {child.result['model_rows_out']:,}; "
        f"other processes {run.other_cpu_share():.0%} CPU"
    )
    return run


def run_mode(
    mode: str,
    url: str,
    run_url: str,
    rows: int,
    gateway: RunningGateway,
    server: ServerCpu,
    args: argparse.Namespace,
) -> tuple[Run, Run]:
    """First run (baseline), the 1 % / 1 % / 1 % change, then the measured run. The set-up uses
    ``url``; the runs ``run_url`` (through the link, if any)."""
    common.log(f"{mode}: {rows:,} rows")
    create_users(url, rows)
    sql(url, f"drop schema if exists {SCHEMA} cascade")
    config = write_project(args.workdir / f"warehouse_diff_{rows}" / mode, mode)
    first = execute(config, run_url, gateway, server, "1. first run", args)
    if first.events:
        sys.exit(f"{mode}: the first run must send nothing, it sent {first.events}")
    mutate_users(url, rows)
    measured = execute(config, run_url, gateway, server, "2. 3 % changed", args)
    if measured.events != expected_events(rows):
        sys.exit(f"{mode}: sent {measured.events}, expected {expected_events(rows)}")
    return first, measured


# -- the job (child side) ----------------------------------------------------------------------
def count_transfers() -> dict[str, int]:
    """Count what rudder_sync reads out of PostgreSQL and writes into it, as Arrow rows and
    bytes (`RecordBatch.nbytes`), by wrapping the functions every bulk transfer goes through:
    `PostgresWarehouse._batches` (model reads: local mode's whole model, in-warehouse mode's
    changed rows), `WarehouseStore.arrow` (state reads: snapshot rows of the changed and removed
    keys, pending changes, rejected rows) and `WarehouseStore.ingest` (uploads: the diff's
    pending changes and keys). Small scalar queries (counts, meta) are not counted."""
    from rudder_sync.warehouse_state.store import WarehouseStore
    from rudder_sync.warehouses.postgres import PostgresWarehouse

    counts = dict.fromkeys(
        ("model_rows_out", "model_bytes_out", "state_rows_out", "state_bytes_out", "bytes_in"), 0
    )
    batches, arrow, ingest = PostgresWarehouse._batches, WarehouseStore.arrow, WarehouseStore.ingest

    def counted_batches(self: Any, *args: Any) -> Iterator[Any]:
        for batch in batches(self, *args):
            counts["model_rows_out"] += batch.num_rows
            counts["model_bytes_out"] += batch.nbytes
            yield batch

    def counted_arrow(self: Any, *args: Any) -> Any:
        table = arrow(self, *args)
        counts["state_rows_out"] += table.num_rows
        counts["state_bytes_out"] += table.nbytes
        return table

    def counted_ingest(self: Any, name: str, table: Any) -> str:
        counts["bytes_in"] += table.nbytes
        return ingest(self, name, table)

    PostgresWarehouse._batches = counted_batches  # type: ignore[method-assign]
    WarehouseStore.arrow = counted_arrow  # type: ignore[method-assign]
    WarehouseStore.ingest = counted_ingest  # type: ignore[method-assign]
    return counts


def run_job() -> dict[str, Any]:
    """The sync's job from the definitions `dagster job execute` loads, run in this process."""
    from dagster import DagsterInstance

    from rudder_sync.definitions import build_definitions, load_project

    counts = count_transfers()
    job = build_definitions(load_project()).resolve_job_def(SYNC_NAME)
    started = time.perf_counter()
    result = job.execute_in_process(instance=DagsterInstance.ephemeral())
    seconds = time.perf_counter() - started
    steps = {
        event.step_key.rsplit("__", 1)[-1]: event.event_specific_data.duration_ms / 1000
        for event in result.all_events
        if event.event_type_value == "STEP_SUCCESS" and event.step_key
    }
    diff = result.asset_materializations_for_node(f"{SYNC_NAME}__diff")[-1].metadata
    keys = ("model_rows", "rows_transferred", "state_rows_transferred", "added", "changed")
    metadata = {k: diff[k].value for k in (*keys, "removed") if k in diff}
    return {"seconds": seconds, "steps": steps, "diff": metadata, **counts}


# -- report ------------------------------------------------------------------------------------
def rows_out(run: Run) -> int:
    """Model rows read out of the warehouse: the diff's `rows_transferred` where it says so
    (in-warehouse), else the rows the snapshot read (local mode: the whole model)."""
    return int(run.result["diff"].get("rows_transferred", run.result["model_rows_out"]))


def report(
    rows: int,
    results: dict[str, tuple[Run, Run]],
    server_cpu_known: bool,
    link: LinkSpec | None = None,
) -> str:
    mb = 1e6
    table = []
    for mode, runs in results.items():
        for label, run in zip(("first run", "measured: 3 % changed"), runs, strict=True):
            r, steps = run.result, run.result["steps"]
            table.append(
                [
                    f"{mode}, {label}",
                    common.fmt_seconds(r["seconds"]),
                    " / ".join(f"{steps.get(k, 0):.2f}" for k in ("snapshot", "diff", "events")),
                    common.fmt_seconds(run.child.wall_seconds),
                    common.fmt_mb(run.child.maxrss_mb),
                    f"{rows_out(run):,}",
                    f"{r['state_rows_out']:,}",
                    f"{(r['model_bytes_out'] + r['state_bytes_out']) / mb:,.1f}",
                    f"{r['bytes_in'] / mb:,.1f}",
                    f"{run.server_cpu:.1f}" if run.server_cpu is not None else "-",
                    f"{sum(run.events.values()):,}",
                    f"{100 * run.other_cpu_share():.0f}",
                ]
            )
    headers = [
        "mode, run",
        "job s",
        "snapshot / diff / events s",
        "process s",
        "peak RSS MB",
        "model rows out",
        "state rows out",
        "MB out",
        "MB in",
        "server CPU s",
        "events",
        "other CPU %",
    ]
    local, remote = results["local"][1], results["in_warehouse"][1]
    share = rows_out(remote) / rows_out(local) if rows_out(local) else 0.0
    local_s, remote_s = local.result["seconds"], remote.result["seconds"]

    def diff_work(run: Run) -> float:
        return run.result["steps"].get("snapshot", 0) + run.result["steps"].get("diff", 0)

    def out_mb(run: Run) -> float:
        return (run.result["model_bytes_out"] + run.result["state_bytes_out"]) / mb

    verdict_rows = "MET" if share <= 0.02 else "MISSED"
    verdict_time = "MET" if remote_s < local_s else "MISSED"
    lines = [
        f"{common.fmt_rows(rows)} rows `users(id bigint primary key, user_id, email, plan, "
        "country text, score double precision, updated_at timestamptz)`; a track sync "
        "(send_initial_results false) delivering to the local gateway; measured run after 1 % "
        f"removed, 1 % changed, 1 % added: {sum(local.events.values()):,} events in both modes. "
        + (
            f"rudder_sync reaches PostgreSQL through a link of {link} (`bench/link.py`)."
            if link
            else "PostgreSQL on this machine (loopback)."
        ),
        "",
        common.markdown_table(headers, table),
        "",
        f"- Rows read out: in-warehouse {rows_out(remote):,} = **{100 * share:.2f} %** of local "
        f"mode's {rows_out(local):,} (target <= 2 %: {verdict_rows}); plus "
        f"{remote.result['state_rows_out']:,} state rows (snapshot rows of the changed and "
        "removed keys, pending changes, read by each step).",
        f"- Bytes read out: {out_mb(remote):,.1f} MB vs {out_mb(local):,.1f} MB "
        f"({ratio_text(out_mb(local), out_mb(remote))} less).",
        f"- Measured run: in-warehouse {local_s / remote_s if remote_s else 0:.2f}x as fast "
        f"({remote_s:.2f}s vs {local_s:.2f}s; target faster: {verdict_time}); snapshot + diff "
        f"{diff_work(remote):.2f}s vs {diff_work(local):.2f}s; peak RSS "
        f"{common.fmt_mb(remote.child.maxrss_mb)} vs {common.fmt_mb(local.child.maxrss_mb)} MB.",
        "",
        "Job s: `execute_in_process` of the sync's job from `rudder_sync.definitions` (what "
        "`dagster job execute -m rudder_sync.definitions -j bench_users` runs: in-process "
        "executor, ephemeral instance) in a child process; step seconds are Dagster's "
        "STEP_SUCCESS durations; process s adds Python start-up, imports and loading the "
        "definitions. Peak RSS: the child's `ru_maxrss`. Model rows out: local mode, every "
        "row the snapshot read; in-warehouse, the diff's `rows_transferred` metadata. MB out / "
        "in: Arrow bytes (`RecordBatch.nbytes`) of every result read from PostgreSQL "
        "(`PostgresWarehouse.read_model`, `WarehouseStore.arrow`) and of every table written "
        "to it (`WarehouseStore.ingest`), counted in the child by wrapping those functions; "
        "small scalar queries are not counted.",
    ]
    if server_cpu_known:
        lines[-1] += (
            " Server CPU s: CPU time of all the PostgreSQL server's processes during the run "
            "(the work in-warehouse mode moves there); other CPU % excludes it and the gateway."
        )
    return "\n".join(lines)


def ratio_text(larger: float, smaller: float) -> str:
    return common.ratio(larger, smaller) if smaller else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600,
        help="before each run, wait up to this many seconds for other processes to leave the "
        "machine idle (0: do not wait)",
    )
    parser.add_argument(
        "--link",
        type=LinkSpec.parse,
        help="MBIT:RTT_MS, e.g. 100:10: the runs reach PostgreSQL through a link of that "
        "bandwidth and round-trip time (bench/link.py); default: the loopback",
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        common.emit(run_job())
        return
    if args.rows < 100:
        parser.error("--rows: at least 100 (1 % of the rows must be at least one row)")

    with contextlib.ExitStack() as stack:
        server_url = stack.enter_context(postgres_server())
        gateway = stack.enter_context(RunningGateway(WRITE_KEY))
        url = fresh_database(server_url, DATABASE)
        run_url = url
        if args.link:
            host, port = through(url)
            link = stack.enter_context(ThrottledLink(host, port, args.link))
            run_url = through(url, link.port)
            common.log(f"runs reach PostgreSQL through a link of {args.link}")
        server = ServerCpu(url)
        results = {
            mode: run_mode(mode, url, run_url, args.rows, gateway, server, args) for mode in MODES
        }
        sql(server_url, f"drop database if exists {DATABASE} with (force)")
    body = report(args.rows, results, server.postmaster is not None, args.link)
    print(body)
    if not args.no_record:
        common.record_section(
            "bench_warehouse_diff"
            + (f"_link_{args.link.mbit:g}_{args.link.rtt_ms:g}" if args.link else ""),
            "Diff in the warehouse vs local mode, "
            + (f"through a link of {args.link}" if args.link else "loopback"),
            body,
            common.invocation(),
        )


if __name__ == "__main__":
    main()
