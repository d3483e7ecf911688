"""`mode: append`: one Track event per new row of an append-only table, without a full diff.

Real Dagster runs (in process, and `dagster job execute` killed with SIGKILL), real DuckDB files,
the real PostgreSQL server when it is there, and the test gateway answering like RudderStack.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from rudder_sync.config import parse_config
from rudder_sync.errors import ConfigError

from .gateway import TestGateway
from .helpers import (
    DAGSTER,
    WRITE_KEY,
    Project,
    asset_metadata,
    failure_text,
    read_state,
    rudderstack_for,
    run_sync,
    sql,
    wait_until_idle,
    write_project,
)
from .postgres import PgDatabase, write_pg_project

SYNC = "order_completed"
T0 = "2024-06-01 12:00:00+00"  # the last order of the seeded table
ORDERS_DDL = """
create or replace table orders (
    order_id integer, user_id varchar, amount double, created_at timestamptz
)
"""
APPEND_SYNC: dict[str, Any] = {
    "model": "select order_id, user_id, amount, created_at from orders",
    "mode": "append",
    "cursor": "created_at",
    "lookback": "2h",
    "primary_key": "order_id",
    "type": "track",
    "user_id": "user_id",
    "mapping": {"amount": "amount"},
    "events": {"added": "Order Completed"},
    "timestamp": "created_at",
}


def orders_project(root: Path, rows: int = 100, **keys: Any) -> Project:
    """Orders 1..rows, one an hour, the last at T0."""
    project = write_project(root, {SYNC: {**APPEND_SYNC, **keys}}, users=0)
    with duckdb.connect(str(project.warehouse)) as conn:
        conn.execute(ORDERS_DDL)
        conn.execute(
            f"""
            insert into orders select i, 'u' || (i % 7), i * 1.5,
                   timestamptz '{T0}' - to_hours({rows} - i)
            from range(1, {rows} + 1) t(i)
            """
        )
    return project


def add_orders(project: Project, *orders: tuple[int, str]) -> None:
    """Orders (id, hours after T0: may be negative, a late row)."""
    for order_id, hours in orders:
        sql(
            project.warehouse,
            f"insert into orders values ({order_id}, 'u{order_id % 7}', {order_id * 1.5}, "
            f"timestamptz '{T0}' + to_seconds({hours} * 3600.0))",
        )


def order_ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(event["properties"]["amount"] / 1.5) for event in events]


def rows_read(result: Any) -> int:
    return int(asset_metadata(result, SYNC, "snapshot")["dagster/row_count"])


def test_first_run_sends_nothing_then_each_new_row_once(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(tmp_path)
    first = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert gateway.events == []
    # the first run reads only the lookback before the table's current end (2h: 3 rows)
    assert rows_read(first) == 3
    assert asset_metadata(first, SYNC, "snapshot")["first_run"] is True

    add_orders(project, (101, "1"), (102, "2"), (103, "2"))
    second = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [101, 102, 103]
    event = next(e for e in gateway.events if e["properties"]["amount"] == 101 * 1.5)
    assert event["event"] == "Order Completed" and event["type"] == "track"
    assert event["userId"] == "u3" and event["timestamp"] == "2024-06-01T13:00:00.000000Z"
    # read: from the stored cursor minus 2h (baseline rows 98-100) plus the 3 new ones
    assert rows_read(second) == 6
    assert asset_metadata(second, SYNC, "snapshot")["cursor"] == "2024-06-01T12:00:00+00:00"

    third = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert len(gateway.events) == 3  # nothing new, nothing again
    # the band below this run's bound that the last run read (T0-2h..T0) holds only known keys
    # (counted in the warehouse): it is not read again
    meta = asset_metadata(third, SYNC, "snapshot")
    assert meta["late_band_rows"] == meta["late_band_known"] == 2
    assert rows_read(third) == 4  # T0 .. T0+2h
    # the state keeps no per-row snapshot: only the keys within the lookback (and the band
    # the next run checks for late rows)
    with read_state(project.state_dir / f"{SYNC}.duckdb") as conn:
        kept = conn.execute("select count(*) from snapshot").fetchone()[0]
    assert kept <= 6


def test_the_filter_is_a_bound_parameter_around_the_model(tmp_path: Path) -> None:
    from rudder_sync.append import FROM_PARAM, AppendStateBackend, Bounds
    from rudder_sync.warehouses import build_warehouse

    project = orders_project(tmp_path, rows=3)
    config = project.config()
    backend = AppendStateBackend(
        config.syncs[SYNC], build_warehouse(config.warehouse), config.state
    )
    from datetime import UTC, datetime

    at = datetime(2024, 6, 1, 11, tzinfo=UTC)
    sql_text, params = backend._filtered(Bounds(at, at, None, None, first=False))
    assert f"${FROM_PARAM}" in sql_text and "2024" not in sql_text
    assert params == {FROM_PARAM: at}
    assert sql_text.startswith("select * from (select order_id")


def test_late_rows_within_the_lookback_are_sent_once(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "3"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [101]
    # 1h before the stored cursor (T0+3h): late, but within the 2h lookback
    add_orders(project, (102, "2"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [101, 102]


def test_too_late_and_null_cursor_rows_are_reported_by_key(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "5"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))  # cursor T0+5h, lower bound T0+3h
    # next run reads from T0+3h (the band the last run left) up: an order at T0+2.5h is
    # before the stored cursor minus lookback, but in the band: found, and reported
    add_orders(project, (102, "10"), (103, "2.5"))
    sql(project.warehouse, "insert into orders values (104, 'u1', 1, null)")
    result = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [101, 102]
    diff = asset_metadata(result, SYNC, "diff")
    reasons = {row["key"]: row["reason"] for row in diff["rejected_sample"]}
    assert reasons["103"].startswith("arrived too late: cursor 2024-06-01 14:30:00+00")
    assert reasons["104"].startswith("null cursor (column created_at)")
    assert diff["too_late_rows"] == 1
    snapshot = asset_metadata(result, SYNC, "snapshot")
    assert snapshot["late_band_rows"] == snapshot["late_band_known"] + 1  # so the band was read
    assert any("103" in line and "too late" in line for line in result.run_logs)


def test_a_row_arriving_below_the_band_is_counted_and_reported_never_dropped_silently(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """Below the band the state still knows, keys are gone (no per-row snapshot): a row landing
    there is found by a count in the warehouse, reported once, and not sent."""
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "5"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))  # cursor T0+5h, lower bound T0+3h
    add_orders(project, (102, "-30"), (103, "-40"), (104, "6"))  # two orders days late
    result = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [101, 104]
    diff = asset_metadata(result, SYNC, "diff")
    reasons = {row["key"]: row["reason"] for row in diff["rejected_sample"]}
    assert reasons["(unknown)"].startswith("arrived too late: 2 row(s) with a cursor before ")
    assert diff["too_late_rows"] == 2
    assert asset_metadata(result, SYNC, "snapshot")["late_below_band"] == 2
    # Reported once: the next run's count includes them.
    again = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert asset_metadata(again, SYNC, "diff")["too_late_rows"] == 0
    assert len(gateway.events) == 2


def test_duplicate_rows_of_a_key_send_one_event(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "1"), (101, "1"), (102, "1"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    # the same order again in a later run (a re-inserted row), within the lookback
    add_orders(project, (101, "1.5"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [101, 102]


def test_gateway_failure_then_retry_sends_the_same_events(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, *((100 + i, str(i)) for i in range(1, 6)))
    # the gateway keeps the events but the connection drops before the answer, every time
    gateway.cut_next(times=1000, after_storing=True)
    failed = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert not failed.success
    wait_until_idle(gateway)
    gateway.clear_faults()
    tried = {e["messageId"]: e for e in gateway.events}
    assert sorted(order_ids(list(tried.values()))) == [101, 102, 103, 104, 105]
    before = len(gateway.events)
    retry = run_sync(project, SYNC, rudderstack_for(gateway.url))
    # nothing was acknowledged, so the cursor did not move: the retry read from T0 - 2h
    assert asset_metadata(retry, SYNC, "snapshot")["cursor"] == "2024-06-01T12:00:00+00:00"
    resent = gateway.events[before:]
    assert sorted(order_ids(resent)) == [101, 102, 103, 104, 105]
    for event in resent:  # the same messageIds, bodies and timestamps
        assert event == tried[event["messageId"]]
    after = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert len(gateway.events) == before + 5
    assert asset_metadata(after, SYNC, "snapshot")["cursor"] == "2024-06-01T17:00:00+00:00"


def test_a_rejected_event_is_retried_then_quarantined_without_holding_the_cursor(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(tmp_path, max_attempts=2)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "1"), (102, "1.5"))
    gateway.reject_events_where(lambda e: e.get("properties", {}).get("amount") == 101 * 1.5)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    # the cursor moves on past order 101 (T0+1h) and its lookback: it stays pending all the same
    add_orders(project, (103, "5"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    result = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [102, 103]
    assert asset_metadata(result, SYNC, "events")["quarantined"] == 1
    assert asset_metadata(result, SYNC, "snapshot")["cursor"] == "2024-06-01T17:00:00+00:00"
    with read_state(project.state_dir / f"{SYNC}.duckdb") as conn:
        tries = conn.execute(
            "select distinct message_id, count(*) over () from delivery_log "
            "where pk = '101' and status = 'rejected'"
        ).fetchall()
    assert len(tries) == 1 and tries[0][1] == 2  # two attempts, one messageId
    gateway.clear_faults()
    run_sync(project, SYNC, rudderstack_for(gateway.url), diff_config={"retry_quarantined": True})
    sent = [e for e in gateway.events if e["properties"]["amount"] == 101 * 1.5]
    assert [e["messageId"] for e in sent] == [tries[0][0]]


def test_reset_baseline_records_without_sending_and_resync_is_refused(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "1"), (102, "2"))
    refused = run_sync(
        project,
        SYNC,
        rudderstack_for(gateway.url),
        raise_on_error=False,
        approve_large_change=True,
        diff_config={"resync": True},
    )
    assert "run config resync is for 'mode: diff' syncs" in failure_text(refused)
    run_sync(
        project,
        SYNC,
        rudderstack_for(gateway.url),
        approve_large_change=True,
        diff_config={"reset_baseline": True},
    )
    assert gateway.events == []
    add_orders(project, (103, "3"))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [103]


def test_guard_holds_back_too_many_events(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path, guard={"max_events": 3})
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, *((100 + i, str(i)) for i in range(1, 6)))
    held = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert gateway.events == []
    assert "5 events to send > max_events 3" in "\n".join(held.run_logs)
    run_sync(project, SYNC, rudderstack_for(gateway.url), approve_large_change=True)
    assert len(gateway.events) == 5


def test_dry_run_sends_nothing_and_moves_nothing(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    add_orders(project, (101, "1"), (102, "2"))
    dry = run_sync(project, SYNC, rudderstack_for(gateway.url), dry_run=True)
    assert gateway.events == []
    assert asset_metadata(dry, SYNC, "events")["status"] == "dry_run"
    assert asset_metadata(dry, SYNC, "diff")["added"] == 2
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [101, 102]


def test_start_at_and_send_initial_results(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path / "a", start_at="2024-06-01T10:30:00Z")
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [99, 100]  # 11:00 and 12:00
    everything = orders_project(tmp_path / "b", rows=10, send_initial_results=True)
    run_sync(everything, SYNC, rudderstack_for(gateway.url))
    assert len(gateway.events) == 12


def test_a_numeric_cursor_with_a_numeric_lookback(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path, cursor="order_id", lookback=2)
    first = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert rows_read(first) == 3  # orders 98..100
    add_orders(project, (101, "1"), (102, "1"))
    second = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [101, 102]
    assert asset_metadata(second, SYNC, "snapshot")["read_from"] == "98"
    document = yaml.safe_load(project.config_path.read_text())
    document["syncs"][SYNC]["lookback"] = "2h"
    project.config_path.write_text(yaml.safe_dump(document))
    wrong = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert "key 'lookback' is a duration but column 'order_id'" in failure_text(wrong)


@pytest.mark.parametrize(
    ("cursor_sql", "lookback", "start_at", "first_ids", "stored", "late"),
    [
        # a date cursor: whole days, a lookback in days, start_at a date (its midnight)
        (
            "created_at::date",
            "1d",
            "2024-06-01",
            list(range(88, 101)),
            "2024-06-01T00:00:00",
            ("0.5", "2024-06-01T00:00:00.000000Z"),  # the day before the cursor's
        ),
        # a timestamp without time zone: compared as UTC wall time, start_at given with a zone
        (
            "(created_at at time zone 'UTC')::timestamp",
            "2h",
            "2024-06-01T10:30:00Z",
            [99, 100],
            "2024-06-01T12:00:00",
            ("13.5", "2024-06-02T01:30:00.000000Z"),  # 30 min before the cursor
        ),
    ],
    ids=["date", "naive_timestamp"],
)
def test_date_and_naive_timestamp_cursors(
    tmp_path: Path,
    gateway: TestGateway,
    cursor_sql: str,
    lookback: str,
    start_at: str,
    first_ids: list[int],
    stored: str,
    late: tuple[str, str],
) -> None:
    project = orders_project(
        tmp_path,
        model=f"select order_id, user_id, amount, {cursor_sql} as at from orders",
        cursor="at",
        timestamp="at",
        lookback=lookback,
        start_at=start_at,
    )
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == first_ids
    # the next day's orders once; a row back-dated within the lookback once; nothing twice
    add_orders(project, (101, "13"), (102, "14"))
    second = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert asset_metadata(second, SYNC, "snapshot")["cursor"] == stored  # the first run's end
    add_orders(project, (103, late[0]))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    sent = order_ids(gateway.events)
    assert sorted(sent) == [*first_ids, 101, 102, 103] and len(sent) == len(set(sent))
    event = next(e for e in gateway.events if e["properties"]["amount"] == 103 * 1.5)
    assert event["timestamp"] == late[1]


def test_partitioned_windows_are_cursor_ranges_and_rows_in_no_window_are_reported(
    tmp_path: Path, gateway: TestGateway
) -> None:
    # orders from 2024-05-30 13:00 (11 of them before the first window) to 2024-06-01 12:00
    project = orders_project(
        tmp_path, rows=48, partitions={"start": "2024-05-31", "cadence": "daily"}
    )
    sql(project.warehouse, "insert into orders values (104, 'u1', 1, null), (105, 'u2', 2, null)")
    result = run_sync(project, SYNC, rudderstack_for(gateway.url), partition_key="2024-05-31")
    # the orders of 2024-05-31 (UTC): hours 0..23
    assert len(gateway.events) == 24
    assert all(e["timestamp"].startswith("2024-05-31") for e in gateway.events)
    snapshot = asset_metadata(result, SYNC, "snapshot")
    assert snapshot["dagster/row_count"] == 24
    assert snapshot["null_cursor_rows"] == 2 and snapshot["rows_before_first_window"] == 11
    # the rows no window reads are rejected rows of the sync, by key (null cursor) or counted
    diff = asset_metadata(result, SYNC, "diff")
    assert diff["rejected_rows"] == 3
    reasons = {row["key"]: row["reason"] for row in diff["rejected_sample"]}
    assert set(reasons) == {"104", "105", "(before start)"}
    assert reasons["104"].startswith("null cursor (column created_at): cannot tell when")
    assert reasons["(before start)"].startswith(
        "before the first window: 11 row(s) with a cursor before 2024-05-31T00:00:00+00:00"
    )
    assert any("104" in line and "null cursor" in line for line in result.run_logs)
    first_ids = sorted(e["messageId"] for e in gateway.events)
    again = run_sync(project, SYNC, rudderstack_for(gateway.url), partition_key="2024-05-31")
    assert sorted(e["messageId"] for e in gateway.events[24:]) == first_ids  # a re-run: same IDs
    # reported while they exist: a null cursor filled in puts the row in its window
    sql(project.warehouse, "update orders set created_at = timestamptz '2024-05-31 05:30+00' "
        "where order_id = 104")  # fmt: skip
    assert asset_metadata(again, SYNC, "diff")["rejected_rows"] == 3
    run_sync(project, SYNC, rudderstack_for(gateway.url), partition_key="2024-05-31")
    assert len(gateway.events) == 24 * 3 + 1
    with read_state(project.state_dir / f"{SYNC}.duckdb") as conn:
        left = conn.execute("select __rs_pk from rejected_rows order by 1").fetchall()
    assert left == [("(before start)",), ("105",)]


# -- load-time errors, one line each ---------------------------------------------------------------


def load(sync: dict[str, Any], warehouse: Any = "warehouse.duckdb") -> None:
    parse_config({"warehouse": warehouse, "syncs": {SYNC: sync}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cursor": None}, "key 'cursor' is missing"),
        ({"events": {"added": "A", "changed": "B"}}, "key 'events' sends added, changed"),
        ({"lookback": "soon"}, "key 'lookback'"),
        ({"lookback": -1}, "key 'lookback': must not be negative"),
        ({"mode": "stream"}, "key 'mode'"),
        ({"mode": "diff"}, "key 'cursor' is for 'mode: append' syncs only"),
        ({"start_at": "2024-01-01", "send_initial_results": True}, "keys 'start_at' and"),
        ({"lookback": 100, "start_at": "2024-01-01T00:00:00Z"}, "key 'lookback' is a number"),
    ],
)
def test_config_mistakes_fail_at_load_in_one_line(change: dict[str, Any], message: str) -> None:
    sync = {k: v for k, v in {**APPEND_SYNC, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        load(sync)
    text = str(caught.value)
    assert message in text and f"sync '{SYNC}'" in text and "Fix:" in text
    assert "\n" not in text


def test_a_state_written_by_the_other_mode_is_refused(tmp_path: Path, gateway: TestGateway) -> None:
    project = orders_project(tmp_path)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    document = yaml.safe_load(project.config_path.read_text())
    body = document["syncs"][SYNC]
    for key in ("mode", "cursor", "lookback"):
        del body[key]
    project.config_path.write_text(yaml.safe_dump(document))
    result = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert "was written by 'mode: append'" in failure_text(result)
    assert gateway.events == []
    # and back: a diff sync's state is refused by the append sync it became
    (project.state_dir / f"{SYNC}.duckdb").unlink()
    run_sync(project, SYNC, rudderstack_for(gateway.url))  # a diff sync's baseline
    body.update(mode="append", cursor="created_at", lookback="2h")
    project.config_path.write_text(yaml.safe_dump(document))
    result = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert "was written by 'mode: diff'" in failure_text(result)
    assert gateway.events == []


# -- PostgreSQL: the bound is a parameter the server binds ----------------------------------------


def test_append_on_postgres(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.sql(
        "create table orders (order_id integer, user_id text, amount double precision, "
        "created_at timestamptz)",
        f"""insert into orders select i, 'u' || i, i * 1.5,
               timestamptz '{T0}' - make_interval(hours => 50 - i)
            from generate_series(1, 50) as t(i)""",
    )
    project = write_pg_project(tmp_path, pg, {SYNC: APPEND_SYNC}, monkeypatch)
    first = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert gateway.events == [] and rows_read(first) == 3
    pg.sql(
        f"insert into orders values (51, 'u51', 76.5, timestamptz '{T0}' + interval '1 hour')",
        f"insert into orders values (52, 'u52', 78, timestamptz '{T0}' + interval '2 hours')",
    )
    second = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [51, 52]
    # the server filtered: the 2h before the stored cursor and the two new rows, of 52
    assert rows_read(second) == 5


def test_a_partitioned_append_sync_on_a_numeric_cursor_fails_naming_the_fix(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = orders_project(
        tmp_path, rows=3, cursor="order_id", lookback=0,
        partitions={"start": "2024-05-30", "cadence": "daily"},
    )  # fmt: skip
    failed = run_sync(
        project,
        SYNC,
        rudderstack_for(gateway.url),
        raise_on_error=False,
        partition_key="2024-05-31",
    )
    assert "key 'partitions' makes windows of time, but column 'order_id'" in failure_text(failed)
    assert gateway.events == []


# -- SIGKILL in the events step, then a rerun -----------------------------------------------------


@pytest.mark.slow
def test_sigkill_in_the_events_step_then_rerun_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    with TestGateway(validate_schema=False, keep_bodies=False) as gateway:
        project = orders_project(tmp_path, rows=10)
        run_sync(project, SYNC, rudderstack_for(gateway.url))
        sql(
            project.warehouse,
            f"""insert into orders select 1000 + i, 'u' || (i % 7), (1000 + i) * 1.5,
                   timestamptz '{T0}' + to_microseconds(i * 1000)
                from range(1, 30001) t(i)""",
        )
        document = yaml.safe_load(project.config_path.read_text())
        document["delivery"] = {"max_request_kb": 16}
        document["syncs"][SYNC]["guard"] = {"max_events": None}
        project.config_path.write_text(yaml.safe_dump(document))
        home = tmp_path / "dagster_home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_"))}
        env.update(
            RUDDER_SYNC_CONFIG=str(project.config_path),
            RUDDERSTACK_DATA_PLANE_URL=gateway.url,
            RUDDERSTACK_WRITE_KEY=WRITE_KEY,
            DAGSTER_HOME=str(home),
        )
        command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC]
        for _ in range(200):
            gateway.delay_next(0.0)
        gateway.delay_next(2.0, times=1000)
        with (tmp_path / "killed.log").open("wb") as log:
            killed = subprocess.Popen(
                command,
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            import time

            deadline = time.monotonic() + 120
            while sum(r.status == 200 for r in gateway.requests) < 200:
                assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(1.0)
        finally:
            if killed.poll() is None:
                os.killpg(killed.pid, signal.SIGKILL)
            killed.wait(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        wait_until_idle(gateway, timeout=15)
        gateway.clear_faults()
        before = {e["messageId"]: e for e in gateway.events}
        assert 0 < len({int(e["properties"]["amount"] / 1.5) for e in before.values()}) < 30_000

        rerun = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
        )
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
        by_order: dict[int, set[str]] = {}
        for event in gateway.events:
            by_order.setdefault(round(event["properties"]["amount"] / 1.5), set()).add(
                event["messageId"]
            )
            if event["messageId"] in before:
                assert event == before[event["messageId"]]  # a repeat is byte-identical
        assert set(by_order) == {1000 + i for i in range(1, 30001)}  # nothing lost
        assert all(len(ids) == 1 for ids in by_order.values())  # repeats: same messageId only
        with read_state(project.state_dir / f"{SYNC}.duckdb") as conn:
            assert conn.execute("select count(*) from pending").fetchone()[0] == 0
