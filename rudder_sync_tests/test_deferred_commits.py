"""Commits during delivery log the changes and record their IDs; the snapshot takes them at the end
(`SyncState.commit_changes(defer=True)`, `settle_commits`). A process that dies between the two
leaves committed changes in `pending`: the next open of the state settles them, so they are
neither re-sent nor seen as pending by the next diff.

The crash is real: a Python process that runs the sync and dies (os._exit) where the settling
would begin, against the real test gateway, on a real state file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rudder_sync import delivery
from rudder_sync.diff import DiffMode
from rudder_sync.lookup import lookup
from rudder_sync.state import SyncState, open_state, run
from rudder_sync.steps import run_diff, take_snapshot
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import (
    SYNC_NAME,
    assert_delivered_exactly,
    assert_state_settled,
    read_state,
    rudderstack_for,
    run_sync,
    seed_model,
)

REPO = Path(__file__).resolve().parents[1]

DIE_BEFORE_SETTLING = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    from rudder_sync.state import SyncState, run
    from rudder_sync_tests.helpers import Project, rudderstack_for, run_sync

    _settle = SyncState.settle_commits

    def settle_commits(self):
        # Opening the state settles nothing (a new state); the end of the delivery does.
        if run(self.conn, "select count(*) from committed_ranges")[0][0]:
            os._exit(137)
        return _settle(self)

    SyncState.settle_commits = settle_commits
    root, url, sync = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    run_sync(Project(root, root / "rudder_sync.yaml"), sync, rudderstack_for(url, max_request_kb=4))
    sys.exit("the settling was never reached")
    """
)


def test_a_run_killed_before_settling_its_commits_is_settled_by_the_next_open(
    tmp_path: Path, gateway: TestGateway
) -> None:
    model = seed_model(tmp_path, gateway.url, rows=400, added=300)
    script = tmp_path / "crash.py"
    script.write_text(DIE_BEFORE_SETTLING)
    crashed = subprocess.run(
        [sys.executable, str(script), str(tmp_path), gateway.url, SYNC_NAME],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 137, crashed.stderr[-3000:]
    delivered = len(gateway.events)
    assert_delivered_exactly(gateway.events, model.expected)

    # Committed (logged, their IDs recorded), not yet in the snapshot: still rows of pending.
    with read_state(model.state_file) as conn:
        (ranges,) = conn.execute("select count(*) from committed_ranges").fetchone()
        (logged,) = conn.execute(
            "select count(*) from delivery_log where status = 'delivered'"
        ).fetchone()
        (still_pending,) = conn.execute("select count(*) from pending where __rs_send").fetchone()
    assert ranges > 0
    assert logged == still_pending == len(model.expected)
    # until then, a lookup shows such a change delivered (not pending), with its delivery
    found = lookup(model.project.config(), SYNC_NAME, str(min(model.expected)[0]))
    assert [c["status"] for c in found.pending] == [
        "delivered (the snapshot takes it at the sync's next run)"
    ]
    assert [d["status"] for d in found.deliveries] == ["delivered"]
    assert found.deliveries[0]["message_id"] == found.pending[0]["message_id"]

    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert len(gateway.events) == delivered, "a committed change was sent again"
    assert_state_settled(model)
    with read_state(model.state_file) as conn:
        assert conn.execute("select count(*) from committed_ranges").fetchone() == (0,)


def test_settling_moves_exactly_the_committed_changes(tmp_path: Path, gateway: TestGateway) -> None:
    """Scattered ranges (more than a literal filter takes) and one long run: the snapshot takes
    exactly those changes, pending keeps the others with their messageIds."""
    model = seed_model(tmp_path, gateway.url, rows=300, added=100)
    config = model.project.config()
    sync, warehouse = config.syncs[SYNC_NAME], build_warehouse(config.warehouse)
    with open_state(config.state, SYNC_NAME, dry_run=False) as state:
        take_snapshot(state, sync, warehouse, None, [])
        run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC))
        before = _pending(state)
        ids = sorted(before)
        committed = set(ids[: 2 * 40 : 2]) | set(ids[-50:])  # 41 ranges, one of them long
        given = np.array(sorted(committed), dtype=np.int64)
        assert state.commit_changes(given, "run", "delivered", defer=True) == len(committed)
        assert _pending(state) == before  # recorded, not moved yet
        assert state.settle_commits() == len(committed)
        assert _pending(state) == {i: before[i] for i in set(ids) - committed}
        assert state.count("committed_ranges") == 0
        assert state.settle_commits() == 0
        taken = {pk: (version, deleted) for pk, version, deleted in _snapshot(state)}
        for i in committed:
            pk, change, _, version = before[i]
            assert taken[pk] == (version, change == "removed")
        for i in set(ids) - committed:  # the snapshot still has the version before, if any
            pk, _, _, version = before[i]
            assert taken.get(pk, (version - 1, False))[0] == version - 1


def _pending(state: SyncState) -> dict[int, tuple[str, str, str, int]]:
    """Pending changes by ID: key, change type, messageId, version."""
    rows = run(
        state.conn,
        "select __rs_change_id, __rs_pk, __rs_change, __rs_message_id, __rs_version from pending",
    )
    return {row[0]: row[1:] for row in rows}


def _snapshot(state: SyncState) -> list[tuple[str, int, bool]]:
    return run(state.conn, "select __rs_pk, __rs_version, __rs_deleted from snapshot")


def test_long_deliveries_settle_on_the_way(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SETTLE_EVERY_EVENTS committed changes move into the snapshot on the commit thread,
    while the sending goes on; the rest at the end. Scaled down: commits of 50, settles of 200."""
    model = seed_model(tmp_path, gateway.url, rows=400, added=700)
    monkeypatch.setattr(delivery, "COMMIT_EVERY_EVENTS", 50)
    monkeypatch.setattr(delivery, "SETTLE_EVERY_EVENTS", 200)
    settled: list[int] = []
    settle = SyncState.settle_commits

    def counted(self: SyncState) -> int:
        settled.append(settle(self))
        return settled[-1]

    monkeypatch.setattr(SyncState, "settle_commits", counted)
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url, max_request_kb=2))
    assert_delivered_exactly(gateway.events, model.expected)
    moved = [count for count in settled if count]
    assert len(moved) >= 3 and sum(moved) == len(model.expected), settled
    assert all(count >= 200 for count in moved[:-1])
    assert_state_settled(model)
