"""Diff in the warehouse (`state_schema`) vs local mode: a 1 % change of an N-row model, per engine.

Engines (`--engine`, default postgres; `all` runs the five, one after another):

* `postgres`: PostgreSQL (``$RUDDER_SYNC_TEST_PG_URL``, or one started with ``.ci/postgres``);
* `snowflake`: fakesnow's server (Snowflake's REST protocol on DuckDB), reached by the real
  snowflake-connector-python through the YAML keys `host`, `port`, `protocol`. Its data lives in
  the server, so the server runs in this (parent) process and the runs' child processes reach it;
* `redshift`: the real redshift_connector through the tests' start-up proxy
  (`rudder_sync_tests.engines.redshift.StartupProxy`, in this process) onto the PostgreSQL above;
* `bigquery`: bqemulator in its own virtualenv and process, started as the tests start it
  (`rudder_sync_tests.engines.bigquery.running_emulator`), reached by the real
  google-cloud-bigquery clients of the runs' child processes through the YAML keys
  `api_endpoint` and `storage_api_endpoint` (`credentials: anonymous`); a project per mode;
* `databricks`: Spark 3.5 with an Iceberg catalog in this process's JVM, started as the tests
  start it (`rudder_sync_tests.engines.databricks.spark_session`), reached through the tests'
  stand-in for databricks-sql-connector (`SparkConnection`, put in `databricks.sql.connect`).
  That connection exists only in the process that owns the Spark session, so on this engine
  **the job runs in the bench's own process**, not in a child: no Python start-up or Dagster
  import per run, and the peak RSS is this process's, sampled during the run (it holds the
  Spark client and what earlier runs left; the JVM's memory is apart, its CPU is the server's).

Both modes run in one invocation on the same data: a `users` table of N rows generated in the
engine (`generate_series`; on Snowflake `table(generator(...))`, on BigQuery
`unnest(generate_array(...))`, on Databricks `range(...)`), a track sync without
send_initial_results, delivering to the local gateway (`bench.gateway`). For each mode:

1. the table is created afresh (and, in-warehouse, the state schema dropped; on BigQuery a new
   project, on Databricks a new schema and state schema); a first run
   commits the baseline and sends nothing (timed, for reference);
2. 1 % of the rows are removed, 1 % changed (a carried column) and 1 % added, in the server;
3. the measured run: the sync's job (snapshot, diff, events) in its own process (on
   Databricks in this one), as
   `dagster job execute` runs it (the job from `rudder_sync.definitions`, in-process executor,
   ephemeral instance). Both modes must send the same 3 % of events.

Measured per run: wall time of the job and of each step (Dagster's STEP_SUCCESS durations), the
process's peak RSS (`ru_maxrss`), the rows read out of the warehouse (local mode: every model
row; in-warehouse: the diff's `rows_transferred` metadata), the bytes read out and written in
(Arrow bytes, counted where the job runs: see ``count_transfers``) and the server's CPU time (the
work in-warehouse mode moves there). Target: in-warehouse reads out at most 2 % of local mode's
rows and its run is faster.

    .venv/bin/python -m bench.bench_warehouse_diff --rows 10000000
    .venv/bin/python -m bench.bench_warehouse_diff --rows 10000000 --link 100:10
    .venv/bin/python -m bench.bench_warehouse_diff --rows 1000000 --engine all
    .venv/bin/python -m bench.bench_warehouse_diff --rows 1000000 --engine bigquery
    .venv/bin/python -m bench.bench_warehouse_diff --rows 1000000 --engine databricks

The PostgreSQL server (postgres, redshift) is ``$RUDDER_SYNC_TEST_PG_URL``, or one started with
``.ci/postgres`` and stopped after.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from . import common
from .bench_warehouse import postgres_server
from .gateway import RunningGateway
from .link import LinkSpec, ThrottledLink
from .pg import ServerCpu, fresh_database, sql, through

ENGINES = ("postgres", "snowflake", "redshift", "bigquery", "databricks")
ENGINE_TITLES = {
    "postgres": "PostgreSQL",
    "snowflake": "Snowflake (fakesnow's server)",
    "redshift": "Redshift (redshift_connector onto PostgreSQL)",
    "bigquery": "BigQuery (bqemulator)",
    "databricks": "Databricks (Spark 3.5 + Iceberg, in the bench's process)",
}
SECRET_ENV_VAR = "RUDDER_SYNC_BENCH_WAREHOUSE_PASSWORD"

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
# Snowflake's version of the rows: the same values, from its row generator (CASE for arrays).
PLANS = ("free", "starter", "pro", "team", "enterprise")
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "SE", "PL", "BR", "JP")
SNOWFLAKE_DDL = (
    "create table users (id bigint primary key, user_id text not null, email text, plan text, "
    "country text, score double, updated_at timestamp_tz)"
)


def _case(expression: str, values: tuple[str, ...]) -> str:
    return (
        f"case {expression} "
        + " ".join(f"when {i} then '{v}'" for i, v in enumerate(values))
        + " end"
    )


def snowflake_rows(start: int, stop: int) -> str:
    return (
        "insert into users select g, 'usr_' || lpad(g::varchar, 9, '0'), "
        "'user' || g || '@example.com', "
        f"{_case('(g * 7) % 5', PLANS)}, {_case('(g * 13) % 11', COUNTRIES)}, "
        "((g * 37) % 100000) / 100.0, "
        "dateadd(second, g % 86400, '2024-06-01 00:00:00+00'::timestamp_tz) "
        f"from (select seq8() + {start} as g "
        f"from table(generator(rowcount => {stop - start + 1})))"
    )


SNOWFLAKE_MUTATION = (
    "delete from users where id % 100 = 1",
    "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
    "updated_at = dateadd(day, 1, updated_at) where id % 100 = 2",
)


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


class Engine:
    """One engine of the bench: its data set-up, the sync YAML's warehouse section and the
    environment the runs need, and the CPU its server spends (None where not measurable)."""

    name = "postgres"
    #: the runs happen in the bench's own process (the stand-in's connection lives there)
    in_process = False

    def __init__(self, url: str, run_url: str) -> None:
        self.url, self.run_url = url, run_url
        self.server = ServerCpu(url)

    def describe(self, link: LinkSpec | None) -> str:
        if link:
            return f"rudder_sync reaches PostgreSQL through a link of {link} (`bench/link.py`)."
        return "PostgreSQL on this machine (loopback)."

    def reset(self, rows: int) -> None:
        """The users table afresh, no state schema."""
        create_users(self.url, rows)
        sql(self.url, f"drop schema if exists {SCHEMA} cascade")

    def mutate(self, rows: int) -> None:
        mutate_users(self.url, rows)

    def model(self) -> str:
        return str(SYNC["model"])

    def warehouse(self) -> dict[str, Any]:
        return {"type": "postgres", "url": {"env": URL_ENV_VAR}}

    def state_schema(self) -> str:
        return SCHEMA

    def env(self) -> dict[str, str]:
        return {URL_ENV_VAR: self.run_url}

    def server_seconds(self) -> float | None:
        return self.server.seconds()

    def server_note(self) -> str:
        return "CPU time of all the PostgreSQL server's processes during the run"


def _own_cpu() -> float:
    """This process's CPU seconds (the stand-in servers run in its threads)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


class RedshiftEngine(Engine):
    """redshift_connector through the tests' start-up proxy (a thread here) onto PostgreSQL."""

    name = "redshift"

    def __init__(self, url: str, proxy_port: int) -> None:
        super().__init__(url, url)
        self.proxy_port = proxy_port

    def describe(self, link: LinkSpec | None) -> str:
        return (
            "Redshift's stand-in: the real redshift_connector through the tests' start-up proxy "
            "(`rudder_sync_tests/engines/redshift.py`) onto PostgreSQL on this machine."
        )

    def warehouse(self) -> dict[str, Any]:
        return {
            "type": "redshift",
            "host": "127.0.0.1",
            "port": self.proxy_port,
            "database": DATABASE,
            "user": "postgres",
            "password": {"env": SECRET_ENV_VAR},
            "ssl": False,
        }

    def env(self) -> dict[str, str]:
        return {SECRET_ENV_VAR: "unused-trust"}

    def server_seconds(self) -> float | None:
        server = self.server.seconds()
        return None if server is None else server + _own_cpu()

    def server_note(self) -> str:
        return (
            "CPU time of the PostgreSQL server's processes and of the start-up proxy (threads "
            "of the bench's parent process) during the run"
        )


class SnowflakeEngine(Engine):
    """fakesnow's server (threads of this process), a database per mode."""

    name = "snowflake"

    def __init__(self, server: dict[str, Any]) -> None:
        import snowflake.connector

        self.kwargs = server
        self.conn = snowflake.connector.connect(**server, autocommit=True)
        self.database = ""

    def describe(self, link: LinkSpec | None) -> str:
        from importlib.metadata import version

        return (
            f"Snowflake's stand-in: fakesnow {version('fakesnow')}'s server (Snowflake's REST "
            "protocol on DuckDB, a Python server in the bench's parent process) through the "
            f"real snowflake-connector-python {version('snowflake-connector-python')}."
        )

    def sql(self, *statements: str) -> None:
        cursor = self.conn.cursor()
        for statement in statements:
            cursor.execute(statement)

    def reset(self, rows: int) -> None:
        self.database = f"BENCH_DIFF_{uuid.uuid4().hex[:8].upper()}"
        self.sql(
            f"create database {self.database}",
            f"use database {self.database}",
            "create schema app",
            "use schema app",
            SNOWFLAKE_DDL,
            snowflake_rows(1, rows),
        )

    def mutate(self, rows: int) -> None:
        self.sql(*SNOWFLAKE_MUTATION, snowflake_rows(rows + 1, rows + rows // 100))

    def model(self) -> str:
        """Snowflake folds unquoted names to upper case: the columns are named as the sync
        names them."""
        columns = ("id", "user_id", "email", "plan", "country", "score", "updated_at")
        return "select " + ", ".join(f'{c} as "{c}"' for c in columns) + " from users"

    def warehouse(self) -> dict[str, Any]:
        return {
            "type": "snowflake",
            "account": "rudder",
            "user": "rudder_sync",
            "password": {"env": SECRET_ENV_VAR},
            "database": self.database,
            "schema": "APP",
            "host": self.kwargs["host"],
            "port": self.kwargs["port"],
            "protocol": self.kwargs["protocol"],
        }

    def env(self) -> dict[str, str]:
        return {SECRET_ENV_VAR: "unused-fake"}

    def server_seconds(self) -> float | None:
        return _own_cpu()

    def server_note(self) -> str:
        return "CPU time of fakesnow's server (threads of the bench's parent process)"


# BigQuery's version of the rows (GoogleSQL: the emulator translates it to DuckDB).
BIGQUERY_DATASET = "app"
BIGQUERY_DDL = (
    f"create table {BIGQUERY_DATASET}.users (id INT64, user_id STRING NOT NULL, email STRING, "
    "plan STRING, country STRING, score FLOAT64, updated_at TIMESTAMP)"
)
BIGQUERY_MUTATION = (
    f"delete from {BIGQUERY_DATASET}.users where mod(id, 100) = 1",
    f"update {BIGQUERY_DATASET}.users set plan = case when plan = 'free' then 'pro' else 'free' "
    "end, updated_at = timestamp_add(updated_at, interval 1 day) where mod(id, 100) = 2",
)


def bigquery_rows(start: int, stop: int) -> str:
    return (
        f"insert into {BIGQUERY_DATASET}.users select g, "
        "concat('usr_', lpad(cast(g as string), 9, '0')), "
        "concat('user', cast(g as string), '@example.com'), "
        f"{_case('mod(g * 7, 5)', PLANS)}, {_case('mod(g * 13, 11)', COUNTRIES)}, "
        "mod(g * 37, 100000) / 100.0, "
        "timestamp_add(timestamp '2024-06-01 00:00:00+00', interval mod(g, 86400) second) "
        f"from unnest(generate_array({start}, {stop})) as g"
    )


class BigQueryEngine(Engine):
    """bqemulator (its own process, `rudder_sync_tests.engines.bigquery.running_emulator`),
    reached by the runs' child processes through the YAML keys `api_endpoint` and
    `storage_api_endpoint`; a project of its own per mode (the emulator makes any)."""

    name = "bigquery"

    def __init__(self, emulator: Any, emulator_version: str) -> None:
        self.emulator, self.emulator_version = emulator, emulator_version
        self.process = psutil.Process(emulator.pid)
        self.project = ""

    def describe(self, link: LinkSpec | None) -> str:
        from importlib.metadata import version

        return (
            f"BigQuery's stand-in: bqemulator {self.emulator_version} (BigQuery's REST and "
            "Storage Read gRPC APIs on DuckDB, a Python server in a process of its own, started "
            "offline by `rudder_sync_tests/engines/bqemulator_launcher.py`) through the real "
            f"google-cloud-bigquery {version('google-cloud-bigquery')} and "
            f"google-cloud-bigquery-storage {version('google-cloud-bigquery-storage')}."
        )

    def sql(self, *statements: str) -> None:
        client = self.emulator.client(self.project)
        try:
            for statement in statements:
                client.query(statement).result()
        finally:
            client.close()

    def reset(self, rows: int) -> None:
        self.project = f"bench-{uuid.uuid4().hex[:10]}"
        client = self.emulator.client(self.project)
        try:
            client.create_dataset(BIGQUERY_DATASET)
        finally:
            client.close()
        self.sql(BIGQUERY_DDL, bigquery_rows(1, rows))

    def mutate(self, rows: int) -> None:
        self.sql(*BIGQUERY_MUTATION, bigquery_rows(rows + 1, rows + rows // 100))

    def model(self) -> str:
        return str(SYNC["model"]).replace("from users", f"from {BIGQUERY_DATASET}.users")

    def warehouse(self) -> dict[str, Any]:
        return {"type": "bigquery", **self.emulator.yaml_keys(), "project": self.project}

    def env(self) -> dict[str, str]:
        return {}

    def server_seconds(self) -> float | None:
        times = self.process.cpu_times()
        return times.user + times.system

    def server_note(self) -> str:
        return "CPU time of the bqemulator process"


# Databricks' version of the rows (Spark SQL, `range` for the rows).
DATABRICKS_DDL = (
    "create table users (id bigint, user_id string, email string, plan string, country string, "
    "score double, updated_at timestamp)"
)
DATABRICKS_MUTATION = (
    "delete from users where id % 100 = 1",
    "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
    "updated_at = updated_at + interval 1 day where id % 100 = 2",
)
JUNE_2024 = 1_717_200_000  # 2024-06-01 00:00:00 UTC, in seconds


def databricks_rows(start: int, stop: int) -> str:
    return (
        "insert into users select id, concat('usr_', lpad(cast(id as string), 9, '0')), "
        "concat('user', cast(id as string), '@example.com'), "
        f"{_case('(id * 7) % 5', PLANS)}, {_case('(id * 13) % 11', COUNTRIES)}, "
        "cast((id * 37) % 100000 as double) / 100, "
        f"timestamp_seconds({JUNE_2024} + id % 86400) "
        f"from range({start}, {stop + 1})"
    )


class DatabricksEngine(Engine):
    """Spark 3.5 with an Iceberg catalog in this process's JVM
    (`rudder_sync_tests.engines.databricks.spark_session`), reached through `SparkConnection`,
    the tests' stand-in for databricks-sql-connector, which only this process can use: the
    runs happen here (`in_process`). A schema of its own per mode, and one for its state."""

    name = "databricks"
    in_process = True

    def __init__(self, spark: Any) -> None:
        from rudder_sync_tests.engines.databricks import ICEBERG_CATALOG, SparkConnection

        self.spark, self.catalog = spark, ICEBERG_CATALOG
        self.connection = SparkConnection
        self.schema = ""
        self.jvm = _jvm_process()

    def describe(self, link: LinkSpec | None) -> str:
        import pyspark

        return (
            f"Databricks' stand-in: Spark {pyspark.__version__} (`local[2]`, pyspark's JVM) "
            "with Apache Iceberg tables in a Hadoop catalog on local disk, reached through "
            "`SparkConnection` (`rudder_sync_tests/engines/databricks.py`), the tests' DB-API "
            "stand-in for databricks-sql-connector, which cannot reach a local Spark. That "
            "connection lives in the process that owns the Spark session, so **the runs are "
            "executed in the bench's own process**, not in a child: no Python start-up or "
            "Dagster import per run (process s = job s), and peak RSS is the bench process's "
            "(sampled during the run: the job's memory plus the resident Spark client and "
            "earlier runs' leftovers; the JVM's own memory is not in it)."
        )

    def sql(self, *statements: str) -> None:
        conn = self.connection(self.spark, catalog=self.catalog, schema=self.schema)
        for statement in statements:
            conn.cursor().execute(statement)

    def reset(self, rows: int) -> None:
        self.schema = f"bench_{uuid.uuid4().hex[:8]}"
        self.spark.sql(f"create namespace {self.catalog}.{self.schema}")
        self.sql(DATABRICKS_DDL, databricks_rows(1, rows))

    def mutate(self, rows: int) -> None:
        self.sql(*DATABRICKS_MUTATION, databricks_rows(rows + 1, rows + rows // 100))

    def warehouse(self) -> dict[str, Any]:
        return {
            "type": "databricks",
            "server_hostname": "dbc-1.cloud.databricks.com",
            "http_path": "/sql/1.0/warehouses/bench",
            "access_token": {"env": SECRET_ENV_VAR},
            "catalog": self.catalog,
            "schema": self.schema,
        }

    def state_schema(self) -> str:
        return f"{self.schema}_state"  # fresh per mode (Iceberg's catalog drops no CASCADE)

    def env(self) -> dict[str, str]:
        return {SECRET_ENV_VAR: "unused-spark"}

    def server_seconds(self) -> float | None:
        times = self.jvm.cpu_times()
        return times.user + times.system

    def server_note(self) -> str:
        return "CPU time of Spark's JVM (the driver and its local executors)"


def _jvm_process() -> psutil.Process:
    """pyspark's JVM: the `java` child of this process."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "java":
                return child
    raise RuntimeError("pyspark's JVM (a java child of this process) was not found")


def expected_events(rows: int) -> dict[str, int]:
    """Event name -> count the measured run must send."""
    counts = {
        "removed": len(range(1, rows + 1, 100)),
        "changed": len(range(2, rows + 1, 100)),
        "added": rows // 100,
    }
    return {EVENTS[change]: count for change, count in counts.items()}


def write_project(root: Path, mode: str, engine: Engine) -> Path:
    """A fresh project folder: the sync YAML (in-warehouse: with state_schema), state/ beside."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    warehouse = engine.warehouse()
    if mode == "in_warehouse":
        warehouse["state_schema"] = engine.state_schema()
    sync = dict(SYNC, model=engine.model())
    document = {"warehouse": warehouse, "state": "state", "syncs": {SYNC_NAME: sync}}
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
    engine: Engine,
    gateway: RunningGateway,
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
        **engine.env(),
    )
    gateway.reset()
    server_before, gateway_before = engine.server_seconds(), gateway.cpu_seconds()
    if engine.in_process:
        child = run_here(env)
    else:
        child = common.run_child(
            common.child_command("bench.bench_warehouse_diff", "--child", str(config)),
            env=env,
            timeout=args.timeout,
        )
    time.sleep(0.5)  # let the postmaster reap the run's backends (their CPU then counts)
    server_after = engine.server_seconds()
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


def run_here(env: dict[str, str]) -> common.ChildRun:
    """The job in this process (Databricks: the stand-in's connection lives here), with the
    environment a child would get, measured as `common.run_child` measures a child: wall time,
    this process's CPU, the machine's busy time, and its RSS sampled during the run (its
    `ru_maxrss` is the bench's whole life)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    busy, cpu = common.system_busy_seconds(), _own_cpu()
    started = time.perf_counter()
    result: dict[str, Any] = {}
    returncode, stderr = 0, ""
    try:
        with common.RssSampler() as rss:
            result = run_job()
    except Exception as exc:  # noqa: BLE001 - reported as a failed child is
        import traceback

        returncode, stderr = 1, traceback.format_exc()
        common.log(f"  the job failed here: {exc}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    wall = time.perf_counter() - started
    peak = max((mb for _, mb in rss.samples), default=0.0) if returncode == 0 else 0.0
    return common.ChildRun(
        command=["(in the bench's process)"],
        returncode=returncode,
        wall_seconds=wall,
        tree_peak_rss_mb=peak,
        maxrss_mb=peak,
        result=result,
        stderr=stderr,
        cpu_seconds=_own_cpu() - cpu,
        busy_seconds=common.system_busy_seconds() - busy,
    )


def run_mode(
    mode: str,
    engine: Engine,
    rows: int,
    gateway: RunningGateway,
    args: argparse.Namespace,
) -> tuple[Run, Run]:
    """First run (baseline), the 1 % / 1 % / 1 % change, then the measured run. The set-up
    goes to the engine directly; the runs as the sync YAML says (through the link, if any)."""
    common.log(f"{engine.name}, {mode}: {rows:,} rows")
    started = time.perf_counter()
    engine.reset(rows)
    common.log(f"  data set up in {time.perf_counter() - started:.1f}s")
    root = args.workdir / f"warehouse_diff_{rows}" / engine.name / mode
    config = write_project(root, mode, engine)
    first = execute(config, engine, gateway, "1. first run", args)
    if first.events:
        sys.exit(f"{engine.name} {mode}: the first run must send nothing, it sent {first.events}")
    engine.mutate(rows)
    measured = execute(config, engine, gateway, "2. 3 % changed", args)
    if measured.events != expected_events(rows):
        sys.exit(f"{engine.name} {mode}: sent {measured.events}, expected {expected_events(rows)}")
    return first, measured


# -- the job (child side) ----------------------------------------------------------------------
_COUNTS: dict[str, int] = {}


def count_transfers() -> dict[str, int]:
    """Count what rudder_sync reads out of the warehouse and writes into it, as Arrow rows and
    bytes (`RecordBatch.nbytes`), by wrapping the functions every bulk transfer goes through, on
    each engine: the warehouse's `_batches` (model reads: local mode's whole model,
    in-warehouse mode's changed rows; the state's streamed reads), the state store's `arrow`
    (state reads: snapshot rows of the changed and removed keys, pending changes, rejected
    rows) and its `ingest` (uploads: the diff's pending changes and keys). Small scalar queries
    (counts, meta) are not counted. The functions are wrapped once per process (a run in the
    bench's own process, as on Databricks, comes again): each call starts the counts at 0."""
    from rudder_sync.warehouse_state.bigquery_store import Store as BigQueryStore
    from rudder_sync.warehouse_state.databricks_store import Store as DatabricksStore
    from rudder_sync.warehouse_state.postgres_store import Store as PostgresStore
    from rudder_sync.warehouse_state.rowlock_store import RowLockStore
    from rudder_sync.warehouses.bigquery import BigQueryWarehouse
    from rudder_sync.warehouses.databricks import DatabricksWarehouse
    from rudder_sync.warehouses.postgres import PostgresWarehouse
    from rudder_sync.warehouses.redshift import RedshiftWarehouse
    from rudder_sync.warehouses.snowflake import _SnowflakeReader

    wrapped = bool(_COUNTS)
    _COUNTS.update(
        dict.fromkeys(
            ("model_rows_out", "model_bytes_out", "state_rows_out", "state_bytes_out", "bytes_in"),
            0,
        )
    )
    if wrapped:
        return _COUNTS
    counts = _COUNTS

    def wrap_batches(cls: Any) -> None:
        batches = cls._batches

        def counted_batches(self: Any, *args: Any) -> Iterator[Any]:
            for batch in batches(self, *args):
                counts["model_rows_out"] += batch.num_rows
                counts["model_bytes_out"] += batch.nbytes
                yield batch

        cls._batches = counted_batches

    def wrap_store(cls: Any) -> None:
        arrow, ingest = cls.arrow, cls.ingest

        def counted_arrow(self: Any, *args: Any) -> Any:
            table = arrow(self, *args)
            counts["state_rows_out"] += table.num_rows
            counts["state_bytes_out"] += table.nbytes
            return table

        def counted_ingest(self: Any, name: str, table: Any) -> str:
            counts["bytes_in"] += table.nbytes
            return ingest(self, name, table)

        cls.arrow, cls.ingest = counted_arrow, counted_ingest

    for warehouse in (
        PostgresWarehouse,
        RedshiftWarehouse,
        _SnowflakeReader,
        BigQueryWarehouse,
        DatabricksWarehouse,
    ):
        wrap_batches(warehouse)
    # each overrides both (none calls the others'), so nothing is counted twice
    for store in (PostgresStore, RowLockStore, BigQueryStore, DatabricksStore):
        wrap_store(store)
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
    engine: Engine,
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
        + engine.describe(link),
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
        "in: Arrow bytes (`RecordBatch.nbytes`) of every result read from the warehouse "
        "(the warehouse's `_batches`, the state store's `arrow`) and of every table written "
        "to it (the state store's `ingest`), counted in the child by wrapping those functions; "
        "small scalar queries are not counted.",
    ]
    if engine.in_process:
        lines[-1] = (
            lines[-1]
            .replace("in a child process;", "in the bench's own process (see above);")
            .replace(
                "process s adds Python start-up, imports and loading the definitions. Peak RSS: "
                "the child's `ru_maxrss`.",
                "process s is the same call timed around it (loading the project and the "
                "definitions: no Python start-up or Dagster import). Peak RSS: the bench "
                "process's RSS sampled every 50 ms during the run.",
            )
            .replace("counted in the child", "counted in that process")
        )
    if local.server_cpu is not None:
        lines[-1] += (
            f" Server CPU s: {engine.server_note()} (the work in-warehouse mode moves there); "
            "other CPU % excludes it and the gateway."
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
    parser.add_argument(
        "--engine",
        choices=(*ENGINES, "all"),
        default="postgres",
        help="the warehouse (its local stand-in but for postgres); all: the five, one by one",
    )
    parser.add_argument(
        "--spark-memory",
        default="2g",
        help="databricks: the Spark driver's memory (spark.driver.memory)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        common.emit(run_job())
        return
    if args.rows < 100:
        parser.error("--rows: at least 100 (1 % of the rows must be at least one row)")

    engines = ENGINES if args.engine == "all" else (args.engine,)
    if args.link and engines != ("postgres",):
        parser.error("--link: with --engine postgres only")
    for name in engines:
        with contextlib.ExitStack() as stack:
            gateway = stack.enter_context(RunningGateway(WRITE_KEY))
            engine = start_engine(name, stack, args)
            results = {mode: run_mode(mode, engine, args.rows, gateway, args) for mode in MODES}
        body = report(args.rows, results, engine, args.link)
        print(body)
        if not args.no_record:
            record(name, body, args)


def start_engine(name: str, stack: contextlib.ExitStack, args: argparse.Namespace) -> Engine:
    """Start the engine (its stand-in, in this process: its data lives there) for the runs."""
    if name == "bigquery":
        return start_bigquery(stack, args)
    if name == "databricks":
        return start_databricks(stack, args)
    if name == "snowflake":
        import fakesnow

        server = stack.enter_context(fakesnow.server())
        # uvicorn's access log (a line per request, on stdout) would be part of what is timed
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        return SnowflakeEngine(server)
    server_url = stack.enter_context(postgres_server())
    url = fresh_database(server_url, DATABASE)
    stack.callback(sql, server_url, f"drop database if exists {DATABASE} with (force)")
    if name == "redshift":
        from rudder_sync_tests.engines.redshift import StartupProxy

        ((directories, port),) = sql(
            url, "select current_setting('unix_socket_directories'), current_setting('port')"
        )
        socket_path = f"{str(directories).split(',')[0].strip()}/.s.PGSQL.{port}"
        proxy = stack.enter_context(StartupProxy(socket_path))
        return RedshiftEngine(url, proxy.port)
    run_url = url
    if args.link:
        host, port = through(url)
        link = stack.enter_context(ThrottledLink(host, port, args.link))
        run_url = through(url, link.port)
        common.log(f"runs reach PostgreSQL through a link of {args.link}")
    return Engine(url, run_url)


def start_bigquery(stack: contextlib.ExitStack, args: argparse.Namespace) -> Engine:
    """bqemulator in its own virtualenv, as the tests start it."""
    import subprocess

    from rudder_sync_tests.engines import bigquery

    python = bigquery.emulator_python()
    if python is None:
        sys.exit(
            f"bqemulator is not installed ({bigquery.PYTHON_ENV_VAR} unset, no "
            ".venv-bqemulator). Fix: scripts/setup_engines"
        )
    version = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('bqemulator'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = args.workdir / "bqemulator.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    emulator = stack.enter_context(bigquery.running_emulator(python, log))
    common.log(f"bqemulator {version} on {emulator.api_endpoint} (log: {log})")
    return BigQueryEngine(emulator, version)


def start_databricks(stack: contextlib.ExitStack, args: argparse.Namespace) -> Engine:
    """Spark with its Iceberg catalog in this process, as the tests start it, and
    `databricks.sql.connect` answered by the tests' stand-in connection over it."""
    from databricks import sql as dbsql

    from rudder_sync_tests.engines.databricks import SparkConnection, spark_session

    root = args.workdir / "spark"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    spark = stack.enter_context(spark_session(root, driver_memory=args.spark_memory))
    connect = dbsql.connect
    dbsql.connect = lambda **kwargs: SparkConnection(spark, **kwargs)
    stack.callback(setattr, dbsql, "connect", connect)
    return DatabricksEngine(spark)


def record(name: str, body: str, args: argparse.Namespace) -> None:
    """This engine's section of RESULTS.md. PostgreSQL alone keeps the section it always had
    (the loopback one, or one per link); within `--engine all` each engine has its own."""
    if args.link:
        section = f"bench_warehouse_diff_link_{args.link.mbit:g}_{args.link.rtt_ms:g}"
        title = f"Diff in the warehouse vs local mode, through a link of {args.link}"
    elif args.engine == "postgres":
        section, title = "bench_warehouse_diff", "Diff in the warehouse vs local mode, loopback"
    else:
        section = f"bench_warehouse_diff_{name}"
        title = f"Diff in the warehouse vs local mode, per engine: {ENGINE_TITLES[name]}"
    common.record_section(section, title, body, common.invocation())


if __name__ == "__main__":
    main()
