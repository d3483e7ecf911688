"""Record lookup (issue 23 item 5): `python -m rudder_sync lookup SYNC KEY` on real states.

Each project runs for real (Dagster's materialize against the test gateway), then the command reads
the state it left: local DuckDB files, a partitioned sync's windows, and in-warehouse state on the
real PostgreSQL server. The command runs in-process through its `main(argv)` (one subprocess test
of `python -m rudder_sync` itself).
"""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pytest
import yaml

from rudder_sync.cli import main as dispatch
from rudder_sync.cli.lookup import main
from rudder_sync.state import state_path

from .gateway import TestGateway
from .helpers import (
    HISTORY,
    HISTORY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    Project,
    cli_env,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)
from .postgres import PgDatabase, write_pg_project
from .test_quarantine import REASON, bad_plan, project_with_a_bad_row
from .test_resync import run_with
from .test_warehouse_state import HISTORY_ROWS

SYNC = dict(copy.deepcopy(TRACK_SYNC), send_initial_results=True)
# Between the runs: user 2 changes plan, user 3 is deleted, user 6 arrives without any ID.
CHANGES = [
    "update users set plan = 'pro' where id = 2",
    "delete from users where id = 3",
    "insert into users values (6, null, null, 'noid@x.io', 'free', 'FR', now(), 'e6')",
]


def lookup(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in-process: exit code, stdout, stderr."""
    gc.collect()  # Dagster's run may still hold the state file open in this process
    capsys.readouterr()  # what the runs before printed
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lookup_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = lookup(capsys, *argv, "--json")
    assert err == ""
    document = json.loads(out)
    assert code == (0 if document["found"] else 1)
    return document


def copying_the_model(project: Project) -> Project:
    """The project with `read_in_place: false`: the state keeps a copy of the model's rows."""
    document = yaml.safe_load(project.config_path.read_text())
    document["warehouse"] = {"type": "duckdb", "path": "warehouse.duckdb", "read_in_place": False}
    project.config_path.write_text(yaml.safe_dump(document))
    return project


def run_twice(root: Path, gateway: TestGateway) -> Project:
    """A track sync run twice against the gateway, with CHANGES in between; the state keeps the
    model's rows."""
    project = copying_the_model(write_project(root, {"events": SYNC}))
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success
    for statement in CHANGES:
        sql(project.warehouse, statement)
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success
    return project


@pytest.fixture
def two_runs(tmp_path: Path, gateway: TestGateway) -> Project:
    """The two runs in this test's own folder: for tests that hold or compare the state file."""
    return run_twice(tmp_path, gateway)


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, TestGateway]]:
    """The two runs made once for the tests that only read them (lookup never writes the state:
    test_lookup_never_writes_the_state), with the gateway that received their events."""
    with TestGateway() as gateway:
        yield run_twice(tmp_path_factory.mktemp("two_runs"), gateway), gateway


@pytest.fixture
def shared(shared_runs: tuple[Project, TestGateway]) -> Project:
    return shared_runs[0]


@pytest.fixture
def shared_gateway(shared_runs: tuple[Project, TestGateway]) -> TestGateway:
    return shared_runs[1]


def sent_ids(gateway: TestGateway, user_id: str) -> list[str]:
    return [e["messageId"] for e in gateway.events if e.get("userId") == user_id]


def test_a_delivered_key_shows_its_snapshot_model_row_and_delivery(
    shared: Project, shared_gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(shared.config_path)
    doc = lookup_json(capsys, "events", "1", config)
    assert doc["state"] == {
        "kind": "local",
        "location": str(state_path(shared.state_dir, "events", False)),
    }
    snapshot = doc["snapshot"]
    assert snapshot["status"] == "committed" and snapshot["version"] == 1
    assert snapshot["user_id"] == "u1" and snapshot["anonymous_id"] == "a1"
    assert snapshot["last_event_content"] == {
        "properties": {"email": "user1@example.com", "plan": "free"}
    }
    assert int(snapshot["fingerprint"]) > 0
    ((row),) = doc["model_rows"]
    assert row["window"] is None
    assert row["values"]["id"] == 1 and row["values"]["email"] == "user1@example.com"
    assert doc["pending"] == [] and doc["rejected"] == []
    (delivery,) = doc["deliveries"]
    assert delivery["message_id"] == sent_ids(shared_gateway, "u1")[0]
    assert delivery["status"] == "delivered" and delivery["change"] == "added"
    assert delivery["event_type"] == "track" and delivery["event"] == "User Signed Up"
    assert delivery["run_id"] and delivery["time"] and delivery["attempt"] == 1
    assert any("fingerprint" in note for note in doc["notes"])

    code, out, err = lookup(capsys, "events", "1", config)
    assert code == 0 and err == ""
    assert f"sync 'events', key '1' (local state {doc['state']['location']})" in out
    assert "snapshot: committed, version 1" in out
    assert "model row (latest snapshot): id=1, user_id=u1" in out
    assert "pending changes: none" in out and "rejected rows: none" in out
    assert f"delivered track 'User Signed Up' (added) messageId {delivery['message_id']}" in out
    assert f"run {delivery['run_id']} attempt 1" in out


def test_a_changed_key_lists_both_deliveries_in_order(
    shared: Project, shared_gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = lookup_json(capsys, "events", "2", str(shared.config_path))
    assert doc["snapshot"]["version"] == 2
    assert doc["snapshot"]["last_event_content"]["properties"]["plan"] == "pro"
    assert doc["model_rows"][0]["values"]["plan"] == "pro"
    changes = [(d["change"], d["event"], d["message_id"]) for d in doc["deliveries"]]
    first, second = sent_ids(shared_gateway, "u2")
    assert changes == [
        ("added", "User Signed Up", first),
        ("changed", "User Changed Subscription", second),
    ]
    assert doc["deliveries"][0]["run_id"] != doc["deliveries"][1]["run_id"]


def test_a_removed_key_has_a_tombstone_and_no_model_row(
    shared: Project, shared_gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = lookup_json(capsys, "events", "3", str(shared.config_path))
    assert doc["snapshot"]["status"] == "removed" and doc["snapshot"]["version"] == 2
    # a sync that sends 'removed' keeps the last content: the removed event carried it
    assert doc["snapshot"]["last_event_content"]["properties"]["email"] == "user3@example.com"
    assert doc["model_rows"] == []
    assert [d["event"] for d in doc["deliveries"]] == ["User Signed Up", "User Deleted Account"]
    assert [d["message_id"] for d in doc["deliveries"]] == sent_ids(shared_gateway, "u3")


def test_a_rejected_row_shows_why_and_since_when(
    shared: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = lookup_json(capsys, "events", "6", str(shared.config_path))
    assert doc["snapshot"] is None and doc["deliveries"] == [] and doc["pending"] == []
    (rejected,) = doc["rejected"]
    assert rejected["status"] == "rejected" and rejected["attempts"] == 1
    assert "user_id" in rejected["reason"] and rejected["first_seen"]
    assert doc["model_rows"][0]["values"]["user_id"] is None

    code, out, _ = lookup(capsys, "events", "6", str(shared.config_path))
    assert code == 0
    assert "snapshot: none (never committed)" in out
    assert f"rejected: {rejected['reason']} (diffs in a row: 1" in out
    assert "deliveries: none" in out


def test_an_unknown_key_says_so_and_exits_1(
    shared: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = lookup(capsys, "events", "99", str(shared.config_path))
    assert code == 1 and err == ""
    assert "key '99' was never seen: the state has no snapshot row" in out
    assert lookup_json(capsys, "events", "99", str(shared.config_path))["found"] is False


def test_an_integer_key_typed_with_leading_zeros_is_matched_as_stored(
    shared: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = lookup_json(capsys, "events", "007", str(shared.config_path))
    assert doc["found"] is False and doc["key"] == "7"
    doc = lookup_json(capsys, "events", "+02", str(shared.config_path))
    assert doc["key"] == "2" and doc["snapshot"]["version"] == 2


def test_a_text_key_is_matched_as_text(
    tmp_path: Path, gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    sync = dict(
        SYNC, model="select 'k-' || id as key, * exclude (id) from users", primary_key="key"
    )
    project = copying_the_model(write_project(tmp_path, {"events": sync}))
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success
    doc = lookup_json(capsys, "events", "k-4", str(project.config_path))
    assert doc["deliveries"][0]["message_id"] == sent_ids(gateway, "u4")[0]
    assert doc["model_rows"][0]["values"]["key"] == "k-4"


def test_a_model_read_in_place_leaves_no_row_copy_and_says_so(
    tmp_path: Path, gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path, {"events": SYNC})  # DuckDB, read in place
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success
    doc = lookup_json(capsys, "events", "1", str(project.config_path))
    assert doc["model_rows"] == [] and doc["snapshot"]["version"] == 1
    assert any("no copy of the model's rows is kept" in note for note in doc["notes"])
    code, out, _ = lookup(capsys, "events", "1", str(project.config_path))
    assert code == 0 and "model row (latest snapshot): none" in out
    assert "what the state keeps:\n" in out
    assert "the row's current values are in the warehouse" in out


def test_a_quarantined_change_shows_its_attempts_and_last_error(
    tmp_path: Path, gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=2)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(2):
        assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    doc = lookup_json(capsys, "traits", "2", str(project.config_path))
    (change,) = doc["pending"]
    assert change["status"] == "quarantined" and change["change"] == "added"
    assert change["attempts"] == 2 and change["max_attempts"] == 2
    assert REASON in change["last_error"]
    assert [(d["status"], d["attempt"]) for d in doc["deliveries"]] == [
        ("rejected", 1),
        ("rejected", 2),
    ]
    assert all(REASON in d["error"] for d in doc["deliveries"])
    assert {d["message_id"] for d in doc["deliveries"]} == {change["message_id"]}
    assert doc["deliveries"][0]["event_type"] == "identify"
    assert doc["snapshot"] is None

    code, out, _ = lookup(capsys, "traits", "2", str(project.config_path))
    assert code == 0
    assert f"added: quarantined, messageId {change['message_id']}, attempts 2/2" in out
    assert "last error:" in out and REASON in out


def test_unknown_sync_missing_state_and_window_of_an_unpartitioned_sync(
    shared: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(shared.config_path)
    code, out, err = lookup(capsys, "evnets", "1", config)
    assert (code, out) == (1, "")
    assert err == "error: no sync 'evnets' in the config. Fix: name one of: events.\n"
    code, _, err = lookup(capsys, "events", "1", config, "--window", "2024-01-01")
    assert code == 1 and "is not partitioned" in err and "leave out --window" in err

    fresh = write_project(tmp_path / "fresh", {"events": SYNC})
    code, out, err = lookup(capsys, "events", "1", str(fresh.config_path))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "has no state in" in err and "it has not run" in err


def test_a_dry_runs_state_is_read_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project(tmp_path, {"events": dict(SYNC, dry_run=True)})
    assert run_sync(project, "events", rudderstack_for(None)).success
    code, _, err = lookup(capsys, "events", "1", str(project.config_path))
    assert code == 1 and "add --dry-run-state to read it" in err
    doc = lookup_json(capsys, "events", "1", str(project.config_path), "--dry-run-state")
    (delivery,) = doc["deliveries"]
    assert delivery["status"] == "dry_run"


def test_lookup_never_writes_the_state(
    two_runs: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    path = state_path(two_runs.state_dir, "events", False)
    gc.collect()
    before = path.read_bytes()
    for key in ("1", "2", "3", "6", "99"):
        lookup(capsys, "events", key, str(two_runs.config_path))
    assert path.read_bytes() == before


# -- partitioned syncs ---------------------------------------------------------------------------


@pytest.fixture
def history(tmp_path: Path, gateway: TestGateway) -> Project:
    project = write_project(tmp_path, {"history": HISTORY_SYNC}, users=0)
    sql(project.warehouse, HISTORY)
    run_sync(
        project,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-07"),
    )
    return project


def test_a_partitioned_sync_shows_every_window_or_one(
    history: Project, gateway: TestGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(history.config_path)
    doc = lookup_json(capsys, "history", "1", config)
    assert doc["partitioned"] is True and doc["snapshot"] is None
    assert [(d["window"], d["event"], d["change"]) for d in doc["deliveries"]] == [
        ("2024-01-01", "Signed Up", "added"),
        ("2024-01-05", "Plan Changed", "changed"),
    ]
    assert [d["message_id"] for d in doc["deliveries"]] == sent_ids(gateway, "u1")
    # the run kept every window's rows: the key's row as each window saw it
    plans = {row["window"]: row["values"]["plan"] for row in doc["model_rows"]}
    assert plans == {
        **{f"2024-01-0{day}": "free" for day in range(1, 5)},
        **{f"2024-01-0{day}": "pro" for day in range(5, 8)},
    }

    doc = lookup_json(capsys, "history", "1", config, "--window", "2024-01-05")
    assert doc["window"] == "2024-01-05"
    assert [d["event"] for d in doc["deliveries"]] == ["Plan Changed"]
    assert [row["window"] for row in doc["model_rows"]] == ["2024-01-05"]

    doc = lookup_json(capsys, "history", "1", config, "--window", "2024-01-02")
    assert doc["deliveries"] == [] and doc["model_rows"][0]["values"]["plan"] == "free"

    doc = lookup_json(capsys, "history", "3", config, "--window", "2024-01-06")
    assert [d["event"] for d in doc["deliveries"]] == ["Account Deleted"]
    assert doc["model_rows"] == []  # deleted by then

    code, out, _ = lookup(capsys, "history", "4", config)
    assert code == 1 and "key '4' was never seen" in out  # never visible at a window's end
    code, out, _ = lookup(capsys, "history", "1", config, "--window", "2024-02-01")
    assert code == 1 and "was never seen in window 2024-02-01" in out


# -- in-warehouse state on PostgreSQL -------------------------------------------------------------


def test_in_warehouse_state_on_postgresql(
    tmp_path: Path,
    pg: PgDatabase,
    gateway: TestGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pg.seed_users(5)
    project = write_pg_project(
        tmp_path, pg, {"events": SYNC}, monkeypatch, state_schema="rudder_state"
    )
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success  # type: ignore[arg-type]
    pg.sql(
        "update users set plan = 'pro' where id = 2",
        "delete from users where id = 3",
        "insert into users values (6, null, null, 'noid@x.io', 'free', 'FR', now(), 'e6')",
    )
    assert run_sync(project, "events", rudderstack_for(gateway.url)).success  # type: ignore[arg-type]
    assert not state_path(project.state_dir, "events", False).exists()
    config = str(project.config_path)

    doc = lookup_json(capsys, "events", "2", config)
    assert doc["state"]["kind"] == "warehouse"
    assert "rudder_state" in doc["state"]["location"]
    assert [d["message_id"] for d in doc["deliveries"]] == sent_ids(gateway, "u2")
    assert [d["change"] for d in doc["deliveries"]] == ["added", "changed"]
    assert doc["snapshot"]["version"] == 2 and doc["snapshot"]["status"] == "committed"
    assert doc["snapshot"]["last_event_content"]["properties"]["plan"] == "pro"
    (row,) = doc["model_rows"]
    assert row["values"]["plan"] == "pro" and "__rs_wpk" not in row["values"]

    assert lookup_json(capsys, "events", "3", config)["snapshot"]["status"] == "removed"
    (rejected,) = lookup_json(capsys, "events", "6", config)["rejected"]
    assert "user_id" in rejected["reason"]
    code, out, err = lookup(capsys, "events", "99", config)
    assert code == 1 and "was never seen" in out
    # a run holding the sync's lock does not hold the lookup up (nor is it disturbed by it)
    with adbc.connect(pg.url) as holder, holder.cursor() as cursor:
        cursor.execute(
            "select pg_advisory_lock(hashtextextended('rudder_sync/rudder_state/events', 0))"
        )
        cursor.fetchall()
        assert lookup_json(capsys, "events", "2", config)["snapshot"]["version"] == 2
    password = pg.url.split("@")[0].rsplit(":", 1)[-1]
    for key in ("1", "2", "99"):
        _, out, err = lookup(capsys, "events", key, config)
        assert pg.url not in out + err and (len(password) < 4 or password not in out + err)


def test_a_partitioned_sync_with_its_state_in_postgresql(
    tmp_path: Path,
    pg: PgDatabase,
    gateway: TestGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pg.sql(
        "create table users_history (id int, user_id text, email text, plan text, "
        "valid_from timestamptz, valid_to timestamptz)",
        HISTORY_ROWS,
    )
    project = write_pg_project(
        tmp_path, pg, {"history": HISTORY_SYNC}, monkeypatch, state_schema="rudder_state"
    )
    week = ("2024-01-01", "2024-01-07")
    result = run_sync(project, "history", rudderstack_for(gateway.url), partition_range=week)  # type: ignore[arg-type]
    assert result.success
    config = str(project.config_path)

    doc = lookup_json(capsys, "history", "1", config)
    assert doc["state"]["kind"] == "warehouse" and doc["snapshot"] is None
    assert [(d["window"], d["event"]) for d in doc["deliveries"]] == [
        ("2024-01-01", "Signed Up"),
        ("2024-01-05", "Plan Changed"),
    ]
    assert [d["message_id"] for d in doc["deliveries"]] == sent_ids(gateway, "u1")
    plans = {row["window"]: row["values"]["plan"] for row in doc["model_rows"]}
    assert plans["2024-01-04"] == "free" and plans["2024-01-05"] == "pro" and len(plans) == 7
    assert all("__rs_wpk" not in row["values"] for row in doc["model_rows"])

    one = lookup_json(capsys, "history", "1", config, "--window", "2024-01-05")
    assert [d["event"] for d in one["deliveries"]] == ["Plan Changed"]
    assert [row["window"] for row in one["model_rows"]] == ["2024-01-05"]

    # the row without a user ID is rejected in every window of the run
    rejected = lookup_json(capsys, "history", "5", config)["rejected"]
    assert [row["window"] for row in rejected] == [f"2024-01-0{day}" for day in range(1, 8)]
    assert all("user_id" in row["reason"] for row in rejected)


# -- the command itself ---------------------------------------------------------------------------


@pytest.mark.slow
def test_python_m_rudder_sync_lookup(shared: Project, shared_gateway: TestGateway) -> None:
    env = cli_env(RUDDER_SYNC_CONFIG=str(shared.config_path), RUDDERSTACK_WRITE_KEY=WRITE_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "rudder_sync", "lookup", "events", "2", "--json"],
        env=env,
        cwd=shared.root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [d["message_id"] for d in document["deliveries"]] == sent_ids(shared_gateway, "u2")
    assert WRITE_KEY not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_state_locked_by_a_running_sync_is_one_line_and_retry(
    two_runs: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    path = state_path(two_runs.state_dir, "events", False)
    gc.collect()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " time.sleep(120)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out, err = lookup(capsys, "events", "1", str(two_runs.config_path))
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and out == ""
    assert err == (
        f"error: sync 'events': its state {path} is locked by a running sync; retry when that "
        "run has finished.\n"
    )


def test_the_dispatcher_knows_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch(["--help"]) == 0
    assert "lookup" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        dispatch(["lookup", "--help"])
    assert exited.value.code == 0
    assert "--window" in capsys.readouterr().out
