"""Resync, baseline reset and salted messageIds (issue 12, item 2).

Real Dagster runs against the real test gateway, on real DuckDB state files: a resync sends the
whole model again under messageIds RudderStack has not seen, a reset records the model without
sending, and every state has its own random salt so that a rebuilt state or a second deployment
never reuses an ID (RudderStack Cloud drops a repeated messageId for days).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ConfigError, parse_sync
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.state import SALT_KEY, SCHEMA_VERSION, state_path
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    Project,
    asset_metadata,
    cli_env,
    job_execute,
    rudderstack_for,
    sql,
    write_project,
)

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def run_with(
    project: Project,
    sync_name: str,
    rudderstack: RudderstackResource,
    diff: dict[str, Any] | None = None,
    raise_on_error: bool = False,
    partition_key: str | None = None,
) -> ExecuteInProcessResult:
    """A real in-process run of the sync's three assets with run config on its diff step."""
    config = project.config()
    instance = DagsterInstance.ephemeral()
    result = materialize(
        build_sync_assets(config.syncs[sync_name], config.state),
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        raise_on_error=raise_on_error,
        partition_key=partition_key,
        run_config={"ops": {f"{sync_name}__diff": {"config": diff or {}}}},
    )
    result.run_logs = [e.user_message for e in instance.all_logs(result.run_id)]  # type: ignore[attr-defined]
    return result


def failure_text(result: ExecuteInProcessResult) -> str:
    return "\n".join(
        event.event_specific_data.error.message  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure
    )


def check_results(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def state_rows(project: Project, sync: str, query: str) -> list[tuple]:
    gc.collect()  # Dagster's run may still hold a cursor on the file in this process
    path = state_path(project.state_dir, sync, dry_run=False)
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(query).fetchall()


def ids(events: list[dict[str, Any]]) -> set[str]:
    return {e["messageId"] for e in events}


APPROVED_RESYNC = {"resync": True, "approve_large_change": True}
APPROVED_RESET = {"reset_baseline": True, "approve_large_change": True}


# -- resync ---------------------------------------------------------------------------------


def test_resync_of_a_track_sync_sends_every_row_as_added_with_new_ids(
    tmp_path: Path, gateway: TestGateway
) -> None:
    sync = dict(TRACK_SYNC, send_initial_results=True)
    project = write_project(tmp_path, {"events": sync}, users=3)
    assert run_with(project, "events", rudderstack_for(gateway.url)).success
    first = list(gateway.events)
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    sql(project.warehouse, "delete from users where id = 3")

    result = run_with(project, "events", rudderstack_for(gateway.url), APPROVED_RESYNC)
    assert result.success, failure_text(result)
    resent = gateway.events[3:]
    by_user = {(e["userId"], e["event"]): e for e in resent}
    assert set(by_user) == {
        ("u1", "User Signed Up"),
        ("u2", "User Signed Up"),
        ("u3", "User Deleted Account"),  # a removal since the last run is still a removal
    }
    assert by_user[("u2", "User Signed Up")]["properties"]["plan"] == "pro"
    assert not ids(resent) & ids(first), "a resync must not reuse a messageId"
    diff = asset_metadata(result, "events", "diff")
    assert diff["resync"] is True and diff["reset_baseline"] is False
    assert (diff["added_to_send"], diff["removed_to_send"]) == (2, 1)
    assert check_results(result)["change_guard"].metadata["resync"].value is True

    # the resync is committed: the next run has nothing to send
    assert run_with(project, "events", rudderstack_for(gateway.url)).success
    assert len(gateway.events) == 6
    assert gateway.schema_errors == []


def test_resync_of_a_track_sync_without_added_sends_nothing_for_existing_rows(
    tmp_path: Path, gateway: TestGateway
) -> None:
    sync = dict(TRACK_SYNC, events={"changed": "User Changed Subscription"})
    project = write_project(tmp_path, {"events": sync}, users=2)
    assert run_with(project, "events", rudderstack_for(gateway.url)).success
    result = run_with(project, "events", rudderstack_for(gateway.url), APPROVED_RESYNC)
    assert result.success, failure_text(result)
    assert gateway.events == []
    assert asset_metadata(result, "events", "events")["committed_without_event"] == 2


def test_resync_of_an_identify_sync_sends_every_row_again_under_new_ids(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=4)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    first = list(gateway.events)
    assert len(first) == 4

    result = run_with(project, "traits", rudderstack_for(gateway.url), APPROVED_RESYNC)
    assert result.success, failure_text(result)
    again = gateway.events[4:]
    assert sorted(e["userId"] for e in again) == ["u1", "u2", "u3", "u4"]
    assert not ids(again) & ids(first)
    for before, after in zip(
        sorted(first, key=lambda e: e["userId"]),
        sorted(again, key=lambda e: e["userId"]),
        strict=True,
    ):
        assert before["context"]["traits"] == after["context"]["traits"]

    # a second resync is yet another set of IDs
    assert run_with(project, "traits", rudderstack_for(gateway.url), APPROVED_RESYNC).success
    assert not ids(gateway.events[8:]) & (ids(first) | ids(again))


def test_resync_without_approval_trips_the_guard_and_sends_nothing(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success

    refused = run_with(project, "traits", rudderstack_for(gateway.url), {"resync": True})
    assert not refused.success
    assert len(gateway.events) == 2
    guard = check_results(refused)["change_guard"]
    assert not guard.passed and "resync" in guard.metadata["tripped"].value
    assert "approve_large_change: true" in "\n".join(refused.run_logs)

    # the refused resync leaves nothing behind: a normal run sends nothing
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert len(gateway.events) == 2


def test_a_resync_cut_short_is_finished_by_the_next_run_with_the_same_ids(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    first = ids(gateway.events)

    gateway.fail_next(503, times=10_000)  # the data plane goes down during the resync
    failed = run_with(
        project,
        "traits",
        rudderstack_for(gateway.url, retry_max_seconds=0.3),
        APPROVED_RESYNC,
    )
    assert not failed.success
    gateway.clear_faults()
    recorded = dict(state_rows(project, "traits", "select __rs_pk, __rs_message_id from pending"))
    assert sorted(recorded) == ["1", "2", "3"]
    sql(project.warehouse, "update users set plan = 'team' where id = 3")  # changes meanwhile

    # a normal run, no run config: it finishes the resync under the recorded IDs
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    finished = {e["userId"]: e for e in gateway.events[3:]}
    assert sorted(finished) == ["u1", "u2", "u3"]
    assert finished["u1"]["messageId"] == recorded["1"]
    assert finished["u2"]["messageId"] == recorded["2"]
    # the row that changed is sent as its newer change, under an ID of its own
    assert finished["u3"]["context"]["traits"]["plan"] == "team"
    assert finished["u3"]["messageId"] not in set(recorded.values()) | first
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert len(gateway.events) == 6


@pytest.mark.slow  # a CLI in a subprocess
def test_resync_from_the_shell_with_run_config_file(tmp_path: Path, gateway: TestGateway) -> None:
    """`dagster job execute -c`: the way a resync is started outside the UI."""
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    run_config = tmp_path / "resync.yaml"
    run_config.write_text(yaml.safe_dump({"ops": {"traits__diff": {"config": APPROVED_RESYNC}}}))

    def execute(*extra: str) -> subprocess.CompletedProcess[str]:
        return job_execute("traits", env, tmp_path, *extra)

    first = execute()
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(gateway.events) == 2
    resync = execute("-c", str(run_config))
    assert resync.returncode == 0, resync.stderr[-3000:]
    assert sorted(e["userId"] for e in gateway.events[2:]) == ["u1", "u2"]
    assert not ids(gateway.events[2:]) & ids(gateway.events[:2])
    assert WRITE_KEY not in first.stdout + first.stderr + resync.stdout + resync.stderr


# -- reset_baseline -------------------------------------------------------------------------


def test_reset_baseline_drops_pending_changes_and_sends_only_later_ones(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")
    gateway.fail_next(503, times=10_000)
    failed = run_with(project, "traits", rudderstack_for(gateway.url, retry_max_seconds=0.3))
    assert not failed.success
    gateway.clear_faults()
    assert state_rows(project, "traits", "select __rs_pk from pending") == [("1",)]
    sql(project.warehouse, "delete from users where id = 2")
    sql(
        project.warehouse,
        "insert into users values (9, 'u9', 'a9', 'n@x', 'free', 'DE', now(), 'e')",
    )

    # not approved: the guard stops it and the pending change stays
    refused = run_with(project, "traits", rudderstack_for(gateway.url), {"reset_baseline": True})
    assert not refused.success
    assert "reset_baseline" in check_results(refused)["change_guard"].metadata["tripped"].value
    assert gateway.events[3:] == []

    result = run_with(project, "traits", rudderstack_for(gateway.url), APPROVED_RESET)
    assert result.success, failure_text(result)
    assert gateway.events[3:] == []
    assert asset_metadata(result, "traits", "diff")["reset_baseline"] is True
    assert asset_metadata(result, "traits", "events")["committed_without_event"] == 3
    assert state_rows(project, "traits", "select count(*) from pending") == [(0,)]

    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert gateway.events[3:] == []  # nothing pending, nothing changed
    sql(project.warehouse, "update users set plan = 'team' where id = 9")
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    (later,) = gateway.events[3:]
    assert later["userId"] == "u9" and later["context"]["traits"]["plan"] == "team"


def test_reset_baseline_on_a_first_run_records_without_sending(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    assert run_with(project, "traits", rudderstack_for(gateway.url), APPROVED_RESET).success
    assert gateway.events == []
    sql(project.warehouse, "update users set email = 'new@x' where id = 2")
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert [e["userId"] for e in gateway.events] == ["u2"]


def test_resync_and_reset_are_refused_together_and_on_partitioned_syncs(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC, "daily": PARTITIONED_SYNC}, users=2)
    both = run_with(
        project,
        "traits",
        rudderstack_for(gateway.url),
        {**APPROVED_RESYNC, "reset_baseline": True},
    )
    assert not both.success
    message = failure_text(both)
    assert "sync 'traits'" in message and "both resync and reset_baseline" in message
    assert "Fix:" in message

    partitioned = run_with(
        project, "daily", rudderstack_for(gateway.url), APPROVED_RESYNC, partition_key="2024-05-01"
    )
    assert not partitioned.success
    message = failure_text(partitioned)
    assert "sync 'daily'" in message and "message_id_salt" in message and "Fix:" in message
    assert gateway.events == []


# -- salted messageIds ----------------------------------------------------------------------


def test_a_rebuilt_state_and_a_second_deployment_never_reuse_message_ids(
    tmp_path: Path, gateway: TestGateway
) -> None:
    staging = write_project(tmp_path / "staging", {"traits": IDENTIFY_SYNC}, users=2)
    production = write_project(tmp_path / "production", {"traits": IDENTIFY_SYNC}, users=2)
    assert run_with(staging, "traits", rudderstack_for(gateway.url)).success
    assert run_with(production, "traits", rudderstack_for(gateway.url)).success
    staging_ids, production_ids = ids(gateway.events[:2]), ids(gateway.events[2:])
    assert len(staging_ids) == len(production_ids) == 2
    assert not staging_ids & production_ids

    state_path(production.state_dir, "traits", dry_run=False).unlink()  # deleted and rebuilt
    assert run_with(production, "traits", rudderstack_for(gateway.url)).success
    rebuilt = ids(gateway.events[4:])
    assert len(rebuilt) == 2 and not rebuilt & (staging_ids | production_ids)
    assert [(len(s),) for (s,) in _salts(production)] == [(32,)]


def _salts(project: Project) -> list[tuple[str]]:
    return state_rows(project, "traits", f"select value from meta where key = '{SALT_KEY}'")


def test_a_state_from_before_the_salt_gets_one_and_keeps_pending_ids(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """A schema-2 state (no salt, no origin, no quarantine columns) with a failed change."""
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    gateway.fail_next(503, times=10_000)
    assert not run_with(
        project, "traits", rudderstack_for(gateway.url, retry_max_seconds=0.3)
    ).success
    gateway.clear_faults()
    gc.collect()
    path = state_path(project.state_dir, "traits", dry_run=False)
    with duckdb.connect(str(path)) as conn:  # back to the layout of schema version 2
        conn.execute(f"delete from meta where key = '{SALT_KEY}'")
        conn.execute("update meta set value = '2' where key = 'schema_version'")
        conn.execute("alter table pending drop column __rs_origin")
        for column in ("__rs_hash", "__rs_attempts", "__rs_first_seen"):
            conn.execute(f"alter table rejected_rows drop column {column}")
        (pending_id,) = conn.execute("select __rs_message_id from pending").fetchone()

    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    (resent,) = gateway.events[2:]
    assert resent["userId"] == "u2" and resent["messageId"] == pending_id
    meta = dict(state_rows(project, "traits", "select key, value from meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION) and len(meta[SALT_KEY]) == 32

    sql(project.warehouse, "update users set plan = 'team' where id = 2")
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert gateway.events[3]["messageId"] not in {pending_id, gateway.events[1]["messageId"]}


# -- partitioned syncs: window-pure IDs, message_id_salt -----------------------------------

PARTITIONED_SYNC: dict[str, Any] = {
    "model": "select id, user_id, plan from users where updated_at < $partition_end",
    "primary_key": "id",
    "type": "identify",
    "user_id": "user_id",
    "mapping": {"plan": "plan"},
    "partitions": {"start": "2024-05-01", "cadence": "daily"},
}


def _window_ids(root: Path, gateway: TestGateway, salt: str | None) -> list[str]:
    sync = dict(PARTITIONED_SYNC, **({"message_id_salt": salt} if salt else {}))
    project = write_project(root, {"daily": sync}, users=3)
    before = len(gateway.events)
    result = run_with(project, "daily", rudderstack_for(gateway.url), partition_key="2024-05-01")
    assert result.success, failure_text(result)
    return sorted(e["messageId"] for e in gateway.events[before:])


def test_partitioned_ids_are_window_pure_and_message_id_salt_renews_them(
    tmp_path: Path, gateway: TestGateway
) -> None:
    plain_a = _window_ids(tmp_path / "a", gateway, None)
    plain_b = _window_ids(tmp_path / "b", gateway, None)  # another state: the same IDs
    assert len(plain_a) == 3 and plain_a == plain_b
    salted = _window_ids(tmp_path / "c", gateway, "resend-2024-06")
    salted_again = _window_ids(tmp_path / "d", gateway, "resend-2024-06")
    assert salted == salted_again and not set(salted) & set(plain_a)
    other = _window_ids(tmp_path / "e", gateway, "resend-2024-07")
    assert not set(other) & (set(salted) | set(plain_a))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"message_id_salt": "x"}, "key 'message_id_salt' is for partitioned syncs"),
        (
            {"message_id_salt": "  ", "partitions": PARTITIONED_SYNC["partitions"]},
            "key 'message_id_salt' is blank",
        ),
        ({"max_attempts": 0}, "key 'max_attempts'"),
        ({"max_atempts": 3}, "did you mean 'max_attempts'?"),
        ({"message_id_sal": "x"}, "did you mean 'message_id_salt'?"),
    ],
)
def test_new_sync_keys_fail_at_load_time_naming_sync_key_and_fix(
    extra: dict[str, Any], expected: str
) -> None:
    body = dict(IDENTIFY_SYNC, **extra)
    if "partitions" in extra:
        body["model"] = PARTITIONED_SYNC["model"]
    with pytest.raises(ConfigError) as error:
        parse_sync("traits", body)
    message = str(error.value)
    assert message.startswith("sync 'traits'") and expected in message and "Fix:" in message


def test_max_attempts_accepts_null_for_forever() -> None:
    assert parse_sync("traits", dict(IDENTIFY_SYNC, max_attempts=None)).max_attempts is None
    assert parse_sync("traits", dict(IDENTIFY_SYNC)).max_attempts == 5
