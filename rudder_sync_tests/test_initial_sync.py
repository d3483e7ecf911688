"""What the initial sync's cuts (issue 25 item 3) must leave as it was: the messageIds a diff
derives, on a real state file from a real DuckDB warehouse."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

from rudder_sync.diff import DiffMode
from rudder_sync.state import SALT_KEY, open_state, run
from rudder_sync.steps import run_diff, take_snapshot
from rudder_sync.warehouses import build_warehouse

from .helpers import TRACK_SYNC, write_project


def test_message_ids_are_the_md5_of_the_change_shaped_as_a_uuid(tmp_path: Path) -> None:
    """md5 of (salt, sync, key, version, change, content hash), joined by chr(31), written
    8-4-4-4-12: the ID every release derived, so a change pending across an upgrade keeps it."""
    project = write_project(tmp_path, {"users": dict(TRACK_SYNC, send_initial_results=True)}, 50)
    config = project.config()
    sync, warehouse = config.syncs["users"], build_warehouse(config.warehouse)
    with open_state(config.state, "users", dry_run=False) as state:
        take_snapshot(state, sync, warehouse, None, [])
        run_diff(state, sync, warehouse, [], DiffMode(), datetime.now(UTC))
        salt = state.get_meta(SALT_KEY)
        rows = run(
            state.conn,
            "select __rs_pk, __rs_version, __rs_change, __rs_hash::varchar, __rs_message_id "
            "from pending where __rs_send",
        )
    assert len(rows) == 50
    for pk, version, change, content_hash, message_id in rows:
        text = chr(31).join([salt, "users", pk, str(version), change, content_hash])
        assert message_id == str(uuid.UUID(hashlib.md5(text.encode()).hexdigest()))
