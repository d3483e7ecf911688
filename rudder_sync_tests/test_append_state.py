"""`mode: append` with its state in the warehouse (`state_schema`), on the real PostgreSQL server.

The same history as local append mode, event for event, is test_append_engines.py's
`postgres+state_schema` column. Here: what the warehouse tables hold run by run (cursor, keys,
pending messageIds; no state file on the local disk), a gateway failure mid-delivery then a
rerun, a second run waiting on the lock, a dry run, moving a local append state in and out, and
`dagster job execute` killed with SIGKILL in the diff step, between the delivery and its commit
and mid-delivery, then a rerun. The guard, the dry run and a gateway failure on the vendor
engines are test_append_state_engines.py's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pytest
import yaml

from rudder_sync.cli.state import main as state_command
from rudder_sync.config import parse_config
from rudder_sync.warehouse_state import state as warehouse_state_module

from .gateway import TestGateway
from .helpers import (
    DAGSTER,
    WRITE_KEY,
    asset_metadata,
    cli_env,
    failure_text,
    read_state,
    rudderstack_for,
    run_sync,
    wait_until_idle,
)
from .postgres import SYNC_URL_ENV_VAR, PgDatabase, PgProject, write_pg_project
from .test_append import APPEND_SYNC, SYNC, T0, order_ids
from .test_crash import kill_group

SCHEMA = "rudder_sync"
START = datetime(2024, 6, 1, 12, tzinfo=UTC)  # T0


def _orders(pg: PgDatabase, rows: int = 50) -> None:
    """Orders 1..rows, one an hour, the last at T0."""
    pg.sql(
        "create table orders (order_id integer, user_id text, amount double precision, "
        "created_at timestamptz)",
        f"""insert into orders select i, 'u' || (i % 7), i * 1.5,
               timestamptz '{T0}' - make_interval(hours => {rows} - i)
            from generate_series(1, {rows}) as t(i)""",
    )


def _add(pg: PgDatabase, *orders: tuple[int, float]) -> None:
    """Orders (id, hours after T0)."""
    for order_id, hours in orders:
        pg.sql(
            f"insert into orders values ({order_id}, 'u{order_id % 7}', {order_id * 1.5}, "
            f"timestamptz '{T0}' + make_interval(secs => {hours * 3600}))"
        )


def _project(
    root: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, state: bool = True, **keys: Any
) -> PgProject:
    warehouse = {"state_schema": SCHEMA} if state else {}
    return write_pg_project(root, pg, {SYNC: {**APPEND_SYNC, **keys}}, monkeypatch, **warehouse)


def _table(role: str, sync: str = SYNC) -> str:
    return f'{SCHEMA}."{sync}__{role}"'


def _keys(pg: PgDatabase, role: str) -> set[str]:
    return {str(pk) for (pk,) in pg.sql(f"select __rs_pk from {_table(role)}")}


def _cursors(pg: PgDatabase) -> dict[str, datetime]:
    """The warehouse's `append_cursor`: key -> cursor (text there, read back as PostgreSQL's)."""
    rows = pg.sql(f"select __rs_pk, __rs_cursor::timestamptz from {_table('append_cursor')}")
    return {str(pk): at for pk, at in rows}


def _pending_ids(pg: PgDatabase) -> dict[str, str]:
    return dict(pg.sql(f"select __rs_pk, __rs_message_id from {_table('pending')}"))


def _hours(*hours: float) -> list[datetime]:
    return [START + timedelta(hours=h) for h in hours]


def test_the_whole_state_is_in_the_warehouse_tables_run_by_run(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    project = _project(tmp_path, pg, monkeypatch)
    first = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert gateway.events == []
    assert int(asset_metadata(first, SYNC, "snapshot")["dagster/row_count"]) == 3
    meta = dict(pg.sql(f"select key, value from {_table('meta')}"))
    assert meta["mode"] == "append" and meta["initialized"] == "true"
    assert meta["append_cursor_type"] == "TIMESTAMP WITH TIME ZONE"
    # the baseline: the lookback before the table's end, recorded as delivered, not sent
    assert _keys(pg, "snapshot") == {"48", "49", "50"}
    assert sorted(_cursors(pg).values()) == _hours(-2, -1, 0)
    assert _pending_ids(pg) == {}

    _add(pg, (51, 1), (52, 2))
    second = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [51, 52]
    assert asset_metadata(second, SYNC, "snapshot")["cursor"] == "2024-06-01T12:00:00+00:00"
    # only the rows past the cursor minus lookback left the warehouse, once (at the diff)
    diff = asset_metadata(second, SYNC, "diff")
    assert diff["rows_transferred"] == 5
    assert int(asset_metadata(second, SYNC, "snapshot")["dagster/row_count"]) == 5
    assert _keys(pg, "snapshot") == {"48", "49", "50", "51", "52"}

    third = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert len(gateway.events) == 2  # nothing new, nothing again
    assert asset_metadata(third, SYNC, "snapshot")["cursor"] == "2024-06-01T14:00:00+00:00"
    # keys below the stored cursor minus lookback (12:00) are forgotten: only recent keys stay
    assert _keys(pg, "snapshot") == {"50", "51", "52"}
    assert _cursors(pg) == dict(zip(("50", "51", "52"), _hours(0, 1, 2), strict=True))
    # the rows the snapshot step kept for the diff are in the warehouse too
    assert pg.sql(f"select count(*) from {_table('model')}") == [(3,)]
    assert list(project.state_dir.glob("*.duckdb")) == []  # nothing on the local disk


def test_a_gateway_failure_mid_delivery_then_a_rerun_sends_the_rest_under_the_same_ids(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    project = _project(tmp_path, pg, monkeypatch)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    _add(pg, *((100 + i, float(i)) for i in range(1, 6)))
    refused = {104 * 1.5, 105 * 1.5}
    gateway.reject_events_where(lambda e: e.get("properties", {}).get("amount") in refused)
    run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert sorted(order_ids(gateway.events)) == [101, 102, 103]
    # the accepted ones are committed, the others wait in the warehouse with their messageIds
    pending = _pending_ids(pg)
    assert set(pending) == {"104", "105"}
    assert {"101", "102", "103"} <= _keys(pg, "snapshot")
    gateway.clear_faults()
    before = len(gateway.events)
    rerun = run_sync(project, SYNC, rudderstack_for(gateway.url))
    resent = gateway.events[before:]
    assert {str(order_ids([e])[0]): e["messageId"] for e in resent} == pending
    # the cursor had moved with the accepted deliveries only: order 103 (T0+3h)
    assert asset_metadata(rerun, SYNC, "snapshot")["cursor"] == "2024-06-01T15:00:00+00:00"
    assert _pending_ids(pg) == {}
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert len(gateway.events) == 5


def test_the_guard_holds_back_and_a_rejected_event_is_quarantined_under_one_id(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    project = _project(tmp_path, pg, monkeypatch, max_attempts=2, guard={"max_events": 3})
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    _add(pg, *((100 + i, float(i)) for i in range(1, 6)))
    gateway.reject_events_where(lambda e: e.get("properties", {}).get("amount") == 101 * 1.5)
    held = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
    assert gateway.events == []
    assert "5 events to send > max_events 3" in "\n".join(held.run_logs)
    run_sync(project, SYNC, rudderstack_for(gateway.url), approve_large_change=True)
    assert sorted(order_ids(gateway.events)) == [102, 103, 104, 105]
    run_sync(project, SYNC, rudderstack_for(gateway.url))  # order 101's second attempt
    result = run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert asset_metadata(result, SYNC, "events")["quarantined"] == 1
    tries = pg.sql(
        f"select distinct message_id, attempt from {_table('delivery_log')} "
        "where pk = '101' and status = 'rejected'"
    )
    assert sorted(attempt for _, attempt in tries) == [1, 2] and len({i for i, _ in tries}) == 1
    gateway.clear_faults()
    run_sync(project, SYNC, rudderstack_for(gateway.url), diff_config={"retry_quarantined": True})
    sent = [e for e in gateway.events if e["properties"]["amount"] == 101 * 1.5]
    assert [e["messageId"] for e in sent] == [tries[0][0]]
    assert _pending_ids(pg) == {}


def test_a_second_run_waits_for_the_lock_then_fails_naming_it(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    project = _project(tmp_path, pg, monkeypatch)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    _add(pg, (51, 1))
    monkeypatch.setattr(warehouse_state_module, "LOCK_WAIT_SECONDS", 1.0)
    holder = adbc.connect(pg.url)  # another run of the same sync, holding its lock
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "select pg_advisory_lock(hashtextextended($1, 0))", [f"rudder_sync/{SCHEMA}/{SYNC}"]
            )
            cursor.fetchall()
        started = time.monotonic()
        waited = run_sync(project, SYNC, rudderstack_for(gateway.url), raise_on_error=False)
        assert not waited.success and time.monotonic() - started >= 1.0
        message = failure_text(waited)
        assert f"sync '{SYNC}'" in message and "another run of this sync holds its state" in message
        assert gateway.events == []
    finally:
        holder.close()
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events) == [51]


def test_dry_runs_send_nothing_and_commit_nothing(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    project = _project(tmp_path, pg, monkeypatch)
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    _add(pg, (51, 1), (52, 2))
    # run config dry_run: the sync's state, whose changes stay pending (nothing committed)
    dry = run_sync(project, SYNC, rudderstack_for(gateway.url), dry_run=True)
    assert gateway.events == []
    assert asset_metadata(dry, SYNC, "diff")["added"] == 2
    assert set(_pending_ids(pg)) == {"51", "52"}
    assert _keys(pg, "snapshot") == {"48", "49", "50"}
    # a dry run without a destination: its own tables (<sync>__dry_run__*), the sync's untouched
    pending = _pending_ids(pg)
    run_sync(project, SYNC, rudderstack_for(None))
    assert pg.sql(f"select count(*) from {_table('meta', f'{SYNC}__dry_run')}") != [(0,)]
    assert _pending_ids(pg) == pending
    run_sync(project, SYNC, rudderstack_for(gateway.url))
    assert sorted(order_ids(gateway.events)) == [51, 52]
    assert {str(order_ids([e])[0]): e["messageId"] for e in gateway.events} == pending


def test_moving_a_local_append_state_in_and_out_keeps_cursor_keys_and_pending_ids(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    _orders(pg)
    local = _project(tmp_path, pg, monkeypatch, state=False)
    run_sync(local, SYNC, rudderstack_for(gateway.url))
    _add(pg, (101, 1), (102, 2), (103, 3))
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        local, SYNC, rudderstack_for(gateway.url, retry_max_seconds=0.2), raise_on_error=False
    )
    assert not failed.success
    gateway.clear_faults()
    state_file = local.state_dir / f"{SYNC}.duckdb"
    with read_state(state_file) as conn:
        pending = dict(conn.execute("select __rs_pk, __rs_message_id from pending").fetchall())
    assert set(pending) == {"101", "102", "103"}

    # state_schema on: the next run moves the local state in, then delivers what was pending
    moved = _project(tmp_path, pg, monkeypatch)
    before = len(gateway.events)
    first_in = run_sync(moved, SYNC, rudderstack_for(gateway.url))
    sent = gateway.events[before:]
    assert {str(order_ids([e])[0]): e["messageId"] for e in sent} == pending
    assert asset_metadata(first_in, SYNC, "snapshot")["cursor"] == "2024-06-01T12:00:00+00:00"
    assert {"48", "49", "50"} <= _keys(pg, "snapshot")
    with read_state(state_file) as conn:
        assert conn.execute("select value from meta where key = 'moved_to'").fetchone()
    _add(pg, (104, 4))
    run_sync(moved, SYNC, rudderstack_for(gateway.url))
    assert order_ids(gateway.events[before + 3 :]) == [104]

    # and out: the command copies it back; without state_schema the local state carries on
    monkeypatch.setenv("RUDDER_SYNC_CONFIG", str(moved.config_path))
    assert state_command(["to-local", SYNC]) == 0
    back = _project(tmp_path, pg, monkeypatch, state=False)
    _add(pg, (105, 5))
    out = run_sync(back, SYNC, rudderstack_for(gateway.url))
    assert asset_metadata(out, SYNC, "snapshot")["cursor"] == "2024-06-01T16:00:00+00:00"
    assert order_ids(gateway.events[before + 4 :]) == [105]


def test_append_with_state_schema_loads_on_every_engine_with_a_state_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No engine refuses the pair any more (each ran the history of test_append_engines.py)."""
    monkeypatch.setenv("DATABRICKS_TOKEN", "not-used")
    for warehouse in (
        {"type": "postgres", "url": "postgresql://h/db"},
        {
            "type": "databricks",
            "server_hostname": "dbc-1.cloud.databricks.com",
            "http_path": "/sql/1.0/warehouses/abc",
            "access_token": {"env": "DATABRICKS_TOKEN"},
            "catalog": "main",
            "schema": "analytics",
        },
    ):
        config = parse_config(
            {"warehouse": {**warehouse, "state_schema": "rs"}, "syncs": {SYNC: APPEND_SYNC}}
        )
        assert config.syncs[SYNC].mode == "append"


# -- SIGKILL with the state in the warehouse, then a rerun -----------------------------------------

CLEAN = "rudder_sync_clean"  # the same sync's state in a run that is not killed
NEW_ORDERS = 3_000  # one a second after T0: all of them within the 2h lookback
REQUEST_KB = 16  # ~49 events a request: ~62 requests
FAST_REQUESTS = 20  # then one every 2 s a connection: a delivery commit (every 5 s) lands mid-way
# What a clean run and a killed run followed by a rerun must agree on, of the meta.
CURSOR_META = (
    "mode",
    "initialized",
    "append_cursor_kind",
    "append_cursor_type",
    "append_low",
    "append_below",
)
# Where the killed run is held (a write to that table waits for the test's lock), by kill point:
# - in the diff step, its pending changes, rejected rows and kept keys written (not committed),
#   its write of `append_cursor` waiting: the last table the diff writes back;
# - in the events step, every event accepted by the gateway, the first delivery commit having
#   moved the keys into `snapshot` (not committed), its write of the delivery log waiting: the
#   keys, the log and the end of pending commit in one transaction, so there is no boundary
#   between the delivery's commit and the keys' (the cursor is the largest committed key's).
HELD_AT = {"diff_written": "append_cursor", "delivered_not_committed": "delivery_log"}


def _more_orders(pg: PgDatabase, count: int) -> None:
    """Orders 1001..1000+count, one a second after T0."""
    pg.sql(
        f"""insert into orders select 1000 + i, 'u' || (i % 7), (1000 + i) * 1.5,
               timestamptz '{T0}' + make_interval(secs => i)
            from generate_series(1, {count}) as t(i)"""
    )


def _state_of(pg: PgDatabase, schema: str) -> dict[str, Any]:
    """What a sync's state in ``schema`` holds of its place: the keys kept (snapshot), their
    cursors, pending changes, rejected rows and the cursor's meta (no salt, times or IDs)."""

    def table(role: str) -> str:
        return f'{schema}."{SYNC}__{role}"'

    meta = dict(pg.sql(f"select key, value from {table('meta')}"))
    return {
        "snapshot": sorted(
            pg.sql(
                "select __rs_pk, __rs_hash, __rs_version, __rs_deleted, __rs_user_id, "
                f"__rs_props from {table('snapshot')}"
            )
        ),
        "append_cursor": sorted(
            pg.sql(f"select __rs_pk, __rs_cursor from {table('append_cursor')}")
        ),
        "pending": sorted(pg.sql(f"select __rs_pk, __rs_change from {table('pending')}")),
        "rejected_rows": sorted(pg.sql(f"select __rs_pk, reason from {table('rejected_rows')}")),
        "meta": {key: meta.get(key) for key in CURSOR_META},
    }


def _waiting_on(pg: PgDatabase, role: str) -> bool:
    """Whether a session waits for a lock on the sync's table (the killed run, held there)."""
    rows = pg.sql(
        "select count(*) from pg_locks where not granted "
        f"and relation = to_regclass('{_table(role)}')"
    )
    return bool(rows[0][0])


def _delivered(pg: PgDatabase) -> set[int]:
    rows = pg.sql(f"select pk from {_table('delivery_log')} where status = 'delivered'")
    return {int(pk) for (pk,) in rows}


@pytest.mark.slow  # a Dagster CLI run in a subprocess, killed, then two more runs: ~25 s each
@pytest.mark.parametrize("point", ["diff_written", "delivered_not_committed", "after_a_commit"])
def test_sigkill_then_a_rerun_sends_every_row_once_and_ends_where_a_clean_run_ends(
    point: str, tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster job execute` of an append sync with its state in PostgreSQL, SIGKILLed at a
    point that matters: held there by a lock the test takes on one of the state's tables (a
    real wait in the server, no code of ours patched), or, mid-delivery, once a delivery
    commit has landed while the gateway answers slowly. Then a rerun: every new row delivered,
    a repeat only under its messageId with the same body, and the state where the same sync's
    clean run (its state in another schema) ends, then again after one more run each."""
    _orders(pg)
    body = {**APPEND_SYNC, "guard": {"max_events": None}}
    killed_project = _project(tmp_path / "killed", pg, monkeypatch, guard={"max_events": None})
    clean_project = write_pg_project(
        tmp_path / "clean", pg, {SYNC: body}, monkeypatch, state_schema=CLEAN
    )
    document = yaml.safe_load(killed_project.config_path.read_text())
    document["delivery"] = {"max_request_kb": REQUEST_KB}
    killed_project.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    new = set(range(1001, 1001 + NEW_ORDERS))
    with (
        TestGateway(validate_schema=False, keep_bodies=False) as gateway,
        TestGateway(validate_schema=False, keep_bodies=False) as reference,
    ):
        run_sync(killed_project, SYNC, rudderstack_for(gateway.url))  # the baselines
        run_sync(clean_project, SYNC, rudderstack_for(reference.url))
        _more_orders(pg, NEW_ORDERS)
        run_sync(clean_project, SYNC, rudderstack_for(reference.url))
        assert set(order_ids(reference.events)) == new
        before = _state_of(pg, SCHEMA)

        home = tmp_path / "dagster_home"
        home.mkdir()
        env = cli_env(
            RUDDER_SYNC_CONFIG=str(killed_project.config_path),
            RUDDERSTACK_DATA_PLANE_URL=gateway.url,
            RUDDERSTACK_WRITE_KEY=WRITE_KEY,
            DAGSTER_HOME=str(home),
            **{SYNC_URL_ENV_VAR: pg.url},
        )
        command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC]
        holder = adbc.connect(pg.url)  # autocommit off: a lock lasts until the rollback
        try:
            if point in HELD_AT:
                with holder.cursor() as cursor:  # reads go on; the run's write there waits
                    cursor.execute(f"lock table {_table(HELD_AT[point])} in share mode")
            else:
                for _ in range(FAST_REQUESTS):
                    gateway.delay_next(0.0)
                gateway.delay_next(2.0, times=1_000)
            log = (tmp_path / "job.log").open("wb")
            killed = subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            try:
                deadline = time.monotonic() + 120
                while not (_waiting_on(pg, HELD_AT[point]) if point in HELD_AT else _delivered(pg)):
                    assert killed.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, f"the run never reached {point}"
                    time.sleep(0.1)
            finally:
                kill_group(killed)
            assert killed.returncode == -signal.SIGKILL
        finally:
            holder.rollback()  # the killed run's statement ends, then its session: rolled back
            holder.close()
        wait_until_idle(gateway, timeout=15)  # requests on the wire still land, unanswered
        gateway.clear_faults()
        sent_before = {e["messageId"]: e for e in gateway.events}
        committed = _delivered(pg)
        pending = _pending_ids(pg)
        if point == "diff_written":
            # nothing sent; the diff's writes rolled back: the state as before the run
            assert sent_before == {} and committed == set()
            assert _state_of(pg, SCHEMA) == before
        elif point == "delivered_not_committed":
            # accepted (all of them unless a 5 s commit came first), nothing committed: all
            # pending, those sent with the IDs they were sent under; the keys as before the run
            sent = {order_ids([e])[0]: i for i, e in sent_before.items()}
            assert sent and committed == set() and set(pending) == {str(i) for i in new}
            assert {order: pending[str(order)] for order in sent} == sent
            assert _state_of(pg, SCHEMA)["snapshot"] == before["snapshot"]
        else:
            assert 0 < len(committed) < NEW_ORDERS, "the kill did not land mid-delivery"
            assert committed <= set(order_ids(list(sent_before.values())))
            assert set(pending) == {str(i) for i in new - committed}

        stored = len(gateway.events)
        run_sync(killed_project, SYNC, rudderstack_for(gateway.url))
        rerun = order_ids(gateway.events[stored:])
        assert len(rerun) == len(set(rerun)) and set(rerun) == new - committed
        by_order: dict[int, set[str]] = {}
        for event in gateway.events:
            by_order.setdefault(order_ids([event])[0], set()).add(event["messageId"])
            if event["messageId"] in sent_before:
                assert event == sent_before[event["messageId"]]  # a repeat: same body, time
        assert set(by_order) == new and all(len(ids) == 1 for ids in by_order.values())
        assert _pending_ids(pg) == {}
        if not committed:  # the rerun's cursor is the clean run's: so is its whole place
            assert _state_of(pg, SCHEMA) == _state_of(pg, CLEAN)
        # one more run each, nothing new: the same place whatever the killed run had committed
        sent, sent_clean = len(gateway.events), len(reference.events)
        run_sync(killed_project, SYNC, rudderstack_for(gateway.url))
        run_sync(clean_project, SYNC, rudderstack_for(reference.url))
        assert (len(gateway.events), len(reference.events)) == (sent, sent_clean)
    assert _state_of(pg, SCHEMA) == _state_of(pg, CLEAN)
    # kept: the keys within the lookback before the cursor (T0 + 50 min): orders 49, 50 and on
    assert _keys(pg, "snapshot") == {"49", "50"} | {str(i) for i in new}
