"""In-warehouse state (`state_schema`) on every engine that keeps it: the scenario table.

Each scenario runs on PostgreSQL (ADBC), Snowflake (fakesnow's server, the real connector),
Redshift (the real redshift_connector against PostgreSQL), BigQuery (bqemulator, the real
google-cloud-bigquery) and Databricks (Spark with Iceberg tables, through the stand-in for
databricks-sql-connector), through `engines.state.state_engine`:
real Dagster runs against the test gateway. Local mode on the same engine is the reference: the
in-warehouse mode must send the same events byte for byte (both states start from one salt, so
messageIds match too), read out only the changed rows, and keep the promises of
test_warehouse_state.py (which holds the PostgreSQL-only scenarios: the advisory lock, the
`state` commands in a subprocess, partitions).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from rudder_sync.errors import StateError
from rudder_sync.lookup import lookup
from rudder_sync.state import MOVED_KEY, open_state, state_path
from rudder_sync.warehouse_state import rowlock_store
from rudder_sync.warehouse_state import state as warehouse_state_module
from rudder_sync.warehouse_state.state import open_warehouse_state
from rudder_sync.warehouses import build_warehouse

from .engines.state import ENGINES, SCHEMA, SECRET, StateEngine
from .gateway import TestGateway
from .helpers import (
    DAGSTER,
    HISTORY_SYNC,
    IDENTIFY_SYNC,
    SEEDED_SYNC,
    SMALL_BODIES_KB,
    SYNC_NAME,
    TRACK_SYNC,
    WRITE_KEY,
    Project,
    assert_delivered_exactly,
    asset_metadata,
    change_key,
    cli_env,
    failure_text,
    rudderstack_for,
    run_sync,
    wait_until_idle,
)
from .test_crash import kill_group
from .test_faults import FAULT_KINDS, _plan, _script
from .test_postgres import EDGES
from .test_quarantine import REASON, bad_plan
from .test_resync import check_results, run_with

# Not in the "engines" xdist group: fakesnow's server and the Redshift proxy start in a second or
# two, so both workers may start their own and share these tests (the JVM and the BigQuery
# emulator, which are slow to start, keep to one worker).

SYNCS = {
    "user_events": dict(
        copy.deepcopy(TRACK_SYNC), send_initial_results=True, timestamp="updated_at"
    ),
    "user_traits": dict(copy.deepcopy(IDENTIFY_SYNC), timestamp="updated_at"),
}
# ends like a hand-written file: the model is nested as a subquery all the same
SYNCS["user_traits"]["model"] = (
    "select id, user_id, anon_id, email, plan, country, updated_at from users;\n"
    "-- one row per user\n"
)
NOW = "'2024-06-01T00:00:00+00:00'"
# The core history: a change, a removal, an addition, then a row without an ID, one without a
# key, a duplicated key, a removed key coming back, and a change back to an earlier content.
HISTORY = [
    ["update users set plan = 'pro' where id = 2", "delete from users where id = 3"],
    [f"insert into users values (9, 'u9', 'a9', 'n@x.io', 'free', 'FR', {NOW}, 'e9')"],
    [
        f"insert into users values (10, null, null, 'noid@x.io', 'free', 'FR', {NOW}, 'e10')",
        f"insert into users values (null, 'u11', 'a11', 'nokey@x.io', 'free', 'FR', {NOW}, 'x')",
        f"insert into users values (4, 'u4b', 'a4b', 'dup@x.io', 'free', 'FR', {NOW}, 'e12')",
    ],
    [
        "delete from users where id = 4 and user_id = 'u4b'",
        f"insert into users values (3, 'u3', 'a3', 'back@x.io', 'free', 'DE', {NOW}, 'e')",
        "update users set plan = 'free' where id = 2",
        "update users set user_id = 'u10' where id = 10",
    ],
]


def _bodies(gateway: TestGateway) -> list[dict[str, Any]]:
    """Every event as sent, without `sentAt`, and without the timestamp of a removed row's
    event (the time the removal was first seen)."""
    bodies = []
    for request in gateway.requests:
        if request.body:
            for event in json.loads(request.body).get("batch", []):
                event.pop("sentAt", None)
                if event.get("event") == TRACK_SYNC["events"]["removed"]:
                    event["timestamp"] = "(when first seen)"
                bodies.append(event)
    return bodies


def _same_salt(local: Project, remote: Project, names: list[str]) -> None:
    """Both projects' states start from one (empty) local state file: one messageId salt."""
    for name in names:
        with open_state(local.state_dir, name, dry_run=False):
            pass
        remote.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            state_path(local.state_dir, name, False), state_path(remote.state_dir, name, False)
        )


def test_core_history_sends_what_local_mode_sends(
    state_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_engine.seed_users(5)
    local = state_engine.write_project(tmp_path / "local", SYNCS, monkeypatch, state_schema=None)
    remote = state_engine.write_project(tmp_path / "remote", SYNCS, monkeypatch)
    _same_salt(local, remote, list(SYNCS))
    sent: dict[str, list[list[dict[str, Any]]]] = {"local": [], "remote": []}
    transferred = []
    with TestGateway() as to_local, TestGateway() as to_remote:
        for step in [[], *HISTORY]:
            state_engine.sql(*step)
            for mode, project, gateway in (
                ("local", local, to_local),
                ("remote", remote, to_remote),
            ):
                before = len(_bodies(gateway))
                for name in SYNCS:
                    result = run_sync(project, name, rudderstack_for(gateway.url))
                    if mode == "remote" and name == "user_traits":
                        transferred.append(asset_metadata(result, name, "diff")["rows_transferred"])
                sent[mode].append(_bodies(gateway)[before:])
        assert to_remote.schema_errors == []
    assert [len(run) for run in sent["remote"]] == [10, 3, 2, 0, 6]
    assert sent["remote"] == sent["local"]
    # only changed rows (and those held by a pending change or without an ID) leave
    assert transferred[0] == 5 and transferred[1] == 1
    assert SECRET not in json.dumps(sent)
    live = state_engine.sql(
        f"select count(*) from {state_engine.table('snapshot', 'user_events')} "
        "where not __rs_deleted"
    )
    assert live == [(7,)]  # 1, 2, 3 (back), 4, 5, 9 and 10; the keyless row is not kept
    with open_state(remote.state_dir, "user_events", dry_run=False) as moved:
        assert moved.get_meta(MOVED_KEY)  # the empty local state went into the warehouse


def test_a_one_percent_change_reads_out_only_the_changed_rows(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    state_engine.seed_users(1000)
    sync = {"traits": SYNCS["user_traits"]}
    project = state_engine.write_project(tmp_path, sync, monkeypatch)
    first = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert asset_metadata(first, "traits", "diff")["rows_transferred"] == 1000
    state_engine.sql(
        "update users set plan = 'pro' where id <= 10",
        "delete from users where id > 990",
        state_engine.users(range(1001, 1011)),
    )
    result = run_sync(project, "traits", rudderstack_for(gateway.url))
    diff = asset_metadata(result, "traits", "diff")
    assert diff["model_rows"] == 1000
    assert diff["rows_transferred"] == 20  # 10 changed + 10 added; removed keys stay inside
    assert diff["state_rows_transferred"] == 20  # snapshot rows: 10 changed, 10 removed
    assert len(gateway.events) == 1000 + 20
    again = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert asset_metadata(again, "traits", "diff")["rows_transferred"] == 0


# -- a seeded model: a committed baseline, then known changes ---------------------------------


def _seed(
    engine: StateEngine,
    root: Path,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    added: int,
) -> tuple[Project, set[tuple[int, str]]]:
    engine.seed_users(rows)
    project = engine.write_project(root, {SYNC_NAME: SEEDED_SYNC}, monkeypatch)
    run_sync(project, SYNC_NAME, rudderstack_for(url))
    engine.sql(
        "update users set plan = 'pro' where id - 4 * floor(id / 4) = 0",
        "delete from users where id - 10 * floor(id / 10) = 1",
    )
    if added:
        engine.insert_users(range(rows + 1, rows + added + 1))
    expected = {(i, "removed") for i in range(1, rows + 1) if i % 10 == 1}
    expected |= {(i, "changed") for i in range(1, rows + 1) if i % 4 == 0 and i % 10 != 1}
    expected |= {(i, "added") for i in range(rows + 1, rows + added + 1)}
    return project, expected


def _assert_settled(engine: StateEngine) -> None:
    """Nothing pending; the snapshot holds the model's rows, each with its warehouse hash."""
    assert engine.sql(f"select count(*) from {engine.table('pending', SYNC_NAME)}") == [(0,)]
    live = engine.sql(
        f"select count(*), count(__rs_whash) from {engine.table('snapshot', SYNC_NAME)} "
        "where not __rs_deleted"
    )
    (users,) = engine.sql("select count(*) from users")[0]
    assert [tuple(int(v) for v in row) for row in live] == [(users, users)]


def test_transient_gateway_faults_lose_nothing(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    project, expected = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 400, 100)
    _script(gateway, _plan(FAULT_KINDS, faults=10, seed=11))
    resource = rudderstack_for(
        gateway.url,
        max_request_kb=SMALL_BODIES_KB,
        retry_max_seconds=30.0,
        request_timeout_seconds=0.7,
    )
    run_sync(project, SYNC_NAME, resource)
    wait_until_idle(gateway)
    gateway.clear_faults()
    assert_delivered_exactly(gateway.events, expected)
    _assert_settled(state_engine)


def test_rejected_batches_stay_pending_with_their_message_ids(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    project, expected = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 100, 20)
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        project, SYNC_NAME, rudderstack_for(gateway.url, retry_max_seconds=0.2), False
    )
    assert not failed.success and "delivery stopped" in failure_text(failed)
    pending = dict(
        state_engine.sql(
            f"select __rs_pk, __rs_message_id from {state_engine.table('pending', SYNC_NAME)}"
        )
    )
    assert len(pending) == len(expected)
    gateway.clear_faults()
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, expected)
    assert {str(change_key(e)[0]): e["messageId"] for e in gateway.events} == pending
    _assert_settled(state_engine)


def test_a_second_run_waits_for_the_lock_then_fails_naming_it(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    """Another run holds the sync's lock: this one waits, fails naming the holder, sends
    nothing; once it is gone (or its lock row expired) the sync runs."""
    if state_engine.kind == "postgres":
        pytest.skip("PostgreSQL's advisory lock: test_warehouse_state.py holds its scenario")
    project, expected = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 50, 5)
    monkeypatch.setattr(warehouse_state_module, "LOCK_WAIT_SECONDS", 1.0)
    locks = f'"{SCHEMA}"."rudder_sync_locks"'
    # another run, alive on this host (this test's own process), with a fresh lock row
    holder = f"{socket.gethostname()}:{os.getpid()}:other"
    since = datetime.now(UTC).replace(microsecond=0)
    later = since + timedelta(minutes=10)
    state_engine.sql(
        f"insert into {locks} values ('{SYNC_NAME}', '{holder}', "
        f"'{since.isoformat()}', '{later.isoformat()}')"
    )
    started = time.monotonic()
    refused = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not refused.success and time.monotonic() - started >= 1.0
    message = failure_text(refused)
    assert "another run of this sync holds its state" in message
    assert f"owner {holder}" in message and "since 20" in message and SCHEMA in message
    assert gateway.events == []
    # the holder died long ago: its row expired, and this run takes it over
    state_engine.sql(
        f"update {locks} set expires_at = '{(since - timedelta(minutes=1)).isoformat()}'"
    )
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, expected)
    assert state_engine.sql(f"select count(*) from {locks}") == [(0,)]  # released


def test_guard_dry_run_and_resync_in_the_warehouse(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    project, _ = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 100, 0)
    state_engine.sql("delete from users where id > 30")  # 70% removed: the guard stops it
    blocked = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not blocked.success and gateway.events == []
    diff = asset_metadata(blocked, SYNC_NAME, "diff")
    assert diff["model_rows"] == 27 and diff["rows_transferred"] == 7
    dry = run_sync(
        project, SYNC_NAME, rudderstack_for(gateway.url), dry_run=True, approve_large_change=True
    )
    assert asset_metadata(dry, SYNC_NAME, "events")["status"] == "dry_run"
    assert gateway.events == []
    pending = state_engine.sql(f"select count(*) from {state_engine.table('pending', SYNC_NAME)}")
    assert pending[0][0] > 0  # the dry run moved nothing
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url), approve_large_change=True)
    assert {change for _, change in map(change_key, gateway.events)} == {"removed", "changed"}
    _assert_settled(state_engine)
    before = len(gateway.events)
    resync = run_sync(
        project,
        SYNC_NAME,
        rudderstack_for(gateway.url),
        approve_large_change=True,
        diff_config={"resync": True},
    )
    assert asset_metadata(resync, SYNC_NAME, "diff")["rows_transferred"] == 27
    again = gateway.events[before:]
    assert len(again) == 27
    assert not {e["messageId"] for e in again} & {e["messageId"] for e in gateway.events[:before]}


def test_switching_on_moves_the_local_state_and_its_pending_changes(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    state_engine.seed_users(100)
    syncs = {SYNC_NAME: SEEDED_SYNC}
    project = state_engine.write_project(tmp_path, syncs, monkeypatch, state_schema=None)
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))  # local baseline
    state_engine.sql(
        "update users set plan = 'pro' where id - 4 * floor(id / 4) = 0",
        "delete from users where id = 1",
    )
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        project, SYNC_NAME, rudderstack_for(gateway.url, retry_max_seconds=0.2), False
    )
    assert not failed.success
    gateway.clear_faults()
    with open_state(project.state_dir, SYNC_NAME, False) as old:
        pending = dict(old.conn.sql("select __rs_pk, __rs_message_id from pending").fetchall())
    assert len(pending) == 26
    state_engine.sql(state_engine.users([500]))

    project = state_engine.write_project(tmp_path, syncs, monkeypatch)  # state_schema on
    moved = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    sent = {str(change_key(e)[0]): e["messageId"] for e in gateway.events}
    assert set(sent) == set(pending) | {"500"}
    assert {pk: sent[pk] for pk in pending} == pending
    assert asset_metadata(moved, SYNC_NAME, "diff")["rows_transferred"] == 100  # once
    again = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert asset_metadata(again, SYNC_NAME, "diff")["rows_transferred"] == 0
    assert len(gateway.events) == 27
    # the local file is marked as moved: local mode refuses it
    project = state_engine.write_project(tmp_path, syncs, monkeypatch, state_schema=None)
    refused = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not refused.success and "was moved to" in failure_text(refused)


def test_quarantine_and_retry_quarantined_with_the_state_in_the_warehouse(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    state_engine.seed_users(3)
    state_engine.sql("update users set plan = 'bad' where id = 2")
    sync = dict(SYNCS["user_traits"], max_attempts=2)
    project = state_engine.write_project(tmp_path, {"traits": sync}, monkeypatch)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(3):
        result = run_with(project, "traits", rudderstack_for(gateway.url))
        assert result.success, failure_text(result)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u3"]
    assert check_results(result)["quarantined_rows"].metadata["quarantined"].value == 1
    pending = state_engine.table("pending", "traits")
    rows = state_engine.sql(f"select __rs_pk, __rs_attempts from {pending}")
    assert [(pk, int(attempts)) for pk, attempts in rows] == [("2", 2)]
    rejections = state_engine.sql(
        f"select count(*) from {state_engine.table('delivery_log', 'traits')} "
        "where status = 'rejected'"
    )
    assert rejections == [(2,)]  # the third run did not send it
    gateway.clear_faults()
    retried = run_with(
        project, "traits", rudderstack_for(gateway.url), diff={"retry_quarantined": True}
    )
    assert retried.success
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    assert state_engine.sql(f"select count(*) from {pending}") == [(0,)]


def test_a_user_without_create_rights_gets_the_grants_to_run(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    if state_engine.kind == "snowflake":
        pytest.skip(
            "fakesnow has no access control: Snowflake's denial and its GRANT statements "
            "(snowflake_store.Store.grants) cannot be exercised on it"
        )
    if state_engine.kind == "postgres":
        pytest.skip("PostgreSQL's: test_warehouse_state.py (a role with a password over TCP)")
    if state_engine.kind == "bigquery":
        pytest.skip(
            "bqemulator has no access control (IAM): BigQuery's denials and its grants "
            "(bigquery_store.Store.grants) are checked by "
            "test_bigquery_names_its_grants_for_the_project_and_dataset"
        )
    if state_engine.kind == "databricks":
        pytest.skip(
            "the local Spark has no access control (Unity Catalog's grants): Databricks' "
            "denials and its GRANT statements are checked by "
            "test_databricks_names_its_grants_for_the_principal_and_catalog"
        )
    state_engine.seed_users(5)
    role = f"limited_{uuid.uuid4().hex[:8]}"
    state_engine.sql(f"create role {role} login", f"grant select on users to {role}")
    limited = dataclasses.replace(state_engine, warehouse={**state_engine.warehouse, "user": role})
    project = limited.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    try:
        refused = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
        message = failure_text(refused)
        assert not refused.success and "may not create its state schema" in message
        assert f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"' in message
        assert "GRANT CREATE ON DATABASE" in message and SECRET not in message
        # an administrator creates the schema for that user, as the message says
        state_engine.sql(f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"')
        run_sync(project, "traits", rudderstack_for(gateway.url))
        assert len(gateway.events) == 5
    finally:
        state_engine.sql(
            f'drop schema if exists "{SCHEMA}" cascade',
            f"drop owned by {role}",
            f"drop role {role}",
        )


REQUEST_KB = 16
FAST_REQUESTS = 430


@pytest.mark.slow  # a Dagster CLI run in a subprocess, killed, then run again
def test_sigkill_mid_delivery_then_rerun_sends_the_rest_under_the_same_ids(
    state_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if state_engine.kind == "databricks":
        pytest.skip(
            "the Dagster CLI in a subprocess cannot reach the test's Spark (its stand-in "
            "connection lives in this process; a second JVM on the same Iceberg directory is "
            "not a Databricks): a stop at each statement boundary of each commit is "
            "test_databricks_state_boundaries.py's"
        )
    with TestGateway(validate_schema=False, keep_bodies=False) as gateway:
        project, expected = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 2_000, 25_000)
        document = yaml.safe_load(project.config_path.read_text())
        document["delivery"] = {"max_request_kb": REQUEST_KB}
        project.config_path.write_text(yaml.safe_dump(document))
        home = tmp_path / "dagster_home"
        home.mkdir()
        env = cli_env(
            RUDDER_SYNC_CONFIG=str(project.config_path),
            RUDDERSTACK_DATA_PLANE_URL=gateway.url,
            RUDDERSTACK_WRITE_KEY=WRITE_KEY,
            DAGSTER_HOME=str(home),
            **state_engine.env,
        )
        command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
        for _ in range(FAST_REQUESTS):
            gateway.delay_next(0.0)
        gateway.delay_next(2.0, times=1_000)
        with (tmp_path / "job.log").open("wb") as log:
            killed = subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        log_table = state_engine.table("delivery_log", SYNC_NAME)
        try:
            deadline = time.monotonic() + 300
            while sum(r.status == 200 for r in gateway.requests) < FAST_REQUESTS:
                assert killed.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the delivery did not start"
                time.sleep(0.05)
            # Killed once a delivery commit has landed (the sending now crawls: a request every
            # 2 s), not after a fixed pause: on a fast machine the fast requests end before the
            # first commit is due (every 5 s or 20,000 events).
            deadline = time.monotonic() + 120
            delivered = f"select count(*) from {log_table} where status = 'delivered'"
            while not state_engine.sql(delivered)[0][0]:
                assert killed.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no delivery was committed"
                time.sleep(0.2)
        finally:
            kill_group(killed)
        wait_until_idle(gateway, timeout=15)
        gateway.clear_faults()
        committed = {
            (int(pk), change)
            for pk, change in state_engine.sql(
                f"select pk, change from {log_table} where status = 'delivered'"
            )
        }
        ids_before = dict(
            state_engine.sql(
                f"select __rs_pk || __rs_change, __rs_message_id from "
                f"{state_engine.table('pending', SYNC_NAME)} "
                f"union all select pk || change, message_id from {log_table}"
            )
        )
        assert 0 < len(committed) < len(expected), "the kill did not land mid-delivery"
        stored_before = len(gateway.events)
        # the killed run's lock row names a process that is gone: the rerun takes it over
        rerun = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert assert_delivered_exactly(gateway.events, expected) > 0
    rerun_keys = [change_key(event) for event in gateway.events[stored_before:]]
    assert len(rerun_keys) == len(set(rerun_keys))
    assert set(rerun_keys) == expected - committed
    sent = {
        f"{pk}{change}": e["messageId"] for e in gateway.events for pk, change in [change_key(e)]
    }
    assert sent == ids_before
    _assert_settled(state_engine)


@pytest.mark.slow  # the `state` command in a subprocess
def test_moving_out_with_the_state_command_keeps_the_place(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    gateway: TestGateway,
) -> None:
    project, _ = _seed(state_engine, tmp_path, gateway.url, monkeypatch, 60, 10)
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    delivered = len(gateway.events)
    # a change the gateway refuses stays pending in the warehouse, under its messageId
    state_engine.sql("update users set plan = 'team' where id = 2")
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        project, SYNC_NAME, rudderstack_for(gateway.url, retry_max_seconds=0.2), False
    )
    assert not failed.success
    gateway.clear_faults()
    pending = state_engine.sql(
        f"select __rs_pk, __rs_message_id from {state_engine.table('pending', SYNC_NAME)}"
    )
    assert [str(pk) for pk, _ in pending] == ["2"]
    env = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path), **state_engine.env)

    def state_to_local() -> tuple[int, str]:
        """`python -m rudder_sync state to-local SYNC`: its exit status and stderr."""
        if state_engine.kind == "databricks":
            # the stand-in connection lives in this process (a subprocess cannot reach the
            # test's Spark): the command's own function, here, on the same project
            from rudder_sync.cli.state import main as state_main

            monkeypatch.setenv("RUDDER_SYNC_CONFIG", str(project.config_path))
            capsys.readouterr()
            status = state_main(["to-local", SYNC_NAME])
            return status, capsys.readouterr().err
        command = [sys.executable, "-m", "rudder_sync", "state", "to-local", SYNC_NAME]
        moved = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        return moved.returncode, moved.stderr

    status, stderr = state_to_local()
    assert status == 0, stderr
    with open_state(project.state_dir, SYNC_NAME, False) as local:
        moved = local.conn.sql("select __rs_pk, __rs_message_id from pending").fetchall()
    assert [(str(pk), message_id) for pk, message_id in moved] == [
        (str(pk), message_id) for pk, message_id in pending
    ]
    status, stderr = state_to_local()
    assert status == 1 and "moved already" in stderr
    # local mode carries on from the same place: only the pending change is sent, under the
    # messageId it had in the warehouse
    project = state_engine.write_project(
        tmp_path, {SYNC_NAME: SEEDED_SYNC}, monkeypatch, state_schema=None
    )
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")]
    assert gateway.events[delivered]["messageId"] == pending[0][1]
    # switching on again moves it back, and again nothing is resent
    project = state_engine.write_project(tmp_path, {SYNC_NAME: SEEDED_SYNC}, monkeypatch)
    state_engine.sql("update users set plan = 'free' where id = 2")
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")] * 2
    _assert_settled(state_engine)


def test_the_lock_row_is_renewed_while_held_and_a_run_that_lost_it_cannot_commit(
    state_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if state_engine.kind == "postgres":
        pytest.skip("PostgreSQL's advisory lock lives as long as the session")
    state_engine.seed_users(3)
    project = state_engine.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    monkeypatch.setattr(rowlock_store, "LOCK_TTL_SECONDS", 1.0)
    monkeypatch.setattr(rowlock_store, "RENEW_SECONDS", 0.2)
    with open_warehouse_state(warehouse, "traits", "id", False) as held:
        time.sleep(2.5)  # longer than the row's lifetime: renewed all along
        with (
            pytest.raises(StateError, match="another run of this sync holds its state"),
            open_warehouse_state(warehouse, "traits", "id", False, lock_wait_seconds=0.5),
        ):
            pass
        # the run stalls (no renewal): its row expires, and another run takes it over
        store = held.store
        store._stop.set()  # noqa: SLF001 - stalling the renewal thread, as a hung host would
        store._renewer.join()  # noqa: SLF001
        time.sleep(1.5)
        with open_warehouse_state(warehouse, "traits", "id", False, lock_wait_seconds=5) as other:
            conn = store._connect()  # noqa: SLF001 - the stalled run wakes up and renews
            try:
                _renew_as_the_renewal_thread_does(store, conn)
            finally:
                conn.close()
            with pytest.raises(StateError, match="lost its lock"), held.transaction():
                held.set_meta("after_losing_the_lock", "x")
            assert "after_losing_the_lock" not in other.store.get_meta()


def _renew_as_the_renewal_thread_does(store: Any, conn: Any) -> None:
    """One renewal, tried again on an error as `RowLockStore._renew` does: on Databricks the
    other run's renewal of the same lock table can fail this one (a concurrent modification)."""
    for attempt in range(10):
        try:
            store.renew(conn)
            return
        except store.error_types:
            if attempt == 9:
                raise
            time.sleep(0.1)


HISTORY_ROWS = """insert into users_history values
    (1, 'u1', 'u1@x.io', 'free', '2023-12-31T00:00:00+00:00', '2024-01-05T12:00:00+00:00'),
    (1, 'u1', 'u1@x.io', 'pro',  '2024-01-05T12:00:00+00:00', null),
    (2, 'u2', 'u2@x.io', 'free', '2024-01-03T10:00:00+00:00', null),
    (3, 'u3', 'u3@x.io', 'team', '2023-12-30T00:00:00+00:00', '2024-01-06T08:00:00+00:00'),
    (4, 'u4', 'u4@x.io', 'free', '2024-01-04T01:00:00+00:00', '2024-01-04T02:00:00+00:00'),
    (5, null, 'n@x.io',  'free', '2023-12-30T00:00:00+00:00', null),
    (6, ' ',  'b@x.io',  'free', '2023-12-30T00:00:00+00:00', '2024-01-03T00:00:00+00:00'),
    (6, 'u6', 'b@x.io',  'free', '2024-01-03T00:00:00+00:00', null),
    (2, 'u2', 'd@x.io',  'free', '2024-01-04T00:00:00+00:00', '2024-01-04T12:00:00+00:00')"""


def test_partitioned_windows_diff_in_the_warehouse_as_in_local_mode(
    state_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_engine.sql(
        "create table users_history (id integer, user_id varchar(100), email varchar(100), "
        "plan varchar(100), valid_from timestamptz, valid_to timestamptz)",
        HISTORY_ROWS,
    )
    syncs = {"history": HISTORY_SYNC}
    local = state_engine.write_project(tmp_path / "local", syncs, monkeypatch, state_schema=None)
    remote = state_engine.write_project(tmp_path / "remote", syncs, monkeypatch)
    sent, rejected, transferred = {}, {}, {}
    for mode, project in (("local", local), ("remote", remote)):
        with TestGateway() as gateway:
            result = run_sync(
                project, "history", rudderstack_for(gateway.url), partition_range=EDGES
            )
            again = run_sync(  # one window again: the same events, again
                project, "history", rudderstack_for(gateway.url), partition_key="2024-01-05"
            )
            sent[mode] = _bodies(gateway)
            assert gateway.schema_errors == []
        diff = asset_metadata(result, "history", "diff")
        rejected[mode] = [(r["window"], r["key"], r["reason"]) for r in diff["rejected_sample"]]
        transferred[mode] = asset_metadata(again, "history", "diff").get("rows_transferred")
    assert sent["remote"] == sent["local"]
    assert {e["userId"] for e in sent["remote"]} == {"u1", "u2", "u3", "u6"}
    assert rejected["remote"] == rejected["local"]
    # Jan 5 against Jan 4: u1 changed, u5 has no ID (read out to be reported), nothing else
    assert transferred["remote"] == 4 and transferred["local"] is None
    tables = {
        str(name)
        for (name,) in state_engine.sql(
            f"select table_name from information_schema.tables where table_schema = '{SCHEMA}'"
        )
    }
    assert {"history__w_2024_01_04", "history__w_2024_01_05"} <= tables
    assert "history__w_2024_01_01" not in tables  # windows outside the last run are dropped


def test_lookup_reads_an_in_warehouse_state_on_every_engine(
    state_engine: StateEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
) -> None:
    """`rudder_sync lookup` reads the state tables through the engine's store: the snapshot,
    the model row that left, and the delivery with its messageId, as in local mode."""
    state_engine.seed_users(3)
    project = state_engine.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    run_sync(project, "traits", rudderstack_for(gateway.url))
    found = lookup(project.config(), "traits", "2")
    assert found.kind == "warehouse" and "schema rudder_sync (traits__*)" in found.state
    assert found.snapshot is not None and found.snapshot["status"] == "committed"
    assert found.snapshot["last_event_content"]["traits"]["plan"] == "free"
    sent = next(e for e in gateway.events if e["userId"] == "u2")
    assert [d["message_id"] for d in found.deliveries] == [sent["messageId"]]
    assert found.deliveries[0]["status"] == "delivered" and found.pending == []
    assert lookup(project.config(), "traits", "404").found is False


def test_runs_that_open_the_state_at_once_hold_it_one_at_a_time(
    state_engine: StateEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four openers of one sync's state at the same moment (threads, each with its own
    connection, as four runs would): each gets the lock in turn, never two at once."""
    state_engine.seed_users(3)
    project = state_engine.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    with open_warehouse_state(warehouse, "traits", "id", False):
        pass  # the schema and tables exist: the openers below only contend for the lock
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            with open_warehouse_state(warehouse, "traits", "id", False, lock_wait_seconds=60):
                entered = time.monotonic()
                time.sleep(0.3)
                spans.append((entered, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(spans) == 4
    ordered = sorted(spans)
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False)), ordered


def test_snowflake_names_its_grants_for_the_sessions_role_and_database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fakesnow has no access control, so a denial cannot be provoked: Snowflake's own words for
    one are recognised, and the statements name the session's role, database and the schema."""
    from snowflake.connector.errors import ProgrammingError

    from rudder_sync.warehouse_state.sql import Tables
    from rudder_sync.warehouse_state.store import open_store

    engine = ENGINES["snowflake"](request)
    snowflake = next(engine)
    project = snowflake.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    store = open_store(warehouse, Tables(SCHEMA, "traits"), "traits")
    try:
        denial = ProgrammingError(
            msg="SQL access control error: Insufficient privileges to operate on database "
            f"'{snowflake.warehouse['database']}'",
            errno=3001,
        )
        assert store.denied(denial)
        assert not store.denied(ProgrammingError(msg="SQL compilation error: syntax", errno=1003))
        (role, database) = store.rows("select current_role(), current_database()")[0]
        text = store.grants()
    finally:
        store.close()
        engine.close()  # the engine's connection and database
    d, s, r = f'"{database}"', f'"{database}"."{SCHEMA}"', f'"{role}"'
    assert f"GRANT USAGE ON DATABASE {d} TO ROLE {r};" in text
    assert f"GRANT CREATE SCHEMA ON DATABASE {d} TO ROLE {r};" in text
    assert f"GRANT USAGE, CREATE TABLE ON SCHEMA {s} TO ROLE {r};" in text
    assert f"CREATE SCHEMA {s}; GRANT OWNERSHIP ON SCHEMA {s} TO ROLE {r};" in text


def test_bigquery_names_its_grants_for_the_project_and_dataset(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bqemulator has no access control, so a denial cannot be provoked: BigQuery's own words
    for one (403 `accessDenied`, worded as Google's "Troubleshoot IAM permissions in BigQuery"
    page and the service's answers quote them) are recognised, and the run fails with
    BigQuery's statements for the project and the state's dataset."""
    from google.api_core.exceptions import BadRequest, Forbidden

    from rudder_sync.warehouse_state.sql import Tables
    from rudder_sync.warehouse_state.store import open_store

    engine = ENGINES["bigquery"](request)
    bigquery = next(engine)
    project = bigquery.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    store = open_store(warehouse, Tables(SCHEMA, "traits"), "traits")
    p = bigquery.warehouse["project"]
    try:
        denials = [
            Forbidden(
                f"Access Denied: Dataset {p}:{SCHEMA}: Permission bigquery.tables.create denied "
                f"on dataset {p}:{SCHEMA} (or it may not exist)."
            ),
            Forbidden(
                f"Access Denied: Project {p}: User does not have bigquery.datasets.create "
                f"permission in project {p}."
            ),
            Forbidden(
                f"Access Denied: Project {p}: User does not have bigquery.jobs.create "
                f"permission in project {p}."
            ),
        ]
        assert all(store.denied(denial) for denial in denials)
        assert not store.denied(BadRequest("Syntax error: Unexpected keyword WHERE at [1:8]"))
        with pytest.raises(StateError) as refused:
            store._refuse(denials[0], "cannot create its state tables")  # noqa: SLF001
    finally:
        store.close()
        engine.close()
    text = str(refused.value)
    d = f"`{p}.{SCHEMA}`"
    assert text.startswith("sync 'traits': may not create its state schema or tables")
    assert "Permission bigquery.tables.create denied" in text
    grant = f'GRANT `roles/bigquery.dataEditor` ON SCHEMA {d} TO "serviceAccount:'
    assert f"CREATE SCHEMA {d}; {grant}" in text
    assert f"gcloud projects add-iam-policy-binding {p} --member=serviceAccount:" in text
    assert "--role=roles/bigquery.user;" in text and "--role=roles/bigquery.jobUser;" in text


ODD_VALUE = 'it\'s a \\ back\nslash, a "quote" and a tab\t: @p1 $1'


def test_bigquery_a_commit_that_lands_after_a_takeover_changes_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed client does not stop its BigQuery job: a commit script that runs after another
    run took the lock over must change nothing. Each commit is one script job whose fence
    checks the lock row first; DML commits in one transaction, DDL in order."""
    engine = ENGINES["bigquery"](request)
    bigquery = next(engine)
    try:
        bigquery.seed_users(3)
        project = bigquery.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
        warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
        meta = bigquery.table("meta", "traits")
        with open_warehouse_state(warehouse, "traits", "id", False) as held:
            store = held.store
            with held.transaction():  # values are literals in a script: they come back as set
                held.set_meta("odd", ODD_VALUE)
            assert store.get_meta()["odd"] == ODD_VALUE
            store.execute(f"delete from {meta} where key = 'odd'")
            with pytest.raises(RuntimeError, match="a read while 1 statement"):
                store.rows(f"select count(*) from {meta}")  # it would not see the delete
            store.rollback()
            # the run stalls; another one took its lock over, then its commits arrive
            store._stop.set()  # noqa: SLF001 - no renewal, as a killed or hung client
            store._renewer.join()  # noqa: SLF001
            bigquery.sql(
                f'update "{SCHEMA}"."rudder_sync_locks" set owner = \'elsewhere:1:other\' '
                "where sync_key = 'traits'"
            )
            with pytest.raises(StateError, match="lost its lock"), held.transaction():
                held.set_meta("late", "x")  # DML: BEGIN TRANSACTION; fence; ...; COMMIT
            model = bigquery.table("model", "traits")
            store.lost_lock = None  # the fence, not this run's own record, refuses the next
            with pytest.raises(StateError, match="lost its lock"), store.transaction():
                store.execute(f"drop table if exists {model}")  # DDL: fence; drop; create
                store.execute(f"create table {model} as select 1 as x")
        assert "late" not in dict(bigquery.sql(f"select key, value from {meta}"))
        assert not bigquery.sql(  # the fence stopped the DDL script before its first statement
            f"select table_name from information_schema.tables where table_schema = '{SCHEMA}' "
            "and table_name = 'traits__model'"
        )
    finally:
        engine.close()


@pytest.mark.slow  # the test session's Spark (a JVM)
@pytest.mark.xdist_group("engines")
def test_databricks_names_its_grants_for_the_principal_and_catalog(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local Spark has no access control (Unity Catalog's), so a denial cannot be provoked:
    Databricks' words for one (`INSUFFICIENT_PERMISSIONS`, SQLSTATE 42501) are recognised, and
    the run fails with Unity Catalog's statements for the session's principal and catalog."""
    from databricks.sql.exc import ServerOperationError

    from rudder_sync.warehouse_state.sql import Tables
    from rudder_sync.warehouse_state.store import open_store

    engine = ENGINES["databricks"](request)
    databricks = next(engine)
    project = databricks.write_project(tmp_path, {"traits": SYNCS["user_traits"]}, monkeypatch)
    warehouse = build_warehouse(project.config().warehouse).process_config_and_initialize()
    store = open_store(warehouse, Tables(SCHEMA, "traits"), "traits")
    try:
        denial = ServerOperationError(
            "[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not have CREATE "
            "SCHEMA on Catalog 'iceberg'. SQLSTATE: 42501"
        )
        assert store.denied(denial)
        assert not store.denied(ServerOperationError("[PARSE_SYNTAX_ERROR] Syntax error"))
        ((principal, catalog),) = store.rows("select current_user(), current_catalog()")
        with pytest.raises(StateError) as refused:
            store._refuse(denial, "cannot create its state tables")  # noqa: SLF001
    finally:
        store.close()
    text = str(refused.value)
    c, s, p = f"`{catalog}`", f"`{catalog}`.`{SCHEMA}`", f"`{principal}`"
    assert text.startswith("sync 'traits': may not create its state schema or tables")
    assert f"GRANT USE CATALOG, CREATE SCHEMA ON CATALOG {c} TO {p};" in text
    assert f"CREATE SCHEMA {s}; ALTER SCHEMA {s} OWNER TO {p};" in text
    assert f"GRANT USE SCHEMA, CREATE TABLE, MODIFY, SELECT ON SCHEMA {s} TO {p};" in text
    assert SECRET not in text
