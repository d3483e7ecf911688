"""In-warehouse state (`state_schema`) on the real PostgreSQL server, against local mode.

Both modes run the same model history; the warehouse mode must send byte-for-byte the same
events (messageIds included: both states start from one salt), read out only the changed rows,
keep its state in the schema, survive failures and refuse concurrent runs.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import pytest
import yaml

from rudder_sync.state import open_state, state_path
from rudder_sync.warehouse_state import state as warehouse_state_module

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
    assert_delivered_exactly,
    asset_metadata,
    change_key,
    cli_env,
    failure_text,
    rudderstack_for,
    run_sync,
    wait_until_idle,
)
from .postgres import SYNC_URL_ENV_VAR, PgDatabase, PgProject, write_pg_project
from .test_crash import kill_group
from .test_faults import FAULT_KINDS, _plan, _script
from .test_postgres import EDGES
from .test_quarantine import REASON, bad_plan
from .test_resync import check_results, run_with

SCHEMA = "rudder_sync"
SYNCS = {
    "user_events": dict(
        copy.deepcopy(TRACK_SYNC), send_initial_results=True, timestamp="updated_at"
    ),
    "user_traits": dict(
        copy.deepcopy(IDENTIFY_SYNC),
        # ends like a hand-written file: the model is nested as a subquery all the same
        model="select id, user_id, anon_id, email, plan, country, updated_at from users;\n"
        "-- one row per user\n",
        timestamp="updated_at",
    ),
}
# The core history: a change, a removal, an addition, then a row without an ID, one without a
# key, a duplicated key, a removed key coming back, and a change back to an earlier content.
HISTORY = [
    ["update users set plan = 'pro' where id = 2", "delete from users where id = 3"],
    ["insert into users values (9, 'u9', 'a9', 'n@x.io', 'free', 'FR', '2024-06-01', 'e9')"],
    [
        "insert into users values (10, null, null, 'noid@x.io', 'free', 'FR', now(), 'e10')",
        "insert into users values (null, 'u11', 'a11', 'nokey@x.io', 'free', 'FR', now(), 'x')",
        "insert into users values (4, 'u4b', 'a4b', 'dup@x.io', 'free', 'FR', now(), 'e12')",
    ],
    [
        "delete from users where id = 4 and user_id = 'u4b'",
        "insert into users values (3, 'u3', 'a3', 'back@x.io', 'free', 'DE', '2024-06-02', 'e')",
        "update users set plan = 'free' where id = 2",
        "update users set user_id = 'u10' where id = 10",
    ],
]


def _bodies(gateway: TestGateway) -> list[dict[str, Any]]:
    """Every event as sent, without `sentAt` (the time of sending), and without the timestamp
    of a removed row's event: it is the time the removal was first seen (the row is gone)."""
    bodies = []
    for request in gateway.requests:
        if request.body:
            for event in json.loads(request.body).get("batch", []):
                event.pop("sentAt", None)
                if event.get("event") == TRACK_SYNC["events"]["removed"]:
                    event["timestamp"] = "(when first seen)"
                bodies.append(event)
    return bodies


def _projects(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> tuple[PgProject, PgProject]:
    """One project in local mode, one with state_schema, on the same database; each sync's
    state starts from the same (empty) local state file, so both use one messageId salt."""
    local = write_pg_project(tmp_path / "local", pg, SYNCS, monkeypatch)
    remote = write_pg_project(tmp_path / "remote", pg, SYNCS, monkeypatch, state_schema=SCHEMA)
    for name in SYNCS:
        with open_state(local.state_dir, name, dry_run=False):
            pass
        remote.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            state_path(local.state_dir, name, False), state_path(remote.state_dir, name, False)
        )
    return local, remote


def test_in_warehouse_mode_sends_the_same_events_as_local_mode(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(5)
    local, remote = _projects(tmp_path, pg, monkeypatch)
    sent: dict[str, list[list[dict[str, Any]]]] = {"local": [], "remote": []}
    with TestGateway() as to_local, TestGateway() as to_remote:
        for step in [[], *HISTORY]:
            if step:
                pg.sql(*step)
            for mode, project, gateway in (
                ("local", local, to_local),
                ("remote", remote, to_remote),
            ):
                before = len(_bodies(gateway))
                for name in SYNCS:
                    run_sync(project, name, rudderstack_for(gateway.url))
                sent[mode].append(_bodies(gateway)[before:])
        assert to_remote.schema_errors == []
    assert [len(run) for run in sent["remote"]] == [10, 3, 2, 0, 6]
    assert sent["remote"] == sent["local"]
    tables = pg.sql(
        f"select table_name from information_schema.tables where table_schema = '{SCHEMA}' "
        "order by 1"
    )
    assert ("user_events__snapshot",) in tables and ("user_traits__pending",) in tables


def test_a_one_percent_change_reads_out_only_the_changed_rows(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(1000)
    project = write_pg_project(
        tmp_path, pg, {"traits": SYNCS["user_traits"]}, monkeypatch, state_schema=SCHEMA
    )
    first = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert asset_metadata(first, "traits", "diff")["rows_transferred"] == 1000
    pg.sql(
        "update users set plan = 'pro' where id <= 10",
        "delete from users where id > 990",
        "insert into users select i, 'u' || i, 'a' || i, 'x', 'free', 'DE', now(), 'e' "
        "from generate_series(1001, 1010) as t(i)",
    )
    result = run_sync(project, "traits", rudderstack_for(gateway.url))
    diff = asset_metadata(result, "traits", "diff")
    assert diff["model_rows"] == 1000
    assert diff["rows_transferred"] == 20  # 10 changed + 10 added; removed keys stay inside
    assert diff["state_rows_transferred"] == 20  # snapshot rows: 10 changed, 10 removed
    assert len(gateway.events) == 1000 + 20  # identify sends changed and added
    again = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert asset_metadata(again, "traits", "diff")["rows_transferred"] == 0
    assert not (project.state_dir / "traits.duckdb").exists()


# -- a seeded model on PostgreSQL: a committed baseline, then known changes -----------------------


@dataclass
class PgSeeded:
    project: PgProject
    pg: PgDatabase
    expected: set[tuple[int, str]]

    def table(self, role: str, sync: str = SYNC_NAME) -> str:
        return f'{SCHEMA}."{sync}__{role}"'

    def delivered_by_run(self) -> dict[str, set[tuple[int, str]]]:
        rows = self.pg.sql(
            f"select run_id, pk, change from {self.table('delivery_log')} "
            "where status = 'delivered'"
        )
        runs: dict[str, set[tuple[int, str]]] = {}
        for run_id, pk, change in rows:
            runs.setdefault(run_id, set()).add((int(pk), change))
        return runs

    def assert_settled(self) -> None:
        """Nothing pending; the snapshot holds the model's rows, each with its warehouse hash."""
        assert self.pg.sql(f"select count(*) from {self.table('pending')}") == [(0,)]
        live = self.pg.sql(
            f"select count(*), count(__rs_whash) from {self.table('snapshot')} "
            "where not __rs_deleted"
        )
        assert live == self.pg.sql("select count(*), count(*) from users")


def seed_pg(
    root: Path,
    pg: PgDatabase,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    added: int,
    extra: dict[str, dict[str, Any]] | None = None,
) -> PgSeeded:
    """`helpers.seed_model` on PostgreSQL with state_schema: the same baseline and changes."""
    pg.seed_users(rows)
    syncs = {SYNC_NAME: SEEDED_SYNC, **(extra or {})}
    project = write_pg_project(root, pg, syncs, monkeypatch, state_schema=SCHEMA)
    run_sync(project, SYNC_NAME, rudderstack_for(url))
    pg.sql(
        "update users set plan = 'pro' where id % 4 = 0",
        "delete from users where id % 10 = 1",
        "insert into users select i, 'u' || i, 'a' || i, 'user' || i || '@example.com', "
        f"'free', 'DE', '2024-06-01', 'e' || i from generate_series({rows + 1}, {rows + added}) i",
    )
    expected = {(i, "removed") for i in range(1, rows + 1) if i % 10 == 1}
    expected |= {(i, "changed") for i in range(1, rows + 1) if i % 4 == 0 and i % 10 != 1}
    expected |= {(i, "added") for i in range(rows + 1, rows + added + 1)}
    return PgSeeded(project, pg, expected)


def test_transient_gateway_faults_lose_nothing(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=400, added=100)
    _script(gateway, _plan(FAULT_KINDS, faults=10, seed=11))
    resource = rudderstack_for(
        gateway.url,
        max_request_kb=SMALL_BODIES_KB,
        retry_max_seconds=30.0,
        request_timeout_seconds=0.7,
    )
    run_sync(model.project, SYNC_NAME, resource)
    wait_until_idle(gateway)
    gateway.clear_faults()
    assert_delivered_exactly(gateway.events, model.expected)
    model.assert_settled()


def test_rejected_batches_stay_pending_with_their_message_ids(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=100, added=20)
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        model.project,
        SYNC_NAME,
        rudderstack_for(gateway.url, retry_max_seconds=0.2),
        raise_on_error=False,
    )
    assert not failed.success and "delivery stopped" in failure_text(failed)
    pending = dict(pg.sql(f"select __rs_pk, __rs_message_id from {model.table('pending')}"))
    assert len(pending) == len(model.expected)
    gateway.clear_faults()
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, model.expected)
    assert {str(change_key(e)[0]): e["messageId"] for e in gateway.events} == pending
    model.assert_settled()


REQUEST_KB = 16
FAST_REQUESTS = 430


@pytest.mark.slow
def test_sigkill_mid_delivery_then_rerun_sends_the_rest_under_the_same_ids(
    tmp_path: Path,
    pg: PgDatabase,
    monkeypatch: pytest.MonkeyPatch,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    with TestGateway(validate_schema=False, keep_bodies=False) as gateway:
        model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=2_000, added=25_000)
        document = yaml.safe_load(model.project.config_path.read_text())
        document["delivery"] = {"max_request_kb": REQUEST_KB}
        model.project.config_path.write_text(yaml.safe_dump(document))
        env = _job_env(model, gateway.url)
        for _ in range(FAST_REQUESTS):
            gateway.delay_next(0.0)
        gateway.delay_next(2.0, times=1_000)
        killed = _start_job(model, env)
        processes.append(killed)
        deadline = time.monotonic() + 120
        while sum(r.status == 200 for r in gateway.requests) < FAST_REQUESTS:
            assert killed.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the delivery did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        kill_group(killed)
        wait_until_idle(gateway, timeout=15)
        gateway.clear_faults()
        committed = set().union(*model.delivered_by_run().values())
        # the messageIds the killed run's diff gave every change: delivered or still pending
        ids_before = dict(
            pg.sql(
                f"select __rs_pk || __rs_change, __rs_message_id from {model.table('pending')} "
                f"union all select pk || change, message_id from {model.table('delivery_log')}"
            )
        )
        assert 0 < len(committed) < len(model.expected), "the kill did not land mid-delivery"
        stored_before = len(gateway.events)

        rerun = subprocess.run(
            _job_command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert assert_delivered_exactly(gateway.events, model.expected) > 0
    rerun_keys = [change_key(event) for event in gateway.events[stored_before:]]
    assert len(rerun_keys) == len(set(rerun_keys))
    assert set(rerun_keys) == model.expected - committed
    # every change went out under the messageId its diff gave it before the kill
    sent = {
        f"{pk}{change}": e["messageId"] for e in gateway.events for pk, change in [change_key(e)]
    }
    assert sent == ids_before
    model.assert_settled()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        kill_group(process)


def _job_command() -> list[str]:
    return [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]


def _job_env(model: PgSeeded, url: str) -> dict[str, str]:
    home = model.project.root / "dagster_home"
    home.mkdir(exist_ok=True)
    return cli_env(
        RUDDER_SYNC_CONFIG=str(model.project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        DAGSTER_HOME=str(home),
        **{SYNC_URL_ENV_VAR: model.pg.url},
    )


def _start_job(model: PgSeeded, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (model.project.root / "job.log").open("wb") as log:
        return subprocess.Popen(
            _job_command(),
            env=env,
            cwd=model.project.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_second_run_of_the_sync_waits_for_the_lock_then_fails_clearly(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=50, added=5)
    monkeypatch.setattr(warehouse_state_module, "LOCK_WAIT_SECONDS", 1.0)
    holder = adbc.connect(pg.url)  # another run of the same sync, holding its lock
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "select pg_advisory_lock(hashtextextended($1, 0))",
                [f"rudder_sync/{SCHEMA}/{SYNC_NAME}"],
            )
            cursor.fetchall()
        started = time.monotonic()
        refused = run_sync(
            model.project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False
        )
        assert not refused.success and time.monotonic() - started >= 1.0
        message = failure_text(refused)
        assert "another run of this sync holds its state" in message and SCHEMA in message
        assert gateway.events == []
    finally:
        holder.close()  # the lock goes with the session
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, model.expected)


def test_guard_dry_run_and_resync_in_the_warehouse(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=100, added=0)
    pg.sql("delete from users where id > 30")  # 70% of the rows removed: the guard stops it
    blocked = run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not blocked.success and gateway.events == []
    diff = asset_metadata(blocked, SYNC_NAME, "diff")
    # ids 1..30 are left, but 1, 11 and 21 were deleted before; 4, 8, ..., 28 changed
    assert diff["model_rows"] == 27 and diff["rows_transferred"] == 7
    dry = run_sync(
        model.project,
        SYNC_NAME,
        rudderstack_for(gateway.url),
        dry_run=True,
        approve_large_change=True,
    )
    assert asset_metadata(dry, SYNC_NAME, "events")["status"] == "dry_run"
    assert gateway.events == []
    pending = pg.sql(f"select count(*) from {model.table('pending')}")
    assert pending[0][0] > 0  # the dry run moved nothing
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url), approve_large_change=True)
    removed = {change_key(e) for e in gateway.events}
    assert {change for _, change in removed} == {"removed", "changed"}
    model.assert_settled()


def test_resync_sends_every_row_again_with_new_message_ids(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(20)
    project = write_pg_project(
        tmp_path, pg, {"traits": SYNCS["user_traits"]}, monkeypatch, state_schema=SCHEMA
    )
    run_sync(project, "traits", rudderstack_for(gateway.url))
    first = {e["userId"]: e["messageId"] for e in gateway.events}
    resync = run_sync(
        project,
        "traits",
        rudderstack_for(gateway.url),
        approve_large_change=True,
        diff_config={"resync": True},
    )
    assert asset_metadata(resync, "traits", "diff")["rows_transferred"] == 20
    again = {e["userId"]: e["messageId"] for e in gateway.events[20:]}
    assert set(again) == set(first) and not set(again.values()) & set(first.values())


# -- switching state_schema on and off -------------------------------------------------------------


def _set_state_schema(project: PgProject, schema: str | None) -> None:
    document = yaml.safe_load(project.config_path.read_text())
    document["warehouse"].pop("state_schema", None)
    if schema:
        document["warehouse"]["state_schema"] = schema
    project.config_path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_switching_on_moves_the_local_state_and_its_pending_changes(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(100)
    project = write_pg_project(tmp_path, pg, {SYNC_NAME: SEEDED_SYNC}, monkeypatch)
    run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))  # local baseline
    pg.sql("update users set plan = 'pro' where id % 4 = 0", "delete from users where id = 1")
    gateway.fail_next(503, times=10_000)
    failed = run_sync(
        project,
        SYNC_NAME,
        rudderstack_for(gateway.url, retry_max_seconds=0.2),
        raise_on_error=False,
    )
    assert not failed.success
    gateway.clear_faults()
    local = state_path(project.state_dir, SYNC_NAME, False)
    with open_state(project.state_dir, SYNC_NAME, False) as old:
        pending = dict(old.conn.sql("select __rs_pk, __rs_message_id from pending").fetchall())
    assert len(pending) == 26
    pg.sql("insert into users values (500, 'u500', 'a500', 'x', 'free', 'DE', now(), 'e')")

    _set_state_schema(project, SCHEMA)
    moved = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    # the pending changes went out under their messageIds, plus the new row; nothing else
    sent = {str(change_key(e)[0]): e["messageId"] for e in gateway.events}
    assert set(sent) == set(pending) | {"500"}
    assert {pk: sent[pk] for pk in pending} == pending
    assert asset_metadata(moved, SYNC_NAME, "diff")["rows_transferred"] == 100  # once
    again = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url))
    assert asset_metadata(again, SYNC_NAME, "diff")["rows_transferred"] == 0
    assert len(gateway.events) == 27

    # the local file is marked as moved: local mode refuses it and names the way back
    _set_state_schema(project, None)
    refused = run_sync(project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    message = failure_text(refused)
    assert not refused.success and "was moved to" in message
    assert f"rudder_sync.warehouse_state.move to-local {SYNC_NAME}" in message
    assert local.exists()


@pytest.mark.slow  # a CLI in a subprocess
def test_switching_off_with_the_move_command_keeps_the_place(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=60, added=10)
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    delivered = len(gateway.events)
    pg.sql("update users set plan = 'team' where id = 2")
    env = _job_env(model, gateway.url)
    command = [sys.executable, "-m", "rudder_sync.warehouse_state.move", "to-local", SYNC_NAME]
    moved = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "moved already" in again.stderr

    # the warehouse state is marked as moved: without the file it went to, it is refused
    local = state_path(model.project.state_dir, SYNC_NAME, False)
    local.rename(local.with_suffix(".away"))
    refused = run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not refused.success and "that file is gone" in failure_text(refused)
    local.with_suffix(".away").rename(local)
    # local mode carries on from the same place: only the new change is sent
    _set_state_schema(model.project, None)
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")]
    # switching on again moves it back, and again nothing is resent
    _set_state_schema(model.project, SCHEMA)
    pg.sql("update users set plan = 'free' where id = 2")
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")] * 2
    model.assert_settled()


def test_a_user_without_create_rights_gets_the_grants_to_run(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(5)
    role = f"limited_{pg.name}"
    pg.sql(
        f"create role {role} login password 'limited-pw-1'",
        f"grant select on users to {role}",
    )
    limited = PgDatabase(url=_with_user(pg.url, role, "limited-pw-1"), name=pg.name)
    project = write_pg_project(
        tmp_path, limited, {"traits": SYNCS["user_traits"]}, monkeypatch, state_schema=SCHEMA
    )
    refused = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    message = failure_text(refused)
    assert not refused.success and "may not create its state schema" in message
    assert f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"' in message
    assert "limited-pw-1" not in message
    # the README's way: an administrator creates the schema for that user
    pg.sql(f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"')
    run_sync(project, "traits", rudderstack_for(gateway.url))
    assert len(gateway.events) == 5
    pg.sql(f"drop schema {SCHEMA} cascade", f"drop owned by {role}", f"drop role {role}")


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- partitioned syncs: each window against the window before, inside the warehouse ---------------

HISTORY_ROWS = """insert into users_history values
    (1, 'u1', 'u1@x.io', 'free', '2023-12-31 00:00+00', '2024-01-05 12:00+00'),
    (1, 'u1', 'u1@x.io', 'pro',  '2024-01-05 12:00+00', null),
    (2, 'u2', 'u2@x.io', 'free', '2024-01-03 10:00+00', null),
    (3, 'u3', 'u3@x.io', 'team', '2023-12-30 00:00+00', '2024-01-06 08:00+00'),
    (4, 'u4', 'u4@x.io', 'free', '2024-01-04 01:00+00', '2024-01-04 02:00+00'),
    (5, null, 'n@x.io',  'free', '2023-12-30 00:00+00', null),
    (6, ' ',  'b@x.io',  'free', '2023-12-30 00:00+00', '2024-01-03 00:00+00'),
    (6, 'u6', 'b@x.io',  'free', '2024-01-03 00:00+00', null),
    (2, 'u2', 'd@x.io',  'free', '2024-01-04 00:00+00', '2024-01-04 12:00+00')"""


def test_partitioned_windows_diff_in_the_warehouse_as_in_local_mode(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.sql(
        "create table users_history (id int, user_id text, email text, plan text, "
        "valid_from timestamptz, valid_to timestamptz)",
        HISTORY_ROWS,
    )
    syncs = {"history": HISTORY_SYNC}
    local = write_pg_project(tmp_path / "local", pg, syncs, monkeypatch)
    remote = write_pg_project(tmp_path / "remote", pg, syncs, monkeypatch, state_schema=SCHEMA)
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
        rejected[mode] = [
            (row["window"], row["key"], row["reason"]) for row in diff["rejected_sample"]
        ]
        transferred[mode] = asset_metadata(again, "history", "diff").get("rows_transferred")
    assert sent["remote"] == sent["local"]
    assert {e["userId"] for e in sent["remote"]} == {"u1", "u2", "u3", "u6"}
    # the row without a user ID is reported in every window, the blank one until it got one
    assert rejected["remote"] == rejected["local"]
    reported = {(window, key) for window, key, _ in rejected["remote"]}
    assert {("2024-01-01", "5"), ("2024-01-07", "5"), ("2024-01-02", "6")} <= reported
    assert ("2024-01-03", "6") not in reported
    # Jan 5 against Jan 4: u1 changed, u5 has no ID (read out to be reported), nothing else
    assert transferred["remote"] == 4 and transferred["local"] is None
    tables = {
        row[0]
        for row in pg.sql(
            f"select table_name from information_schema.tables where table_schema = '{SCHEMA}'"
        )
    }
    assert {"history__w_2024_01_04", "history__w_2024_01_05"} <= tables
    assert "history__w_2024_01_01" not in tables  # windows outside the last run are dropped


@pytest.mark.slow  # a CLI in a subprocess
def test_a_removed_sync_keeps_its_tables_until_the_drop_command(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    syncs = {"traits": SYNCS["user_traits"], "traits__b": SYNCS["user_traits"]}
    project = write_pg_project(tmp_path, pg, syncs, monkeypatch, state_schema=SCHEMA)
    for name in syncs:
        run_sync(project, name, rudderstack_for(gateway.url))
    run_sync(project, "traits", rudderstack_for(None))  # a dry run: its own tables
    env = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path), **{SYNC_URL_ENV_VAR: pg.url})
    command = [sys.executable, "-m", "rudder_sync.warehouse_state.move", "drop", "traits"]

    def tables() -> set[str]:
        rows = pg.sql(f"select tablename from pg_tables where schemaname = '{SCHEMA}'")
        return {name for (name,) in rows}

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "still in the config" in refused.stderr
    document = yaml.safe_load(project.config_path.read_text())
    del document["syncs"]["traits"]
    project.config_path.write_text(yaml.safe_dump(document))
    listed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "add --yes" in listed.stdout
    assert {"traits__snapshot", "traits__dry_run__snapshot"} <= tables()
    dropped = subprocess.run(
        [*command, "--yes"], env=env, capture_output=True, text=True, timeout=60
    )
    assert dropped.returncode == 0, dropped.stderr
    assert {t for t in tables() if not t.startswith("traits__b__")} == set()
    assert "traits__b__snapshot" in tables()  # another sync's tables stay


def test_quarantine_and_retry_quarantined_with_the_state_in_the_warehouse(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    pg.sql("update users set plan = 'bad' where id = 2")
    sync = dict(SYNCS["user_traits"], max_attempts=2)
    project = write_pg_project(tmp_path, pg, {"traits": sync}, monkeypatch, state_schema=SCHEMA)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(3):
        result = run_with(project, "traits", rudderstack_for(gateway.url))
        assert result.success, failure_text(result)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u3"]
    assert check_results(result)["quarantined_rows"].metadata["quarantined"].value == 1
    pending = f'{SCHEMA}."traits__pending"'
    assert pg.sql(f"select __rs_pk, __rs_attempts from {pending}") == [("2", 2)]
    rejections = pg.sql(
        f"select count(*) from {SCHEMA}.\"traits__delivery_log\" where status = 'rejected'"
    )
    assert rejections == [(2,)]  # the third run did not send it

    gateway.clear_faults()
    retried = run_with(
        project, "traits", rudderstack_for(gateway.url), diff={"retry_quarantined": True}
    )
    assert retried.success
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    assert pg.sql(f"select count(*) from {pending}") == [(0,)]
