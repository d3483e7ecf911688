"""In-warehouse state (`state_schema`) on the real PostgreSQL server, against local mode.

Both modes run the same model history; the warehouse mode must send byte-for-byte the same
events (messageIds included: both states start from one salt), read out only the changed rows,
keep its state in the schema, survive failures and refuse concurrent runs.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rudder_sync.state import open_state, state_path

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, TRACK_SYNC, asset_metadata, rudderstack_for, run_sync
from .postgres import PgDatabase, PgProject, write_pg_project

SCHEMA = "rudder_sync"
SYNCS = {
    "user_events": dict(
        copy.deepcopy(TRACK_SYNC), send_initial_results=True, timestamp="updated_at"
    ),
    "user_traits": dict(
        copy.deepcopy(IDENTIFY_SYNC),
        model="select id, user_id, anon_id, email, plan, country, updated_at from users",
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
