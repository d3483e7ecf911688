"""`mode: append` on the vendor warehouses' stand-ins, end to end: the cursor filter around the
model is bound by each real connector (Snowflake: fakesnow's server; BigQuery: bqemulator;
Redshift: redshift_connector onto the test PostgreSQL; Databricks: Spark SQL on pyspark, through
the DB-API stand-in for databricks-sql-connector in engines/databricks.py, with native `:name`
parameters), and the events must be those the same history sends on a DuckDB file (messageId
aside).

Three syncs on one `orders` table, run together in each Dagster run: a zone-aware timestamp
cursor (`lookback: 2h`) whose first run sends from `start_at`, the same without it (its first run
records the table's end: `max(created_at)` in the warehouse), and a numeric cursor
(`send_initial_results`, `lookback: 20`). The history: a first run; two new orders; a late order
inside the lookbacks (sent once), a null-cursor order (reported by key), a new order; a run with
nothing new. Then a partitioned append sync's backfill of four hourly windows (each window's
cursor range bound; the null-cursor row read and the rows before the first window counted, both
reported).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import Project, asset_metadata, rudderstack_for, sql

# With the other engine tests on one xdist worker: each stand-in starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

SECRET_ENV = "RUDDER_SYNC_TEST_ENGINE_SECRET"
SECRET = "engine-Secret-31x"
COLUMNS = ("order_id", "user_id", "amount", "created_at", "seq")
T0 = "2024-06-01 12:00:00+00:00"
BY_TIME, BY_NUMBER = "orders_by_time", "orders_by_number"
RECORDED, BACKFILL = "orders_recorded", "orders_backfill"
SYNCS: dict[str, dict[str, Any]] = {
    BY_TIME: {
        "mode": "append",
        "cursor": "created_at",
        "lookback": "2h",
        "start_at": "2024-06-01T09:30:00Z",  # orders 8, 9, 10
        "primary_key": "order_id",
        "type": "track",
        "user_id": "user_id",
        "mapping": {"amount": "amount"},
        "events": {"added": "Order Completed"},
        "timestamp": "created_at",
    },
    RECORDED: {
        "mode": "append",
        "cursor": "created_at",
        "lookback": "2h",
        "primary_key": "order_id",
        "type": "track",
        "user_id": "user_id",
        "mapping": {"amount": "amount"},
        "events": {"added": "Order Recorded"},
        "timestamp": "created_at",
    },
    BY_NUMBER: {
        "mode": "append",
        "cursor": "seq",
        "lookback": 20,
        "send_initial_results": True,  # orders 1..10
        "primary_key": "order_id",
        "type": "track",
        "user_id": "user_id",
        "mapping": {"amount": "amount"},
        "events": {"added": "Order Numbered"},
        "timestamp": "created_at",
    },
}


def _order(order_id: int, hours: float | None, seq: int | None) -> tuple:
    """An order `hours` after T0 (None: a null cursor in both syncs)."""
    return (order_id, f"u{order_id % 3}", order_id * 1.5, hours, seq)


SEED = [_order(i, i - 10, i * 10) for i in range(1, 11)]  # one an hour, the last at T0
CHANGES: list[list[tuple] | None] = [
    None,  # run 1
    [_order(11, 1, 110), _order(12, 2, 120)],
    None,  # run 2: 11 and 12
    # 13: late, inside both lookbacks (cursor T0+2h/120, lookback 2h/20); 14: null cursor
    [_order(13, 1.5, 115), _order(14, None, None), _order(15, 3, 130)],
    None,  # run 3: 13 and 15; 14 reported
    None,  # run 4: nothing new; 14 reported again
]
# The backfill: hourly windows from 10:00 (orders 1..7 are before it), run 10:00 to 13:00.
PARTITIONED = {
    **SYNCS[BY_TIME],
    "events": {"added": "Order Backfilled"},
    "partitions": {"start": "2024-06-01T10:00:00Z", "cadence": "hourly"},
}
del PARTITIONED["start_at"]
BACKFILL_RANGE = ("2024-06-01-10:00", "2024-06-01-13:00")
EXPECTED = {  # order ids sent per run, by sync
    BY_TIME: [[8, 9, 10], [11, 12], [13, 15], []],
    RECORDED: [[], [11, 12], [13, 15], []],
    BY_NUMBER: [list(range(1, 11)), [11, 12], [13, 15], []],
}


class Dialect:
    """How to write the orders table in one engine's SQL."""

    def __init__(self, types: tuple[str, ...], timestamp: str):
        self.types = types
        self.timestamp = timestamp  # the zone-aware timestamp type, for a cast

    def ddl(self, table: str) -> str:
        columns = ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, self.types, strict=True))
        return f"create table {table} ({columns})"

    def insert(self, table: str, rows: list[tuple]) -> str:
        from datetime import datetime, timedelta

        t0 = datetime.fromisoformat(T0)

        def value(row: tuple) -> str:
            order_id, user_id, amount, hours, seq = row
            at = (
                "null"
                if hours is None
                else f"cast('{(t0 + timedelta(hours=hours)).isoformat(sep=' ')}' "
                f"as {self.timestamp})"
            )
            number = "null" if seq is None else str(seq)
            return f"({order_id}, '{user_id}', {amount}, {at}, {number})"

        return f"insert into {table} values {', '.join(value(r) for r in rows)}"


DUCKDB = Dialect(("integer", "varchar", "double", "timestamptz", "integer"), "timestamptz")
POSTGRES = Dialect(
    ("integer", "varchar", "double precision", "timestamptz", "integer"), "timestamptz"
)
SNOWFLAKE = Dialect(
    ("number(38,0)", "varchar", "float", "timestamp_tz", "number(38,0)"), "timestamp_tz"
)
BIGQUERY = Dialect(("INT64", "STRING", "FLOAT64", "TIMESTAMP", "INT64"), "TIMESTAMP")
SPARK = Dialect(("int", "string", "double", "timestamp", "int"), "timestamp")


def _project(root: Path, warehouse: dict[str, Any] | str, model: str) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    syncs = {
        name: dict(copy.deepcopy(body), model=model)
        for name, body in {**SYNCS, BACKFILL: PARTITIONED}.items()
    }
    path = root / "rudder_sync.yaml"
    document = {"warehouse": warehouse, "state": "state", "syncs": syncs}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return Project(root=root, config_path=path)


def _run(project: Project, gateway: TestGateway, names: list[str], **tags: str) -> Any:
    """One Dagster run materializing these syncs' assets (as their jobs would, together)."""
    config = project.config()
    assets = [a for name in names for a in build_sync_assets(config.syncs[name], config.state)]
    return materialize(
        assets,
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack_for(gateway.url),
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=DagsterInstance.ephemeral(),
        tags=tags,
    )


def _record(result: Any, name: str, event: str, sent: list[dict[str, Any]]) -> dict[str, Any]:
    """One sync's part of a run: its events (messageId aside, sorted), rejected rows, reads."""
    snapshot = asset_metadata(result, name, "snapshot")
    diff = asset_metadata(result, name, "diff")
    record = {
        "events": sorted(
            ({k: v for k, v in e.items() if k != "messageId"} for e in sent if e["event"] == event),
            key=repr,
        ),
        "rejected": diff.get("rejected_sample", []),
        "rows_read": snapshot["dagster/row_count"],
    }
    for key in ("cursor", "read_from", "null_cursor_rows", "rows_before_first_window"):
        if key in snapshot:
            record[key] = snapshot[key]
    return record


def _history(project: Project, change: Callable[[list[tuple]], None]) -> list[dict[str, Any]]:
    """Each run's events (by sync, messageId aside, sorted), rejected rows and read bounds."""
    runs: list[dict[str, Any]] = []
    with TestGateway() as gateway:
        for step in CHANGES:
            if step is not None:
                change(step)
                continue
            before = len(gateway.events)
            result = _run(project, gateway, list(SYNCS))
            sent = gateway.events[before:]
            record: dict[str, Any] = {"schema_errors": list(gateway.schema_errors)}
            for name, body in SYNCS.items():
                record[name] = _record(result, name, body["events"]["added"], sent)
            runs.append(record)
        before = len(gateway.events)
        start, end = BACKFILL_RANGE
        result = _run(
            project,
            gateway,
            [BACKFILL],
            **{
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )
        sent = gateway.events[before:]
        runs.append(
            {
                "schema_errors": list(gateway.schema_errors),
                BACKFILL: _record(result, BACKFILL, "Order Backfilled", sent),
            }
        )
    return runs


def _order_ids(run: dict[str, Any], name: str) -> list[int]:
    return sorted(round(e["properties"]["amount"] / 1.5) for e in run[name]["events"])


@pytest.fixture(scope="module")
def on_duckdb(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The reference: the history on a DuckDB file, once per module."""
    root = tmp_path_factory.mktemp("append_duckdb")
    project = _project(root, "warehouse.duckdb", f"select {', '.join(COLUMNS)} from orders")
    sql(project.warehouse, DUCKDB.ddl("orders"))
    sql(project.warehouse, DUCKDB.insert("orders", SEED))
    runs = _history(project, lambda rows: sql(project.warehouse, DUCKDB.insert("orders", rows)))
    _check_history(runs)
    return runs


def _check_history(runs: list[dict[str, Any]]) -> None:
    """What the history sends and reports, whatever the engine."""
    assert [run["schema_errors"] for run in runs] == [[]] * len(runs)
    for name, expected in EXPECTED.items():
        assert [_order_ids(run, name) for run in runs[:4]] == expected, name
        rejected = [[r["key"] for r in run[name]["rejected"]] for run in runs[:4]]
        assert rejected == [[], [], ["14"], ["14"]], name
    backfill = runs[4][BACKFILL]
    assert _order_ids(runs[4], BACKFILL) == [8, 9, 10, 11, 13]  # 10:00 to 14:00
    reasons = {r["key"]: r["reason"] for r in backfill["rejected"]}
    assert set(reasons) == {"14", "(before start)"}
    assert reasons["(before start)"].startswith("before the first window: 7 row(s)")
    assert backfill["null_cursor_rows"] == 1 and backfill["rows_before_first_window"] == 7


def _keep_null_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakesnow 0.12.1 sends timestamp columns as Snowflake's (epoch, fraction[, timezone])
    structs but without a validity bitmap, so a NULL timestamp reaches the connector as
    1970-01-01 (real Snowflake sends it as NULL). The server runs in this process: its structs
    get the nulls' mask for this test, so that the null-cursor row is null, as on Snowflake."""
    import fakesnow.arrow
    import pyarrow as pa
    import pyarrow.compute as pc

    original = fakesnow.arrow.timestamp_to_sf_struct

    def with_nulls(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        structs = original(ts)
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        if not ts.null_count:
            return structs
        children = [pc.fill_null(structs.field(i), 0) for i in range(structs.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(structs.type), mask=ts.is_null())

    monkeypatch.setattr(fakesnow.arrow, "timestamp_to_sf_struct", with_nulls)


def _on_snowflake(request: pytest.FixtureRequest, root: Path, **keys: Any) -> list[dict[str, Any]]:
    engine = request.getfixturevalue("snowflake_engine")
    monkeypatch = request.getfixturevalue("monkeypatch")
    _keep_null_timestamps(monkeypatch)
    database = f"APPEND_{uuid.uuid4().hex[:8].upper()}"
    conn = engine.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"create database {database}")
        cursor.execute(f"create schema {database}.app")
        orders = f"{database}.app.orders"
        cursor.execute(SNOWFLAKE.ddl(orders))
        cursor.execute(SNOWFLAKE.insert(orders, SEED))
        monkeypatch.setenv(SECRET_ENV, SECRET)
        warehouse = {
            "type": "snowflake",
            "account": "rudder",
            "user": "rudder_sync",
            "password": {"env": SECRET_ENV},
            "database": database,
            "schema": "APP",
            **engine.yaml_keys(),
            **keys,
        }
        # Snowflake upper-cases unquoted names: the model names its columns as the syncs do.
        model = "select " + ", ".join(f'{c} as "{c}"' for c in COLUMNS) + " from orders"
        project = _project(root, warehouse, model)
        return _history(project, lambda rows: cursor.execute(SNOWFLAKE.insert(orders, rows)))
    finally:
        conn.close()


def _on_bigquery(request: pytest.FixtureRequest, root: Path, **keys: Any) -> list[dict[str, Any]]:
    engine = request.getfixturevalue("bigquery_engine")
    dataset = f"append_{uuid.uuid4().hex[:8]}"
    orders = f"`{dataset}`.orders"
    engine.run(f"create schema `{dataset}`", BIGQUERY.ddl(orders), BIGQUERY.insert(orders, SEED))
    warehouse = {"type": "bigquery", **engine.yaml_keys(), **keys}
    project = _project(root, warehouse, f"select {', '.join(COLUMNS)} from {orders}")
    return _history(project, lambda rows: engine.run(BIGQUERY.insert(orders, rows)))


def _on_postgres(request: pytest.FixtureRequest, root: Path, **keys: Any) -> list[dict[str, Any]]:
    """The real PostgreSQL server (``keys``: more warehouse keys, e.g. `state_schema`)."""
    pg = request.getfixturevalue("pg")
    request.getfixturevalue("monkeypatch").setenv(SECRET_ENV, pg.url)  # the URL holds a password
    pg.sql(POSTGRES.ddl("orders"), POSTGRES.insert("orders", SEED))
    warehouse = {"type": "postgres", "url": {"env": SECRET_ENV}, **keys}
    project = _project(root, warehouse, f"select {', '.join(COLUMNS)} from orders")
    return _history(project, lambda rows: pg.sql(POSTGRES.insert("orders", rows)))


def _on_redshift(request: pytest.FixtureRequest, root: Path, **keys: Any) -> list[dict[str, Any]]:
    engine = request.getfixturevalue("redshift_engine")
    pg = request.getfixturevalue("pg")
    request.getfixturevalue("monkeypatch").setenv(SECRET_ENV, SECRET)
    pg.sql(POSTGRES.ddl("orders"), POSTGRES.insert("orders", SEED))
    warehouse = {
        "type": "redshift",
        **engine.yaml_keys(pg.name),
        "password": {"env": SECRET_ENV},
        "ssl": False,
        **keys,
    }
    project = _project(root, warehouse, f"select {', '.join(COLUMNS)} from orders")
    return _history(project, lambda rows: pg.sql(POSTGRES.insert("orders", rows)))


def _on_databricks(request: pytest.FixtureRequest, root: Path, **keys: Any) -> list[dict[str, Any]]:
    """Spark's default catalog; with ``keys`` (`state_schema`), its `iceberg` catalog, whose
    tables take the MERGE statements the state's lock and commits run (as the scenario table of
    test_warehouse_state_engines.py)."""
    from databricks import sql as dbsql

    from .engines.databricks import ICEBERG_CATALOG, SparkConnection

    spark = request.getfixturevalue("spark_engine")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(dbsql, "connect", lambda **kwargs: SparkConnection(spark, **kwargs))
    monkeypatch.setenv(SECRET_ENV, SECRET)
    schema = f"append_{uuid.uuid4().hex[:8]}"
    catalog = ICEBERG_CATALOG if keys else "spark_catalog"
    spark.sql(f"create namespace {catalog}.`{schema}`")
    orders = f"{catalog}.`{schema}`.orders"
    try:
        spark.sql(SPARK.ddl(orders) + ("" if keys else " using parquet"))
        spark.sql(SPARK.insert(orders, SEED))
        warehouse = {
            "type": "databricks",
            "server_hostname": "dbc-1.cloud.databricks.com",
            "http_path": "/sql/1.0/warehouses/abc",
            "access_token": {"env": SECRET_ENV},
            "catalog": catalog,
            "schema": schema,
            **keys,
        }
        project = _project(root, warehouse, f"select {', '.join(COLUMNS)} from orders")
        return _history(project, lambda rows: spark.sql(SPARK.insert(orders, rows)) and None)
    finally:
        for namespace in (f"{catalog}.`{schema}`", *(f"{catalog}.`{v}`" for v in keys.values())):
            for row in spark.sql(f"show tables in {namespace}").collect():
                spark.sql(f"drop table if exists {namespace}.`{row.tableName}`")
            spark.sql(f"drop namespace if exists {namespace}")


STATE_SCHEMA = "rudder_sync_state"
ENGINES: dict[str, Callable[[pytest.FixtureRequest, Path], list[dict[str, Any]]]] = {
    "snowflake": _on_snowflake,
    "bigquery": _on_bigquery,
    "redshift": _on_redshift,
    "databricks": _on_databricks,
    # The state in the warehouse (`state_schema`): the same history, every table of the state
    # there (no state file), the rows past the cursor kept there between snapshot and diff.
    "postgres+state_schema": lambda r, root: _on_postgres(r, root, state_schema=STATE_SCHEMA),
    "redshift+state_schema": lambda r, root: _on_redshift(r, root, state_schema=STATE_SCHEMA),
    "snowflake+state_schema": lambda r, root: _on_snowflake(r, root, state_schema=STATE_SCHEMA),
    "bigquery+state_schema": lambda r, root: _on_bigquery(r, root, state_schema=STATE_SCHEMA),
    "databricks+state_schema": lambda r, root: _on_databricks(r, root, state_schema=STATE_SCHEMA),
}


@pytest.mark.parametrize(
    "engine",
    [
        "snowflake",
        pytest.param("bigquery", marks=pytest.mark.slow),
        "redshift",
        pytest.param("databricks", marks=pytest.mark.slow),
        "postgres+state_schema",
        # 66 s on a quiet machine; the inner loop keeps PostgreSQL's state_schema history (the
        # same SQL), Snowflake's, and Redshift's date and naive cursors (test_append_state_engines)
        pytest.param(
            "redshift+state_schema",
            marks=pytest.mark.slow(reason="covered by postgres+state_schema in the inner loop"),
        ),
        "snowflake+state_schema",
        pytest.param("bigquery+state_schema", marks=pytest.mark.slow),
        # Spark's start and Iceberg's commits: 665 s here on a loaded machine (load 10 on 2 cores)
        pytest.param(
            "databricks+state_schema", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]
        ),
    ],
)
def test_an_append_history_on_the_engine_sends_what_duckdb_sends(
    engine: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    on_duckdb: list[dict[str, Any]],
) -> None:
    runs = ENGINES[engine](request, tmp_path / engine)
    _check_history(runs)
    # the same events (bodies, timestamps), rejected rows, rows read and bounds, run by run
    assert runs == on_duckdb
    assert SECRET not in repr(runs)
    if engine.endswith("+state_schema"):  # nothing of the state on the local disk
        assert list((tmp_path / engine / "state").glob("*.duckdb")) == []


def test_cursor_bounds_are_bound_as_the_cursor_s_type_whatever_the_session_time_zone(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `timestamp` (no zone) cursor holds UTC wall time, as the unpartitioned runs compare it,
    and a `timestamptz` one instants: `start_at` and a window's bounds are bound as such, never
    as a type the server converts with its session's time zone (New York here: 4 hours off). On
    Redshift (its driver binds zone-aware values as `timestamptz`, others as `timestamp`), in a
    database whose time zone is New York."""
    engine = request.getfixturevalue("redshift_engine")
    pg = request.getfixturevalue("pg")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    pg.sql(
        f"alter database {pg.name} set timezone to 'America/New_York'",
        "create table orders (order_id integer, user_id varchar, amount double precision, "
        "created_at timestamp, created_tz timestamptz)",
        # one an hour, 2024-05-30 12:00 UTC (order 1) to 2024-06-01 12:00 UTC (order 49)
        """insert into orders select i, 'u' || i, i * 1.5,
               timestamp '2024-05-30 12:00:00' + make_interval(hours => i - 1),
               timestamptz '2024-05-30 12:00:00+00' + make_interval(hours => i - 1)
            from generate_series(1, 49) as t(i)""",
    )
    body = {k: v for k, v in SYNCS[BY_TIME].items() if k != "start_at"}
    start_at = "2024-06-01T09:30:00Z"
    model = "select order_id, user_id, amount, created_at, created_tz from orders"
    syncs = {
        BY_TIME: {**body, "model": model, "start_at": start_at},
        RECORDED: {
            **body,
            "model": model,
            "start_at": start_at,
            "cursor": "created_tz",
            "timestamp": "created_tz",
            "events": {"added": "Order Recorded"},
        },
        BACKFILL: {
            **body,
            "model": model,
            "partitions": {"start": "2024-05-31", "cadence": "daily"},
        },
    }
    warehouse = {
        "type": "redshift",
        **engine.yaml_keys(pg.name),
        "password": {"env": SECRET_ENV},
        "ssl": False,
    }
    root = tmp_path / "zones"
    root.mkdir()
    path = root / "rudder_sync.yaml"
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "state": "state", "syncs": syncs}))
    project = Project(root=root, config_path=path)
    with TestGateway() as gateway:
        first = _run(project, gateway, [BY_TIME, RECORDED])
        for name, event in ((BY_TIME, "Order Completed"), (RECORDED, "Order Recorded")):
            # read in the warehouse: 10:00, 11:00 and 12:00, none of them before start_at
            assert asset_metadata(first, name, "snapshot")["dagster/row_count"] == 3, name
            assert asset_metadata(first, name, "diff")["rejected_rows"] == 0, name
            sent = [e for e in gateway.events if e["event"] == event]
            assert _order_ids({name: {"events": sent}}, name) == [47, 48, 49], name
        before = len(gateway.events)
        result = _run(project, gateway, [BACKFILL], **{"dagster/partition": "2024-05-31"})
        window = gateway.events[before:]
    assert asset_metadata(result, BACKFILL, "snapshot")["dagster/row_count"] == 24
    assert _order_ids({BACKFILL: {"events": window}}, BACKFILL) == list(range(13, 37))
    assert all(e["timestamp"].startswith("2024-05-31") for e in window)
