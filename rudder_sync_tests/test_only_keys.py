"""Run config `only_keys` on the events step: send a few rows' pending changes first.

Real Dagster runs of a real project against the test gateway: the chosen rows' events go out with
the messageIds a plain run gives them (a twin project, copied before, runs without only_keys),
the other rows' changes stay pending untouched and go with the next plain run, and a key without
a pending change fails the run before anything is sent. In-warehouse state on PostgreSQL too.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.state import state_path
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import (
    HISTORY,
    HISTORY_SYNC,
    TRACK_SYNC,
    Project,
    asset_metadata,
    failure_text,
    read_state,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)
from .postgres import PgDatabase, write_pg_project

SYNC = "users"
CHANGE_ALL = "update users set plan = 'pro' where id between 1 and 5"


def run_events(
    project: Any,
    rudderstack: RudderstackResource,
    events: dict[str, Any],
    partition_key: str | None = None,
    events_only: bool = False,
) -> ExecuteInProcessResult:
    """The sync's three assets (or its events step alone) in real Dagster, with ``events`` as
    the events step's run config."""
    config = project.config()
    return materialize(
        build_sync_assets(config.syncs[SYNC], config.state),
        selection=[AssetKey([SYNC, "events"])] if events_only else None,
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        partition_key=partition_key,
        run_config={"ops": {f"{SYNC}__events": {"config": events}}},
    )


def ids_by_user(events: list[dict[str, Any]]) -> dict[str, str]:
    """messageId of each user's event (one event per user in these tests)."""
    users = [event["userId"] for event in events]
    assert len(users) == len(set(users)), f"a user got two events: {users}"
    return {event["userId"]: event["messageId"] for event in events}


def pending_attempts(state_dir: Path) -> dict[str, int]:
    with read_state(state_path(state_dir, SYNC, False)) as conn:
        rows = conn.sql("select __rs_pk, __rs_attempts from pending where __rs_send").fetchall()
    return {pk: attempts for pk, attempts in rows}


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A delivered project whose 5 rows then changed, made once: each test runs on copies."""
    project = write_project(tmp_path_factory.mktemp("main"), {SYNC: copy.deepcopy(TRACK_SYNC)})
    with TestGateway() as gateway:
        assert run_sync(project, SYNC, rudderstack_for(gateway.url)).success  # the baseline
    sql(project.warehouse, CHANGE_ALL)
    return project


def _copy(project: Project, root: Path) -> Project:
    """The project's folder (YAML, warehouse, state) copied to `root`: the same state salt."""
    shutil.copytree(project.root, root)
    return Project(root=root, config_path=root / project.config_path.name)


@pytest.fixture
def changed(delivered: Project, tmp_path: Path) -> tuple[Project, Project]:
    """This test's copy of the delivered project, and its twin (another copy)."""
    return _copy(delivered, tmp_path / "main"), _copy(delivered, tmp_path / "twin")


def test_only_keys_sends_those_rows_first_then_the_rest(changed: tuple[Any, Any]) -> None:
    project, twin = changed
    with TestGateway() as gateway:
        result = run_events(project, rudderstack_for(gateway.url), {"only_keys": ["2", 4]})
        assert result.success, failure_text(result)
        first = ids_by_user(gateway.events)
        assert set(first) == {"u2", "u4"}
        metadata = asset_metadata(result, SYNC, "events")
        assert metadata["only_keys"] == ["2", "4"]
        assert metadata["held_back"] == 3
        # The others stay pending, their attempts not counted.
        assert pending_attempts(project.state_dir) == {"1": 0, "3": 0, "5": 0}

        sent_before = len(gateway.events)
        result = run_events(project, rudderstack_for(gateway.url), {})
        assert result.success, failure_text(result)
        rest = ids_by_user(gateway.events[sent_before:])
        assert set(rest) == {"u1", "u3", "u5"}
        assert pending_attempts(project.state_dir) == {}

    with TestGateway() as gateway:  # the twin: one plain run, as without only_keys
        assert run_events(twin, rudderstack_for(gateway.url), {}).success
        plain = ids_by_user(gateway.events)
    assert {**first, **rest} == plain


def test_an_unknown_key_fails_naming_it_and_sends_nothing(changed: tuple[Any, Any]) -> None:
    project, _ = changed
    with TestGateway() as gateway:
        result = run_events(project, rudderstack_for(gateway.url), {"only_keys": [2, "x7", 99]})
        assert not result.success
        message = failure_text(result)
        assert "only_keys" in message and "'x7', '99'" in message and "'2'" not in message
        assert "nothing was sent" in message
        assert gateway.events == []
    assert pending_attempts(project.state_dir) == {str(i): 0 for i in range(1, 6)}


@pytest.mark.parametrize("keys", [[], [1.5], [True], [["1"]]])
def test_only_keys_that_are_not_keys_fail_before_the_state_is_read(
    changed: tuple[Any, Any], keys: list[Any]
) -> None:
    project, _ = changed
    with TestGateway() as gateway:
        result = run_events(project, rudderstack_for(gateway.url), {"only_keys": keys})
        assert not result.success
        message = failure_text(result)
        assert "sync 'users': run config only_keys has" in message and "Fix:" in message
        assert gateway.events == []
    assert pending_attempts(project.state_dir) == {str(i): 0 for i in range(1, 6)}


def test_dry_run_with_only_keys_previews_those_rows(changed: tuple[Any, Any]) -> None:
    project, _ = changed
    with TestGateway() as gateway:
        result = run_events(
            project, rudderstack_for(gateway.url), {"only_keys": ["3"], "dry_run": True}
        )
        assert result.success, failure_text(result)
        assert gateway.events == []
    metadata = asset_metadata(result, SYNC, "events")
    assert metadata["only_keys"] == ["3"] and metadata["held_back"] == 4
    preview = str(metadata)
    assert "u3" in preview and "u1" not in preview  # the sample payload is row 3's
    assert pending_attempts(project.state_dir) == {str(i): 0 for i in range(1, 6)}


def test_partitioned_sync_sends_only_those_keys_per_window(tmp_path: Path) -> None:
    """A partitioned sync: the keys' changes of the run's window go, the rest of it waits for
    the window's events step; a whole re-run of the window diffs it again and sends it all again,
    under the same messageIds (docs/operations.md says so)."""
    project = write_project(tmp_path / "p", {SYNC: copy.deepcopy(HISTORY_SYNC)}, users=0)
    sql(project.warehouse, HISTORY)
    with TestGateway() as gateway:
        rudderstack = rudderstack_for(gateway.url)
        result = run_events(project, rudderstack, {"only_keys": [3]}, "2024-01-01")
        assert result.success, failure_text(result)
        assert [(e["userId"], e["event"]) for e in gateway.events] == [("u3", "Signed Up")]
        assert asset_metadata(result, SYNC, "events")["held_back"] == 1
        result = run_events(project, rudderstack, {"only_keys": [2]}, "2024-01-02")
        assert not result.success and "'2'" in failure_text(result)  # u2 signs up on Jan 3
        assert run_events(project, rudderstack, {}, "2024-01-01", events_only=True).success
        assert [(e["userId"], e["event"]) for e in gateway.events[1:]] == [("u1", "Signed Up")]
        first = ids_by_user(gateway.events)
        assert run_events(project, rudderstack, {}, "2024-01-01").success  # the whole window
        assert ids_by_user(gateway.events[2:]) == first


def test_in_warehouse_state_sends_only_those_keys(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(5)
    project = write_pg_project(
        tmp_path / "pg",
        pg,
        {SYNC: copy.deepcopy(TRACK_SYNC)},
        monkeypatch,
        state_schema="rudder_sync",
    )
    with TestGateway() as gateway:
        assert run_sync(project, SYNC, rudderstack_for(gateway.url)).success  # the baseline
        pg.sql(CHANGE_ALL)
        result = run_events(project, rudderstack_for(gateway.url), {"only_keys": [5]})
        assert result.success, failure_text(result)
        assert set(ids_by_user(gateway.events)) == {"u5"}
        assert asset_metadata(result, SYNC, "events")["held_back"] == 4
        # The other four stay pending in the warehouse's table, no attempt counted.
        assert pg.sql(
            "select count(*), max(__rs_attempts) from rudder_sync.users__pending where __rs_send"
        ) == [(4, 0)]
        result = run_events(project, rudderstack_for(gateway.url), {"only_keys": ["nope"]})
        assert not result.success and "'nope'" in failure_text(result)
        assert len(gateway.events) == 1
        assert run_events(project, rudderstack_for(gateway.url), {}).success
        assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3", "u4", "u5"]
    assert pg.sql("select count(*) from rudder_sync.users__pending") == [(0,)]
