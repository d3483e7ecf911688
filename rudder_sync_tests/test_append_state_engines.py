"""`mode: append` on the vendor warehouses' stand-ins: the guarantees of test_append_state.py
(PostgreSQL) with the state in the warehouse, and date and naive-timestamp cursors.

* With `state_schema`, one compact scenario per engine (PostgreSQL as the reference; Snowflake on
  fakesnow's server, Redshift through redshift_connector onto the test PostgreSQL, BigQuery on
  bqemulator; Databricks is left to test_append_engines.py's history, its Spark being too slow
  for one more scenario): the guard (`max_events`) holding back, a dry run committing nothing, a
  gateway failure mid-delivery and a rerun under the same messageIds, and the warehouse's tables
  (cursor, keys, pending) after each run.
* A `date` cursor and a timestamp without time zone, on Redshift (its database in New York),
  Snowflake and Databricks (Spark's `timestamp_ntz`; 18 s plus Spark's start): the same history
  as test_append.py's `test_date_and_naive_timestamp_cursors`, event for event (messageId aside)
  what it sends on a DuckDB file, run by run.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from .engines.state import BIGQUERY_DATASET, ENGINES, StateEngine
from .gateway import TestGateway
from .helpers import (
    Project,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    wait_until_idle,
)
from .test_append import APPEND_SYNC
from .test_append_engines import BIGQUERY, POSTGRES, SNOWFLAKE, Dialect, _order, _record, _run

# With the other engine tests on one xdist worker: each stand-in starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

SYNC = "order_completed"
T0 = datetime(2024, 6, 1, 12, tzinfo=UTC)  # order 10 of the seed; order i at T0 + (i - 10) h


def _hours(order_id: int) -> float:
    return float(order_id - 10)


# -- the guarantees with the state in the warehouse ------------------------------------------------

# The orders table as each engine writes it, and where it lives (BigQuery: the default dataset's
# statements are PostgreSQL's, transpiled; backticks keep BigQuery's own as they are).
TABLES: dict[str, tuple[Dialect, str]] = {
    "postgres": (POSTGRES, "orders"),
    "redshift": (POSTGRES, "orders"),
    "snowflake": (SNOWFLAKE, "orders"),
    "bigquery": (BIGQUERY, f"`{BIGQUERY_DATASET}`.orders"),
}


@pytest.fixture(
    params=[
        "postgres",
        pytest.param("snowflake", marks=pytest.mark.slow),
        pytest.param("redshift", marks=pytest.mark.slow),
        "bigquery",  # slow: its emulator's fixture marks it (conftest.SLOW_FIXTURES)
    ]
)
def append_engine(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    """A fresh database on an engine that keeps an append sync's state (Databricks aside)."""
    yield from ENGINES[request.param](request)


def _sync(engine: StateEngine) -> dict[str, Any]:
    """test_append.py's sync, on the engine's `orders`, with a guard of 3 events."""
    orders = f"{BIGQUERY_DATASET}.orders" if engine.kind == "bigquery" else "orders"
    model = APPEND_SYNC["model"].replace("from orders", f"from {orders}")
    return {**APPEND_SYNC, "model": model, "guard": {"max_events": 3}}


def _tables(engine: StateEngine) -> dict[str, Any]:
    """The sync's state tables in the warehouse: the keys delivered within the lookback, every
    kept key's cursor (as the hour of its order), pending messageIds and the recorded mode."""
    table = engine.table
    snapshot = engine.sql(f"select __rs_pk from {table('snapshot', SYNC)}")
    cursors = engine.sql(f"select __rs_pk, __rs_cursor from {table('append_cursor', SYNC)}")
    pending = engine.sql(f"select __rs_pk, __rs_message_id from {table('pending', SYNC)}")
    meta = dict(engine.sql(f"select key, value from {table('meta', SYNC)}"))
    return {
        "snapshot": {int(pk) for (pk,) in snapshot},
        "cursors": {
            int(pk): (datetime.fromisoformat(str(at)) - T0) / timedelta(hours=1)
            for pk, at in cursors
        },
        "pending": {int(pk): str(message_id) for pk, message_id in pending},
        "mode": meta.get("mode"),
    }


def _amount_ids(events: list[dict[str, Any]]) -> list[int]:
    return [round(event["properties"]["amount"] / 1.5) for event in events]


def test_guard_dry_run_and_a_gateway_failure_with_the_state_in_the_warehouse(
    append_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = append_engine
    dialect, orders = TABLES[engine.kind]
    seed = [_order(i, _hours(i), i) for i in range(1, 11)]
    engine.sql(dialect.ddl(orders), dialect.insert(orders, seed))
    project = engine.write_project(tmp_path, {SYNC: _sync(engine)}, monkeypatch)
    with TestGateway() as gateway:
        # a first run: the lookback before the table's end recorded as delivered, not sent
        run_sync(project, SYNC, rudderstack_for(gateway.url))
        assert gateway.events == []
        baseline = {8: -2.0, 9: -1.0, 10: 0.0}
        assert _tables(engine) == {
            "snapshot": set(baseline),
            "cursors": baseline,
            "pending": {},
            "mode": "append",
        }

        # five new orders, more than max_events: held back, pending in the warehouse
        engine.sql(dialect.insert(orders, [_order(i, _hours(i), i) for i in range(11, 16)]))
        held = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
        assert not held.success and gateway.events == []
        assert "5 events to send > max_events 3" in "\n".join(held.run_logs)
        after_guard = _tables(engine)
        assert after_guard["snapshot"] == set(baseline)  # nothing delivered: the cursor stays
        assert after_guard["cursors"] == {**baseline, **{i: _hours(i) for i in range(11, 16)}}
        assert set(after_guard["pending"]) == set(range(11, 16))

        # a dry run (approved past the guard): nothing sent, nothing committed, the same IDs
        dry = run_sync(
            project,
            SYNC,
            rudderstack_for(gateway.url),
            dry_run=True,
            approve_large_change=True,
        )
        assert gateway.events == []
        assert asset_metadata(dry, SYNC, "events")["status"] == "dry_run"
        assert asset_metadata(dry, SYNC, "diff")["added"] == 5
        assert _tables(engine) == after_guard

        # the gateway fails mid-delivery: the first request is answered, the others are kept
        # but their connections cut before the answer, every time
        gateway.delay_next(0.0)
        gateway.cut_next(times=1_000, after_storing=True)
        sender = rudderstack_for(
            gateway.url, max_request_kb=1, max_in_flight=1, retry_max_seconds=0.5
        )
        failed = run_sync(project, SYNC, sender, raise_on_error=False, approve_large_change=True)
        assert not failed.success
        wait_until_idle(gateway)
        gateway.clear_faults()
        tried = {event["messageId"]: event for event in gateway.events}
        assert set(_amount_ids(list(tried.values()))) == set(range(11, 16))
        after_failure = _tables(engine)
        committed = after_failure["snapshot"] - set(baseline)
        assert 0 < len(committed) < 5, committed
        # the rest waits under the IDs it was tried with; the cursors of all stay kept
        assert after_failure["pending"] == {
            i: after_guard["pending"][i] for i in range(11, 16) if i not in committed
        }
        assert after_failure["cursors"] == after_guard["cursors"]

        # the rerun sends the rest under the same messageIds, bodies and timestamps
        before = len(gateway.events)
        rerun = run_sync(project, SYNC, rudderstack_for(gateway.url), approve_large_change=True)
        resent = gateway.events[before:]
        assert sorted(_amount_ids(resent)) == sorted(set(range(11, 16)) - committed)
        for event in resent:
            assert event == tried[event["messageId"]]
    # the cursor had moved with the accepted deliveries only
    cursor = T0 + timedelta(hours=_hours(max(committed)))
    assert asset_metadata(rerun, SYNC, "snapshot")["cursor"] == cursor.isoformat()
    # keys below that cursor minus the lookback are forgotten (unless the rerun delivered
    # them); the others are all delivered
    low = _hours(max(committed)) - 2
    kept = {i for i in range(8, 16) if _hours(i) >= low} | (set(range(11, 16)) - committed)
    assert _tables(engine) == {
        "snapshot": kept,
        "cursors": {i: _hours(i) for i in kept},
        "pending": {},
        "mode": "append",
    }


# -- date and naive-timestamp cursors --------------------------------------------------------------

BY_DAY, BY_WALL = "orders_by_day", "orders_by_wall"
KIND_SYNCS: dict[str, dict[str, Any]] = {
    # a date cursor: whole days, a lookback in days, start_at a date (its midnight)
    BY_DAY: {
        "model": "select order_id, user_id, amount, order_day from orders",
        "cursor": "order_day",
        "timestamp": "order_day",
        "lookback": "1d",
        "start_at": "2024-06-01",
        "events": {"added": "Order Dated"},
    },
    # a timestamp without time zone: compared as UTC wall time, start_at given with a zone
    BY_WALL: {
        "model": "select order_id, user_id, amount, order_wall from orders",
        "cursor": "order_wall",
        "timestamp": "order_wall",
        "lookback": "2h",
        "start_at": "2024-06-01T10:30:00Z",
        "events": {"added": "Order Walled"},
    },
}
COMMON = {"mode": "append", "primary_key": "order_id", "type": "track", "user_id": "user_id"}
# The history: orders 1..100 one an hour (the last at T0); two the next day; a row back-dated
# within the day cursor's lookback (and too late for the wall clock's), another within both;
# then a run with nothing new.
KIND_CHANGES: list[list[tuple[int, float]] | None] = [
    [(i, float(i - 100)) for i in range(1, 101)],
    None,
    [(101, 13.0), (102, 14.0)],
    None,
    [(103, 0.5), (104, 13.5)],
    None,
    None,
]
# Column types by engine: id, user, amount, the day, the wall-clock time (UTC, no zone)
KIND_TYPES = {
    "duckdb": ("integer", "varchar", "double", "date", "timestamp"),
    "redshift": ("integer", "varchar", "double precision", "date", "timestamp"),
    "snowflake": ("number(38,0)", "varchar", "float", "date", "timestamp_ntz"),
    "databricks": ("int", "string", "double", "date", "timestamp_ntz"),
}
KIND_COLUMNS = ("order_id", "user_id", "amount", "order_day", "order_wall")


def _kind_ddl(engine: str) -> str:
    columns = ", ".join(f"{c} {t}" for c, t in zip(KIND_COLUMNS, KIND_TYPES[engine], strict=True))
    return f"create table orders ({columns})"


def _kind_insert(engine: str, rows: list[tuple[int, float]]) -> str:
    """Orders (id, hours after T0) with their UTC day and wall-clock time, cast as the engine's
    types."""
    day, wall = KIND_TYPES[engine][3:]
    values = []
    for order_id, hours in rows:
        at = (T0 + timedelta(hours=hours)).astimezone(UTC).replace(tzinfo=None)
        values.append(
            f"({order_id}, 'u{order_id % 7}', {order_id * 1.5}, "
            f"cast('{at.date().isoformat()}' as {day}), "
            f"cast('{at.isoformat(sep=' ')}' as {wall}))"
        )
    return f"insert into orders values {', '.join(values)}"


def _kind_syncs() -> dict[str, dict[str, Any]]:
    return {
        name: {**COMMON, **body, "mapping": {"amount": "amount"}}
        for name, body in KIND_SYNCS.items()
    }


def _kind_history(project: Project, change: Any) -> list[dict[str, Any]]:
    """Each run's events (by sync, messageId aside, sorted), rejected rows and read bounds."""
    runs: list[dict[str, Any]] = []
    with TestGateway() as gateway:
        for step in KIND_CHANGES:
            if step is not None:
                change(step)
                continue
            before = len(gateway.events)
            result = _run(project, gateway, list(KIND_SYNCS))
            sent = gateway.events[before:]
            record: dict[str, Any] = {"schema_errors": list(gateway.schema_errors)}
            for name, body in KIND_SYNCS.items():
                record[name] = _record(result, name, body["events"]["added"], sent)
            runs.append(record)
    return runs


@pytest.fixture(scope="module")
def kinds_on_duckdb(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The reference: the history on a DuckDB file, once per module."""
    root = tmp_path_factory.mktemp("kinds_duckdb")
    path = root / "rudder_sync.yaml"
    document = {"warehouse": "warehouse.duckdb", "state": "state", "syncs": _kind_syncs()}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    project = Project(root=root, config_path=path)
    sql(project.warehouse, _kind_ddl("duckdb"))
    runs = _kind_history(project, lambda rows: sql(project.warehouse, _kind_insert("duckdb", rows)))
    # what test_append.py's test_date_and_naive_timestamp_cursors sends, on this history
    sent = {name: [sorted(_amount_ids(run[name]["events"])) for run in runs] for name in KIND_SYNCS}
    assert sent == {
        BY_DAY: [list(range(88, 101)), [101, 102], [103, 104], []],
        BY_WALL: [[99, 100], [101, 102], [104], []],
    }
    late = [row["key"] for row in runs[2][BY_WALL]["rejected"]]
    assert late == ["103"]  # 11.5 h before the wall clock's cursor: reported, not sent
    return runs


@pytest.fixture(
    params=[
        "redshift",
        pytest.param("snowflake", marks=pytest.mark.slow),
        pytest.param("databricks", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ]
)
def cursor_engine(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    yield from ENGINES[request.param](request)


def test_date_and_naive_timestamp_cursors_send_what_duckdb_sends(
    cursor_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    kinds_on_duckdb: list[dict[str, Any]],
) -> None:
    """On Redshift in a database whose time zone is New York (4 hours off UTC in June): the
    bounds (start_at, the stored cursor, the lookback's) are bound as the cursor's own type,
    so the server converts none of them with its session's zone."""
    engine = cursor_engine
    if engine.kind == "redshift":
        pg = request.getfixturevalue("pg")
        pg.sql(f"alter database {pg.name} set timezone to 'America/New_York'")
    engine.sql(_kind_ddl(engine.kind))
    project = engine.write_project(tmp_path, _kind_syncs(), monkeypatch, state_schema=None)
    runs = _kind_history(project, lambda rows: engine.sql(_kind_insert(engine.kind, rows)))
    # the same events (bodies, timestamps), rejected rows, rows read and bounds, run by run
    assert runs == kinds_on_duckdb
