"""The three steps without Dagster: the functions the assets call, on a real state, warehouse and
gateway. What a run does is decided here; the assets only add logs, metadata and checks."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rudder_sync.diff import DiffMode
from rudder_sync.state import StateError, open_state
from rudder_sync.steps import deliver_windows, run_diff, take_snapshot
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import TRACK_SYNC, rudderstack_for, sql, write_project

LOG = logging.getLogger("test_steps")


def _mode() -> DiffMode:
    return DiffMode(resync=False, reset_baseline=False, nonce=uuid.uuid4().hex)


def test_snapshot_diff_deliver_as_plain_functions(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"users": dict(TRACK_SYNC, send_initial_results=True)}, 3)
    config = project.config()
    sync, warehouse = config.syncs["users"], build_warehouse(config.warehouse)
    sender = rudderstack_for(gateway.url)

    def run() -> tuple[dict[str, int], int]:
        with open_state(config.state, sync.name, dry_run=False) as state:
            taken = take_snapshot(state, sync, warehouse, None, [])
            diff = run_diff(state, sync, warehouse, [], _mode(), datetime.now(UTC))
            done = deliver_windows(
                state, sync, sender, uuid.uuid4().hex, LOG, [], True, gateway.url
            )
        assert taken.rows_by_window == {"": diff.summaries[""].model_rows}
        assert len(diff.frame) == sum(diff.summaries[""].counts.values())
        assert done.frame is not None and len(done.frame) == done.total.accepted
        return diff.summaries[""].counts, done.total.accepted

    assert run() == ({"added": 3, "changed": 0, "removed": 0}, 3)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    sql(
        project.warehouse,
        "update users set plan = 'pro' where id = 2; delete from users where id = 3",
    )
    assert run() == ({"added": 0, "changed": 1, "removed": 1}, 2)
    assert [e["event"] for e in gateway.events[3:]] == [
        "User Changed Subscription",
        "User Deleted Account",
    ]
    assert run() == ({"added": 0, "changed": 0, "removed": 0}, 0)


def test_a_diff_before_any_snapshot_says_what_to_materialize(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"users": TRACK_SYNC}, 1).config()
    with (
        open_state(config.state, "users", dry_run=False) as state,
        pytest.raises(StateError, match="no model snapshot yet; materialize users/snapshot first"),
    ):
        run_diff(
            state,
            config.syncs["users"],
            build_warehouse(config.warehouse),
            [],
            _mode(),
            datetime.now(UTC),
        )
