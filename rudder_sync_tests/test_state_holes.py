"""Holes in the sync's state that issue 26 found (items 2, 3, 5 and the state messages of 7).

Real Dagster runs against the real test gateway, on real DuckDB state files (and the real
PostgreSQL server for in-warehouse state): a resync asked for again while an earlier one is
unfinished finishes it instead of re-sending under new messageIds; a state lost after deliveries
is refused instead of silently recording a new baseline; the state of another sync is refused
naming both; and a full disk, a truncated file or a dropped warehouse connection are reported
with the sync, the place and the fix.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.errors import StateError
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.state import SYNC_NAME_KEY, SYNC_SHAPE_KEY, open_state, run, state_path
from rudder_sync.warehouse_state.state import open_warehouse_state
from rudder_sync.warehouses import build_warehouse
from rudder_sync.warehouses.postgres import PostgresWarehouse

from .gateway import TestGateway
from .helpers import (
    DAGSTER,
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    asset_metadata,
    cli_env,
    failure_text,
    rudderstack_for,
    sql,
    write_project,
)
from .postgres import PgDatabase, write_pg_project

APPROVED_RESYNC = {"resync": True, "approve_large_change": True}
APPROVED_RESET = {"reset_baseline": True, "approve_large_change": True}


def run_on(
    project: Any,
    sync_name: str,
    rudderstack: RudderstackResource,
    instance: DagsterInstance,
    diff: dict[str, Any] | None = None,
) -> ExecuteInProcessResult:
    """A real in-process run of the sync's three assets, recorded in ``instance`` (one instance
    across runs: what a deployment with DAGSTER_HOME remembers)."""
    config = project.config()
    return materialize(
        build_sync_assets(config.syncs[sync_name], config.state),
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {f"{sync_name}__diff": {"config": diff or {}}}},
    )


def ids_by_user(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for event in events:
        found[event["userId"]].add(event["messageId"])
    return found


def state_meta(path: Path) -> dict[str, str]:
    gc.collect()  # Dagster's run may still hold a cursor on the file in this process
    with duckdb.connect(str(path), read_only=True) as conn:
        return dict(conn.execute("select key, value from meta").fetchall())


# -- item 2: a resync asked for again is finished, not restarted --------------------------------


def test_a_resync_asked_for_again_after_being_cut_short_finishes_the_first(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """Dagster's Re-execute repeats the run config: the second resync must not re-send the
    rows the first one delivered under new messageIds."""
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=30)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    first = ids_by_user(gateway.events)

    small = {"max_request_kb": 1, "max_in_flight": 1}
    gateway.delay_next(0.0, times=3)  # three requests get through, then the data plane fails
    gateway.fail_next(503, times=10_000)
    cut = run_on(
        project,
        "traits",
        rudderstack_for(gateway.url, retry_max_seconds=0.3, **small),
        instance,
        APPROVED_RESYNC,
    )
    assert not cut.success
    gateway.clear_faults()
    delivered_by_cut = len(gateway.events) - 30
    assert 0 < delivered_by_cut < 30, "the resync was not cut short mid-delivery"

    again = run_on(
        project, "traits", rudderstack_for(gateway.url, **small), instance, APPROVED_RESYNC
    )
    assert again.success, failure_text(again)
    resync = ids_by_user(gateway.events[30:])
    assert sorted(resync) == sorted(first), "every row arrives"
    twice = {user: ids for user, ids in resync.items() if len(ids) > 1}
    assert not twice, f"rows delivered under two messageIds by one resync: {twice}"
    assert all(not resync[user] & first[user] for user in first)
    logs = "\n".join(e.user_message for e in instance.all_logs(again.run_id))
    assert "finishes it under the same messageIds" in logs
    diff = asset_metadata(again, "traits", "diff")
    assert diff["resync_finished_earlier_one"] is True and diff["resync"] is False

    # finished: a resync asked for now is a new one, under new messageIds again
    before = len(gateway.events)
    new = run_on(project, "traits", rudderstack_for(gateway.url), instance, APPROVED_RESYNC)
    assert new.success, failure_text(new)
    third = ids_by_user(gateway.events[before:])
    assert sorted(third) == sorted(first)
    assert all(len(ids) == 1 and not ids & resync[u] for u, ids in third.items())


def test_a_resync_asked_for_again_in_the_warehouse_finishes_the_first(
    tmp_path: Path, gateway: TestGateway, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(20)
    project = write_pg_project(
        tmp_path, pg, {"traits": IDENTIFY_SYNC}, monkeypatch, state_schema="rs_state"
    )
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    small = {"max_request_kb": 1, "max_in_flight": 1}
    gateway.delay_next(0.0, times=2)
    gateway.fail_next(503, times=10_000)
    slow = rudderstack_for(gateway.url, retry_max_seconds=0.3, **small)
    assert not run_on(project, "traits", slow, instance, APPROVED_RESYNC).success
    gateway.clear_faults()
    assert 0 < len(gateway.events) - 20 < 20

    again = run_on(project, "traits", rudderstack_for(gateway.url), instance, APPROVED_RESYNC)
    assert again.success, failure_text(again)
    resync = ids_by_user(gateway.events[20:])
    assert len(resync) == 20 and all(len(ids) == 1 for ids in resync.values())


RESYNC_ROWS = 6_000
REQUEST_KB = 4  # ~12 events per request, ~500 requests for a resync
FAST_REQUESTS = 240  # 0.06 s each, two at a time: past the first commit (every 5 s)


@pytest.mark.slow
def test_sigkill_mid_resync_then_the_same_command_sends_no_row_twice(tmp_path: Path) -> None:
    """The issue's repro: `dagster job execute -c resync.yaml` killed mid-delivery, after a
    commit, then the very same command: every row arrives, none under two messageIds."""
    hang_seconds = 2.0
    with TestGateway(validate_schema=False, keep_bodies=False) as gateway:
        project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=RESYNC_ROWS)
        document = yaml.safe_load(project.config_path.read_text())
        document["delivery"] = {"max_request_kb": REQUEST_KB, "max_in_flight": 2}
        project.config_path.write_text(yaml.safe_dump(document))
        home = tmp_path / "dagster_home"
        home.mkdir()
        env = cli_env(
            RUDDER_SYNC_CONFIG=str(project.config_path),
            RUDDERSTACK_DATA_PLANE_URL=gateway.url,
            RUDDERSTACK_WRITE_KEY=WRITE_KEY,
            DAGSTER_HOME=str(home),
        )
        resync = tmp_path / "resync.yaml"
        resync.write_text(yaml.safe_dump({"ops": {"traits__diff": {"config": APPROVED_RESYNC}}}))
        command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", "traits"]

        first = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr[-3000:]
        baseline = ids_by_user(gateway.events)
        assert len(baseline) == RESYNC_ROWS
        answered_before = len(gateway.requests)

        gateway.delay_next(0.06, times=FAST_REQUESTS)
        gateway.delay_next(hang_seconds, times=10_000)
        with (tmp_path / "killed.log").open("wb") as log:
            killed = subprocess.Popen(
                [*command, "-c", str(resync)],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 180
            while len(gateway.requests) - answered_before < FAST_REQUESTS:
                assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the resync's delivery never got going"
                time.sleep(0.05)
            time.sleep(1.0)  # let it commit what was accepted, with more requests on the wire
        finally:
            if killed.poll() is None:
                os.killpg(killed.pid, signal.SIGKILL)
            killed.wait(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        deadline = time.monotonic() + hang_seconds + 15
        while len(gateway.requests) < gateway._request_count:  # requests on the wire land
            assert time.monotonic() < deadline
            time.sleep(0.05)
        gateway.clear_faults()
        with duckdb.connect(str(state_path(project.state_dir, "traits", False))) as conn:
            (committed,) = conn.execute(
                "select count(distinct pk) from delivery_log where status = 'delivered' "
                "and run_id <> (select min_by(run_id, logged_at) from delivery_log)"
            ).fetchone()
        assert 0 < committed < RESYNC_ROWS, "the kill did not land after a commit, mid-delivery"

        again = subprocess.run(
            [*command, "-c", str(resync)], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        resent = ids_by_user(gateway.events[RESYNC_ROWS:])
        assert len(resent) == RESYNC_ROWS, "every row arrives"
        twice = sum(len(ids) > 1 for ids in resent.values())
        assert twice == 0, f"{twice} rows delivered under two messageIds"
        assert all(not resent[user] & baseline[user] for user in baseline)


SALTED_WINDOWS: dict[str, Any] = {
    "model": "select id, user_id, plan from users where updated_at < $partition_end",
    "primary_key": "id",
    "type": "identify",
    "user_id": "user_id",
    "mapping": {"plan": "plan"},
    "partitions": {"start": "2024-05-01", "cadence": "daily"},
    "message_id_salt": "resend-2024-06",
}


def test_a_salted_window_cut_short_and_run_again_sends_no_row_twice(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """A window re-sent under a new message_id_salt, cut short, then re-executed with the same
    config: its messageIds depend only on the salt and the model, so the re-run finishes it."""
    project = write_project(tmp_path, {"daily": SALTED_WINDOWS}, users=11)
    config = project.config()

    def run_window(rudderstack: RudderstackResource) -> ExecuteInProcessResult:
        return materialize(
            build_sync_assets(config.syncs["daily"], config.state),
            resources={
                "warehouse": build_warehouse(config.warehouse),
                "rudderstack": rudderstack,
                IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
            },
            instance=DagsterInstance.ephemeral(),
            raise_on_error=False,
            partition_key="2024-05-01",
        )

    small = {"max_request_kb": 1, "max_in_flight": 1}
    gateway.delay_next(0.0, times=2)
    gateway.fail_next(503, times=10_000)
    assert not run_window(rudderstack_for(gateway.url, retry_max_seconds=0.3, **small)).success
    gateway.clear_faults()
    assert 0 < len(gateway.events) < 11
    again = run_window(rudderstack_for(gateway.url, **small))
    assert again.success, failure_text(again)
    sent = ids_by_user(gateway.events)
    assert len(sent) == 11 and all(len(ids) == 1 for ids in sent.values())


# -- item 3: a lost state is refused when Dagster saw deliveries --------------------------------

TRACK_NO_INITIAL = dict(TRACK_SYNC, send_initial_results=False)


def test_a_lost_state_after_deliveries_fails_and_offers_resync_or_reset(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_NO_INITIAL}, users=3)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "events", rudderstack_for(gateway.url), instance).success
    assert gateway.events == []  # the baseline: nothing sent
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    path = state_path(project.state_dir, "events", dry_run=False)
    path.rename(tmp_path / "moved-away.duckdb")

    lost = run_on(project, "events", rudderstack_for(gateway.url), instance)
    assert not lost.success
    message = failure_text(lost)
    assert "\n" not in message.strip()
    assert "sync 'events'" in message and str(path) in message and "lost" in message
    assert "resync: true" in message and "reset_baseline: true" in message
    assert gateway.events == []

    # the throwaway instance of a `dagster job execute` without DAGSTER_HOME knows nothing: the
    # state itself keeps working
    fresh = run_on(project, "events", rudderstack_for(gateway.url), DagsterInstance.ephemeral())
    assert fresh.success, failure_text(fresh)
    path.unlink()

    # the explicit choice: resync sends every row again
    resynced = run_on(project, "events", rudderstack_for(gateway.url), instance, APPROVED_RESYNC)
    assert resynced.success, failure_text(resynced)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]


def test_a_lost_state_accepted_with_reset_baseline_sends_only_later_changes(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_NO_INITIAL}, users=3)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "events", rudderstack_for(gateway.url), instance).success
    assert run_on(project, "events", rudderstack_for(None), instance).success  # the latest: dry
    state_path(project.state_dir, "events", dry_run=False).unlink()
    lost = run_on(project, "events", rudderstack_for(gateway.url), instance)
    assert not lost.success and "lost" in failure_text(lost)

    reset = run_on(project, "events", rudderstack_for(gateway.url), instance, APPROVED_RESET)
    assert reset.success, failure_text(reset)
    assert gateway.events == []
    sql(project.warehouse, "update users set plan = 'team' where id = 3")
    later = run_on(project, "events", rudderstack_for(gateway.url), instance)
    assert later.success, failure_text(later)
    assert [(e["userId"], e["properties"]["plan"]) for e in gateway.events] == [("u3", "team")]


def test_dry_runs_alone_never_make_a_first_run_a_lost_state(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_NO_INITIAL}, users=2)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "events", rudderstack_for(None), instance).success  # a dry run
    first = run_on(project, "events", rudderstack_for(gateway.url), instance)
    assert first.success, failure_text(first)


def test_dropped_warehouse_state_tables_after_deliveries_fail_the_same_way(
    tmp_path: Path, gateway: TestGateway, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(3)
    project = write_pg_project(
        tmp_path, pg, {"events": TRACK_NO_INITIAL}, monkeypatch, state_schema="rs_state"
    )
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "events", rudderstack_for(gateway.url), instance).success
    tables = pg.sql(
        "select tablename from pg_tables where schemaname = 'rs_state' "
        "and tablename like 'events\\_\\_%'"
    )
    assert tables
    pg.sql(*(f'drop table rs_state."{name}"' for (name,) in tables))

    lost = run_on(project, "events", rudderstack_for(gateway.url), instance)
    assert not lost.success
    message = failure_text(lost)
    assert "sync 'events'" in message and "rs_state" in message and "lost" in message
    assert "resync: true" in message and "reset_baseline: true" in message
    reset = run_on(project, "events", rudderstack_for(gateway.url), instance, APPROVED_RESET)
    assert reset.success, failure_text(reset)
    assert gateway.events == []


# -- item 5: the state of another sync is refused; a rename is an explicit step -----------------


def test_the_state_of_another_sync_is_refused_naming_both(
    tmp_path: Path, gateway: TestGateway
) -> None:
    other = dict(IDENTIFY_SYNC, mapping={"email": "email", "country": "country"})
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC, "geo": other}, users=4)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    assert run_on(project, "geo", rudderstack_for(gateway.url), instance).success
    sent = len(gateway.events)
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")
    gc.collect()
    shutil.copy(
        state_path(project.state_dir, "geo", False), state_path(project.state_dir, "traits", False)
    )

    refused = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert not refused.success
    message = failure_text(refused)
    assert "sync 'traits'" in message and "belongs to sync 'geo'" in message
    assert "another type, key and mapping" in message and "adopt_state_of" in message
    assert len(gateway.events) == sent


def test_a_renamed_sync_adopts_its_old_state_with_run_config(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"old_traits": IDENTIFY_SYNC}, users=3)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "old_traits", rudderstack_for(gateway.url), instance).success
    assert len(gateway.events) == 3
    # the rename: the config's key, and the state file moved to the new name
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=0)
    adopt = {"adopt_state_of": "old_traits"}
    unmoved = run_on(project, "traits", rudderstack_for(gateway.url), instance, adopt)
    assert not unmoved.success
    assert "holds a new state, not that of 'old_traits'" in failure_text(unmoved)
    gc.collect()
    state_path(project.state_dir, "old_traits", False).rename(
        state_path(project.state_dir, "traits", False)
    )

    refused = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert not refused.success
    message = failure_text(refused)
    assert "belongs to sync 'old_traits'" in message and "(the same type" in message
    assert "adopt_state_of: old_traits" in message

    adopted = run_on(project, "traits", rudderstack_for(gateway.url), instance, adopt)
    assert adopted.success, failure_text(adopted)
    assert len(gateway.events) == 3, "nothing is sent again"
    again = run_on(project, "traits", rudderstack_for(gateway.url), instance, adopt)
    assert again.success, "re-executing the adopting run changes nothing"
    meta = state_meta(state_path(project.state_dir, "traits", False))
    assert meta[SYNC_NAME_KEY] == "traits"
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    assert [e["userId"] for e in gateway.events[3:]] == ["u2"]


def test_a_state_from_before_the_identity_records_it_on_first_use(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    path = state_path(project.state_dir, "traits", False)
    gc.collect()
    with duckdb.connect(str(path)) as conn:
        conn.execute(f"delete from meta where key in ('{SYNC_NAME_KEY}', '{SYNC_SHAPE_KEY}')")
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    again = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert again.success, failure_text(again)
    assert [e["userId"] for e in gateway.events[2:]] == ["u2"]
    meta = state_meta(path)
    assert meta[SYNC_NAME_KEY] == "traits" and len(meta[SYNC_SHAPE_KEY]) == 16


def test_warehouse_state_of_another_sync_is_refused_naming_both(
    tmp_path: Path, gateway: TestGateway, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(2)
    project = write_pg_project(
        tmp_path, pg, {"traits": IDENTIFY_SYNC}, monkeypatch, state_schema="rs_state"
    )
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    (recorded,) = pg.sql(f"select value from rs_state.traits__meta where key = '{SYNC_NAME_KEY}'")
    assert recorded == ("traits",)
    # as if another sync's tables had been copied over this one's
    pg.sql(f"update rs_state.traits__meta set value = 'geo' where key = '{SYNC_NAME_KEY}'")
    refused = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert not refused.success
    message = failure_text(refused)
    assert "sync 'traits'" in message and "belongs to sync 'geo'" in message
    assert len(gateway.events) == 2


def test_a_renamed_sync_adopts_its_renamed_warehouse_tables(
    tmp_path: Path, gateway: TestGateway, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(3)
    old = write_pg_project(
        tmp_path, pg, {"old_traits": IDENTIFY_SYNC}, monkeypatch, state_schema="rs_state"
    )
    instance = DagsterInstance.ephemeral()
    assert run_on(old, "old_traits", rudderstack_for(gateway.url), instance).success
    assert len(gateway.events) == 3
    tables = pg.sql(
        "select tablename from pg_tables where schemaname = 'rs_state' "
        "and tablename like 'old\\_traits\\_\\_%'"
    )
    assert tables
    pg.sql(
        *(
            f'alter table rs_state."{name}" rename to "{name.replace("old_traits", "traits", 1)}"'
            for (name,) in tables
        )
    )
    new = write_pg_project(
        tmp_path, pg, {"traits": IDENTIFY_SYNC}, monkeypatch, state_schema="rs_state"
    )
    refused = run_on(new, "traits", rudderstack_for(gateway.url), instance)
    assert not refused.success
    assert "belongs to sync 'old_traits'" in failure_text(refused)

    adopted = run_on(
        new, "traits", rudderstack_for(gateway.url), instance, {"adopt_state_of": "old_traits"}
    )
    assert adopted.success, failure_text(adopted)
    assert len(gateway.events) == 3, "nothing is sent again"
    pg.sql("update users set plan = 'pro' where id = 2")
    assert run_on(new, "traits", rudderstack_for(gateway.url), instance).success
    assert [e["userId"] for e in gateway.events[3:]] == ["u2"]


# -- item 7: the state's failures name the sync, the place and the fix --------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted for the test (needs root: CAP_SYS_ADMIN)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Write a file until the disk is full."""
    try:
        with (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
    except OSError as full:
        assert full.errno == errno.ENOSPC


@pytest.mark.slow
def test_a_full_disk_at_a_commit_names_the_sync_the_file_and_the_fix(small_disk: Path) -> None:
    with open_state(small_disk, "traits", dry_run=False):
        pass
    fill(small_disk)
    with (
        pytest.raises(StateError) as error,
        open_state(small_disk, "traits", False) as state,
        state.transaction(),
    ):
        state.set_meta("note", "x" * 200_000)
    message = str(error.value)
    assert message.startswith("sync 'traits': the disk is full")
    assert str(state_path(small_disk, "traits", False)) in message and "Fix: free space" in message
    (small_disk / "filler").unlink()
    with open_state(small_disk, "traits", False) as state:  # rolled back, and usable again
        assert state.get_meta("note") is None


@pytest.mark.slow
def test_a_full_disk_during_a_run_fails_it_naming_the_sync_and_the_fix(
    small_disk: Path, gateway: TestGateway
) -> None:
    project = write_project(small_disk.parent / "project", {"traits": IDENTIFY_SYNC}, users=20)
    document = yaml.safe_load(project.config_path.read_text())
    document["state"] = str(small_disk)
    project.config_path.write_text(yaml.safe_dump(document))
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    fill(small_disk)
    sql(project.warehouse, "update users set plan = 'pro'")
    full = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert not full.success
    message = failure_text(full)
    assert "sync 'traits'" in message and "the disk is full" in message
    assert str(small_disk) in message and "Fix:" in message


def test_a_truncated_state_file_is_reported_as_one_that_cannot_be_opened(tmp_path: Path) -> None:
    """A state cut short after its metadata: DuckDB opens it and fails reading a table later."""
    with open_state(tmp_path, "traits", dry_run=False) as state:
        for round_ in range(2):
            rows = pa.table({"id": range(300_000), "x": [f"abcdefghij{round_}" * 3] * 300_000})
            state.replace_model_rows(
                pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
            )
            state.conn.execute("checkpoint")
        with state.transaction():
            state.set_meta("initialized", "true")
        state.conn.execute("checkpoint")
    path = state_path(tmp_path, "traits", False)
    with path.open("r+b") as file:
        file.truncate(int(path.stat().st_size * 0.75))

    with pytest.raises(StateError) as error, open_state(tmp_path, "traits", False) as state:
        run(state.conn, "select sum(length(x)) from model_rows")
    message = str(error.value)
    assert message.startswith(f"sync 'traits': cannot open its state {path}")
    assert "Could not read enough bytes" in message and "resync: true" in message


def test_a_lost_warehouse_connection_names_the_sync_the_warehouse_and_the_fix(
    pg: PgDatabase,
) -> None:
    warehouse = PostgresWarehouse(url=pg.url, state_schema="rs_state")
    with (
        pytest.raises(StateError) as error,
        open_warehouse_state(warehouse, "traits", "id", dry_run=False) as state,
    ):
        (pid,) = state.store.rows("select pg_backend_pid()")[0]
        state.store.conn.commit()
        pg.sql(f"select pg_terminate_backend({pid})")
        with state.transaction():
            state.set_meta("note", "x")
    message = str(error.value)
    assert message.startswith("sync 'traits': lost its connection to the warehouse")
    assert "rs_state" in message and "Fix: run again" in message and "nothing is lost" in message
    assert "pg-test-pw" not in message and "\n" not in message


def test_a_connection_lost_mid_delivery_fails_the_run_with_the_fix(
    tmp_path: Path, gateway: TestGateway, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(3)
    project = write_pg_project(
        tmp_path, pg, {"traits": IDENTIFY_SYNC}, monkeypatch, state_schema="rs_state"
    )
    instance = DagsterInstance.ephemeral()
    assert run_on(project, "traits", rudderstack_for(gateway.url), instance).success
    pg.sql("update users set plan = 'pro' where id = 2")

    def drop_connections(event: dict[str, Any]) -> bool:
        """The data plane accepts the event; meanwhile the state's connection drops."""
        pg.sql(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
        return False

    gateway.reject_events_where(drop_connections)
    failed = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert not failed.success
    message = failure_text(failed)
    assert "sync 'traits'" in message and "lost its connection to the warehouse" in message
    assert "Failed to rollback" not in message
    gateway.clear_faults()
    again = run_on(project, "traits", rudderstack_for(gateway.url), instance)
    assert again.success, failure_text(again)
    resent = [e for e in gateway.events[3:] if e["userId"] == "u2"]
    assert len({e["messageId"] for e in resent}) == 1, "the re-send is the same event"
