"""A first run that sends nothing stages its baseline instead of writing it as pending rows.

A track sync without send_initial_results records the model as its baseline and sends nothing.
Its diff used to number every row as a silent pending change (a sort of the whole model, which
spilled tens of GB at 100M rows) and the events step then moved them all into the snapshot. Now
the diff stages the rows past the listed ones (`diff.FRAME_SILENT_ROWS`, made small here) in
`state.BASELINE_TABLE`, and the events step's silent commit inserts them into the snapshot in
the transaction that marks the state initialised. What must not change: the snapshot it leaves
(so later diffs find the same changes), the counts and the listed rows, and that a baseline is
recorded whole or not at all. Real Dagster, real DuckDB files, the test gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

import rudder_sync.diff
from rudder_sync.diff import DiffMode
from rudder_sync.state import BASELINE_TABLE, open_state
from rudder_sync.steps import run_diff, take_snapshot
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import (
    TRACK_SYNC,
    Project,
    asset_metadata,
    read_state,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)

ROWS = 40
LISTED = 7  # the diff's output lists this many silent changes; the rest is staged

SNAPSHOT_SQL = (
    "select __rs_pk, __rs_hash, __rs_version, __rs_deleted, __rs_user_id, __rs_anonymous_id, "
    "__rs_props from snapshot order by __rs_pk"
)


@pytest.fixture(autouse=True)
def few_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rudder_sync.diff, "FRAME_SILENT_ROWS", LISTED)


def _state_rows(project: Project, query: str) -> list[tuple]:
    with read_state(project.state_dir / "events.duckdb") as conn:
        return conn.execute(query).fetchall()


def _has_staged(project: Project) -> bool:
    rows = _state_rows(
        project, f"select count(*) from duckdb_tables() where table_name = '{BASELINE_TABLE}'"
    )
    return bool(rows[0][0])


def _diff_only(project: Project) -> None:
    """The snapshot and diff steps of a run whose events step never ran (a crash between)."""
    config = project.config()
    sync, warehouse = config.syncs["events"], build_warehouse(config.warehouse)
    with open_state(config.state, "events", dry_run=False) as state:
        take_snapshot(state, sync, warehouse, None, [])
        run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC))


# Rows no baseline takes: a key twice, and a row without any ID.
UNSENDABLE = [
    "insert into users select * from users where id = 20",
    "insert into users (id, email, plan) values (41, 'nobody@example.com', 'free')",
]
VALID = ROWS - 1  # key 20 is out


@pytest.mark.parametrize(
    "sync",
    [TRACK_SYNC, dict(TRACK_SYNC, events={"added": "Signed Up", "changed": "Changed"})],
    ids=["keeps-values-for-removed", "keeps-none"],
)
def test_the_staged_baseline_leaves_the_snapshot_the_pending_path_left(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch, sync: dict
) -> None:
    staged = write_project(tmp_path / "staged", {"events": sync}, users=ROWS)
    for statement in UNSENDABLE:
        sql(staged.warehouse, statement)
    first = run_sync(staged, "events", rudderstack_for(gateway.url))
    meta = asset_metadata(first, "events", "diff")
    assert meta["added"] == VALID and meta["added_to_send"] == 0 and meta["first_run"] is True
    assert len(first.output_for_node("events__diff")) == LISTED
    assert meta["silent_changes_not_in_output"] == VALID - LISTED
    assert meta["rejected_rows"] == 3
    assert asset_metadata(first, "events", "events")["committed_without_event"] == VALID
    assert not _has_staged(staged)

    # every row listed: nothing staged, every row a pending row as before this change
    monkeypatch.setattr(rudder_sync.diff, "FRAME_SILENT_ROWS", ROWS * 2)
    pending = write_project(tmp_path / "pending", {"events": sync}, users=ROWS)
    for statement in UNSENDABLE:
        sql(pending.warehouse, statement)
    reference = run_sync(pending, "events", rudderstack_for(gateway.url))
    assert asset_metadata(reference, "events", "diff")["added"] == VALID

    snapshot = _state_rows(staged, SNAPSHOT_SQL)
    assert len(snapshot) == VALID
    assert snapshot == _state_rows(pending, SNAPSHOT_SQL)
    kept = [props is not None for *_, props in snapshot]
    assert all(kept) if "removed" in sync["events"] else not any(kept)
    rejected = "select __rs_pk, reason, __rs_attempts from rejected_rows order by all"
    assert _state_rows(staged, rejected) == _state_rows(pending, rejected)
    assert gateway.events == []


def test_later_diffs_find_exactly_the_changes_of_staged_rows(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=ROWS)
    run_sync(project, "events", rudderstack_for(gateway.url))
    sql(project.warehouse, "update users set plan = 'pro' where id in (2, 39)")
    sql(project.warehouse, "delete from users where id = 40")
    run_sync(project, "events", rudderstack_for(gateway.url))
    sent = sorted((e["properties"]["email"], e["event"]) for e in gateway.events)
    assert sent == [
        ("user2@example.com", "User Changed Subscription"),
        ("user39@example.com", "User Changed Subscription"),
        ("user40@example.com", "User Deleted Account"),  # the staged row's last values
    ]
    removed = next(e for e in gateway.events if e["event"] == "User Deleted Account")
    assert (removed["userId"], removed["anonymousId"]) == ("u40", "a40")


def test_a_baseline_staged_by_a_run_stopped_before_its_events_step_is_not_half_kept(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=ROWS)
    _diff_only(project)
    assert _has_staged(project)
    assert _state_rows(project, f"select count(*) from {BASELINE_TABLE}") == [(ROWS - LISTED,)]
    assert _state_rows(project, "select count(*) from snapshot") == [(0,)]
    assert _state_rows(project, "select value from meta where key = 'initialized'") == []

    # the next run is a first run again: it records the model as it is now, sending nothing
    sql(project.warehouse, "update users set plan = 'pro' where id = 30")
    result = run_sync(project, "events", rudderstack_for(gateway.url))
    assert asset_metadata(result, "events", "diff")["first_run"] is True
    assert gateway.events == []
    assert not _has_staged(project)
    plans = _state_rows(project, "select count(*) from snapshot where __rs_props like '%\"pro\"%'")
    assert plans == [(1,)]

    sql(project.warehouse, "update users set plan = 'team' where id = 30")
    run_sync(project, "events", rudderstack_for(gateway.url))
    assert [e["properties"]["plan"] for e in gateway.events] == ["team"]


def test_a_staged_baseline_left_behind_is_dropped_when_the_first_run_then_sends(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=ROWS)
    _diff_only(project)
    assert _has_staged(project)
    sync = dict(TRACK_SYNC, send_initial_results=True)
    project.config_path.write_text(
        yaml.safe_dump(
            {"warehouse": "warehouse.duckdb", "state": "state", "syncs": {"events": sync}}
        )
    )
    assert project.config().syncs["events"].send_initial_results

    run_sync(project, "events", rudderstack_for(gateway.url))
    assert len(gateway.events) == ROWS
    assert not _has_staged(project)
    assert _state_rows(project, "select count(*), count(distinct __rs_pk) from snapshot") == [
        (ROWS, ROWS)
    ]


def test_a_dry_run_of_a_first_run_records_no_baseline(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=ROWS)
    assert run_sync(project, "events", rudderstack_for(gateway.url), dry_run=True).success
    assert _state_rows(project, "select count(*) from snapshot") == [(0,)]
    assert _state_rows(project, "select value from meta where key = 'initialized'") == []

    sql(project.warehouse, "update users set plan = 'pro' where id = 30")
    result = run_sync(project, "events", rudderstack_for(gateway.url))
    assert asset_metadata(result, "events", "diff")["first_run"] is True
    assert gateway.events == []
