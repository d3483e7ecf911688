"""A DuckDB model read in place (the warehouse attached read-only into the sync's state) against
the same model copied into the state through Arrow (`read_in_place: false`, and every other
warehouse): the same events byte for byte, either may follow the other without a change, and the
model's names resolve in the warehouse only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from rudder_sync.diff import DiffMode
from rudder_sync.errors import WarehouseError
from rudder_sync.state import open_state
from rudder_sync.steps import READ_IN_PLACE_KEY, run_diff, take_snapshot
from rudder_sync.warehouses import DuckDBWarehouse

from .gateway import TestGateway
from .helpers import (
    TRACK_SYNC,
    Project,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)

# UUID and ENUM columns reach a copied state as VARCHAR: read in place they are cast the same way.
TYPED_SYNC: dict[str, Any] = dict(
    TRACK_SYNC,
    model="select id, user_id, anon_id, email, cast(plan as tier) as plan, account, country, "
    "updated_at, event_id from users",
    mapping={"email": "email", "plan": "plan", "account": "account", "country": "country"},
    timestamp="updated_at",
    send_initial_results=True,
)


def _typed_project(root: Path) -> Project:
    project = write_project(root, {"users": TYPED_SYNC}, 4)
    sql(
        project.warehouse,
        "create type tier as enum ('free', 'pro'); alter table users add column account uuid; "
        "update users set account = ('00000000-0000-4000-8000-00000000000' || id)::uuid",
    )
    return project


def _read_in_place(project: Project, on: bool) -> None:
    settings = yaml.safe_load(project.config_path.read_text())
    settings["warehouse"] = {"type": "duckdb", "path": "warehouse.duckdb", "read_in_place": on}
    project.config_path.write_text(yaml.safe_dump(settings))


def _sync(project: Project, url: str) -> tuple[dict[str, Any], bool]:
    """One run: its diff's metadata, and whether its snapshot left the rows in the warehouse."""
    result = run_sync(project, "users", rudderstack_for(url))
    snapshot = asset_metadata(result, "users", "snapshot")
    return asset_metadata(result, "users", "diff"), snapshot["read_in_place"]


def test_in_place_and_copied_models_send_the_same_bytes_and_follow_each_other(
    tmp_path: Path, gateway: TestGateway
) -> None:
    in_place = _typed_project(tmp_path / "in_place")
    _read_in_place(in_place, True)
    _, read_in_place = _sync(in_place, gateway.url)
    assert read_in_place is True
    first = sorted(gateway.events, key=lambda e: e["messageId"])
    assert [e["properties"]["plan"] for e in first] == ["free"] * 4
    assert first[0]["properties"]["account"].startswith("00000000-0000-4000-8000-0000000000")

    # The same state and warehouse, copied: the same salt, so the same messageIds.
    copied = Project(tmp_path / "copied", tmp_path / "copied" / "rudder_sync.yaml")
    shutil.copytree(in_place.root, copied.root)
    _read_in_place(copied, False)
    change = (
        "update users set plan = 'pro', updated_at = updated_at + interval 1 day where id = 2; "
        "delete from users where id = 3; insert into users values (9, 'u9', 'a9', 'x@y.z', "
        "'pro', 'FR', timestamptz '2024-06-01 00:00:00+00', 'e9', "
        "'00000000-0000-4000-8000-000000000009')"
    )
    sent = {}
    for project in (in_place, copied):
        sql(project.warehouse, change)
        before = len(gateway.events)
        diff, read_in_place = _sync(project, gateway.url)
        assert read_in_place is (project is in_place)
        assert diff["added"] == diff["changed"] == diff["removed"] == 1
        sent[project.root.name] = sorted(gateway.events[before:], key=lambda e: e["messageId"])
    # A removed row has no timestamp column left: its event is stamped with the run's time.
    for event in sent["in_place"] + sent["copied"]:
        if event["event"] == "User Deleted Account":
            assert event.pop("timestamp").startswith(str(datetime.now(UTC).year))
    assert sent["in_place"] == sent["copied"]
    assert len(sent["in_place"]) == 3

    # Each mode hashes rows as the other did: switching finds nothing to send.
    _read_in_place(in_place, False)
    _read_in_place(copied, True)
    for project in (in_place, copied):
        before = len(gateway.events)
        diff, read_in_place = _sync(project, gateway.url)
        assert read_in_place is (project is copied)
        assert (diff["added"], diff["changed"], diff["removed"]) == (0, 0, 0)
        assert len(gateway.events) == before


def _steps(project: Project, warehouse: DuckDBWarehouse) -> tuple[bool, dict[str, int]]:
    config = project.config()
    sync = config.syncs["users"]
    with open_state(config.state, "users", dry_run=False) as state:
        taken = take_snapshot(state, sync, warehouse, None, [])
        result = run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC))
        state.commit_silent_changes()  # as if delivered
    return taken.read_in_place, result.summaries[""].counts


def test_a_type_no_cast_reproduces_is_copied_instead(tmp_path: Path) -> None:
    sync = dict(TRACK_SYNC, model="select *, id::hugeint as big from users")
    project = write_project(tmp_path, {"users": sync}, 3)
    warehouse = DuckDBWarehouse(database=str(project.warehouse))
    read_in_place, counts = _steps(project, warehouse)
    assert read_in_place is False
    assert counts["added"] == 3


def test_the_models_names_resolve_in_the_warehouse_not_the_state(tmp_path: Path) -> None:
    """The state has tables `snapshot`, `pending` and `meta`: a model naming the warehouse's own
    tables of those names reads the warehouse's."""
    sync = dict(
        TRACK_SYNC,
        model="select s.*, p.note, m.tag from snapshot s join pending p using (id) "
        "cross join (select max(tag) as tag from main.meta) m",
    )
    project = write_project(tmp_path, {"users": sync}, 0)
    sql(
        project.warehouse,
        "create table snapshot as select i as id, 'u' || i as user_id, 'a' || i as anon_id, "
        "'e' || i as email, 'free' as plan, 'DE' as country, now() as updated_at, "
        "'e' || i as event_id from range(1, 6) t(i); "
        "create table pending as select i as id, 'n' as note from range(1, 6) t(i); "
        "create table meta as select 'x' as tag",
    )
    warehouse = DuckDBWarehouse(database=str(project.warehouse))
    assert _steps(project, warehouse) == (True, {"added": 5, "changed": 0, "removed": 0})
    sql(project.warehouse, "delete from snapshot where id = 5")
    assert _steps(project, warehouse) == (True, {"added": 0, "changed": 0, "removed": 1})


def test_a_failing_model_inside_a_transaction_leaves_the_state_connection_usable(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path, {"users": TRACK_SYNC}, 2)
    warehouse = DuckDBWarehouse(database=str(project.warehouse))
    with open_state(project.state_dir, "users", dry_run=False) as state:
        home = state.conn.execute("select current_database()").fetchone()
        with (
            pytest.raises(WarehouseError, match="boom"),
            warehouse.attach(state.conn, TRACK_SYNC["model"]) as model,
            state.transaction(),
        ):
            state.set_meta("written", "then rolled back")
            with model.reading():
                state.conn.execute(f"select error('boom') from {model.relation}").fetchall()
        assert state.conn.execute("select current_database()").fetchone() == home
        assert state.get_meta("written") is None
        databases = state.conn.execute("select database_name from duckdb_databases()").fetchall()
        assert ("__rs_warehouse",) not in databases


def test_a_model_over_its_time_limit_is_interrupted_with_the_fix(tmp_path: Path) -> None:
    sync = dict(TRACK_SYNC, model=TRACK_SYNC["model"] + ", range(10000000000)")
    project = write_project(tmp_path, {"users": sync}, 2)
    warehouse = DuckDBWarehouse(database=str(project.warehouse), statement_timeout_seconds=0.5)
    with open_state(project.state_dir, "users", dry_run=False) as state:
        with pytest.raises(WarehouseError, match="statement_timeout_seconds=0.5"):
            take_snapshot(state, project.config().syncs["users"], warehouse, None, [])
        assert state.get_meta(READ_IN_PLACE_KEY) is None
        assert not state.has_table("model_rows")


def test_a_warehouse_locked_by_a_writer_fails_naming_the_file(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"users": TRACK_SYNC}, 2)
    warehouse = DuckDBWarehouse(database=str(project.warehouse))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
            "time.sleep(60)",
            str(project.warehouse),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with open_state(project.state_dir, "users", dry_run=False) as state:
            with pytest.raises(WarehouseError, match=f"cannot open warehouse {project.warehouse}"):
                take_snapshot(state, project.config().syncs["users"], warehouse, None, [])
            assert state.conn.execute("select current_database()").fetchone() == ("users",)
    finally:
        holder.kill()
        holder.wait()


def test_duckdb_settings_of_its_own_keep_the_copy(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"users": TRACK_SYNC}, 2)
    warehouse = DuckDBWarehouse(database=str(project.warehouse), connection_config={"threads": 1})
    assert _steps(project, warehouse) == (False, {"added": 2, "changed": 0, "removed": 0})
