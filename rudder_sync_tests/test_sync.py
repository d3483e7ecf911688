"""The core sync semantics, end to end: real Dagster runs, real DuckDB files, the test gateway."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rudder_sync.events import LIBRARY_NAME
from rudder_sync.state import state_path

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    Project,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    table_rows,
    write_project,
)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _track(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(TRACK_SYNC)
    body.update(changes)
    return body


def _keys(events: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(userId, event name or type) pairs, sorted, to compare what was sent."""
    return sorted((e.get("userId"), e.get("event") or e["type"]) for e in events)


def _run(project: Project, name: str, gateway: TestGateway, **kw: Any) -> Any:
    return run_sync(project, name, rudderstack_for(gateway.url), **kw)


# -- 1. first run ------------------------------------------------------------------------------


def test_first_run_identify_sends_every_row(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    _run(project, "traits", gateway)
    assert _keys(gateway.events) == [("u1", "identify"), ("u2", "identify"), ("u3", "identify")]


def test_first_run_track_records_baseline_without_sending(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=3)
    result = _run(project, "events", gateway)
    assert gateway.events == []
    diff = asset_metadata(result, "events", "diff")
    assert diff["added"] == 3 and diff["added_to_send"] == 0 and diff["first_run"] is True
    # The preview is a table the UI renders inline: the diff frame's first rows, narrowed.
    preview = table_rows(diff["preview"])
    frame = result.output_for_node("events__diff")
    assert len(preview) == 3 and list(preview[0])[:3] == ["id", "change", "event"]
    assert [row["change"] for row in preview] == ["added (not sent)"] * 3
    assert [row["userId"] for row in preview] == list(frame["user_id"])
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in preview[0].values())
    # the baseline is committed: a second run with no change sends nothing
    _run(project, "events", gateway)
    assert gateway.events == []


def test_first_run_track_with_send_initial_results(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"events": _track(send_initial_results=True)}, users=2)
    _run(project, "events", gateway)
    assert _keys(gateway.events) == [("u1", "User Signed Up"), ("u2", "User Signed Up")]


# -- 2. later runs -----------------------------------------------------------------------------


def test_later_runs_send_exactly_added_changed_removed(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=4)
    _run(project, "events", gateway)
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    sql(project.warehouse, "delete from users where id = 3")
    sql(
        project.warehouse,
        "insert into users values (9, 'u9', 'a9', 'n@x.io', 'free', 'FR', now(), 'e9')",
    )
    result = _run(project, "events", gateway)
    assert _keys(gateway.events) == [
        ("u2", "User Changed Subscription"),
        ("u3", "User Deleted Account"),
        ("u9", "User Signed Up"),
    ]
    by_user = {e["userId"]: e for e in gateway.events}
    assert by_user["u2"]["properties"] == {"email": "user2@example.com", "plan": "pro"}
    # removed carries the last delivered values
    assert by_user["u3"]["properties"] == {"email": "user3@example.com", "plan": "free"}
    assert by_user["u3"]["anonymousId"] == "a3"
    events_meta = asset_metadata(result, "events", "events")
    assert events_meta["events_accepted"] == 3 and events_meta["dagster/row_count"] == 3

    # nothing changed: nothing sent
    before = len(gateway.events)
    _run(project, "events", gateway)
    assert len(gateway.events) == before

    # a change only in columns the event does not carry: nothing sent
    sql(project.warehouse, "update users set country = 'US', updated_at = now()")
    _run(project, "events", gateway)
    assert len(gateway.events) == before


def test_identify_removed_sends_nothing_and_changed_sends_traits(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    _run(project, "traits", gateway)
    sql(project.warehouse, "delete from users where id = 1")
    sql(project.warehouse, "update users set email = 'new@example.com' where id = 2")
    _run(project, "traits", gateway)
    later = gateway.events[3:]
    assert [(e["userId"], e["context"]["traits"]) for e in later] == [
        ("u2", {"email": "new@example.com", "plan": "free"})
    ]


def test_unsent_change_types_still_commit(tmp_path: Path, gateway: TestGateway) -> None:
    sync = _track(events={"added": "Signed Up"}, send_initial_results=True)
    project = write_project(tmp_path, {"events": sync}, users=2)
    _run(project, "events", gateway)
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")
    _run(project, "events", gateway)
    _run(project, "events", gateway)
    assert _keys(gateway.events) == [("u1", "Signed Up"), ("u2", "Signed Up")]


# -- 3. payload shape --------------------------------------------------------------------------


def test_payload_shapes_match_rudderstack_sdks(tmp_path: Path, gateway: TestGateway) -> None:
    syncs = {"events": _track(send_initial_results=True), "traits": IDENTIFY_SYNC}
    project = write_project(tmp_path, syncs, users=2)
    sql(project.warehouse, "update users set user_id = null where id = 2")
    _run(project, "events", gateway)
    _run(project, "traits", gateway)
    track = [e for e in gateway.events if e["type"] == "track"]
    identify = [e for e in gateway.events if e["type"] == "identify"]
    assert len(track) == 2 and len(identify) == 2
    for event in gateway.events:
        assert isinstance(event["messageId"], str) and event["messageId"]
        assert ISO_UTC.match(event["timestamp"]), event["timestamp"]
        assert event["context"]["library"]["name"] == LIBRARY_NAME
        assert event["context"]["library"]["version"]
        assert "None" not in (event.get("userId"), event.get("anonymousId"))
    anonymous = next(e for e in track if e["anonymousId"] == "a2")
    assert "userId" not in anonymous
    assert set(anonymous) >= {"type", "event", "anonymousId", "properties", "messageId"}
    assert "traits" not in identify[0] and identify[0]["context"]["traits"]["plan"] == "free"
    assert "properties" not in identify[0]
    assert gateway.schema_errors == []


# -- 4. messageId ------------------------------------------------------------------------------


def test_message_id_column_is_used(tmp_path: Path, gateway: TestGateway) -> None:
    sync = _track(send_initial_results=True, message_id="event_id")
    project = write_project(tmp_path, {"events": sync}, users=2)
    _run(project, "events", gateway)
    assert sorted(e["messageId"] for e in gateway.events) == ["e1", "e2"]


def test_deterministic_message_ids_are_stable_for_a_change_and_new_for_the_next(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=2)
    _run(project, "events", gateway)  # baseline
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")

    gateway.fail_next(500, times=50)  # the data plane is down for this run
    failed = run_sync(
        project,
        "events",
        rudderstack_for(gateway.url, retry_max_seconds=0.5),
        raise_on_error=False,
    )
    assert not failed.success
    assert gateway.events == []
    gateway.clear_faults()

    _run(project, "events", gateway)  # the pending change goes out now
    first = gateway.events[-1]
    sql(project.warehouse, "update users set plan = 'free' where id = 1")  # back to the old value
    _run(project, "events", gateway)
    back = gateway.events[-1]
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")  # and again
    _run(project, "events", gateway)
    again = gateway.events[-1]
    assert first["properties"]["plan"] == again["properties"]["plan"] == "pro"
    assert len({first["messageId"], back["messageId"], again["messageId"]}) == 3


def test_pending_change_keeps_message_id_and_timestamp_across_failed_runs(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=2)
    _run(project, "events", gateway)
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    # events stored by the gateway, then the connection is cut: the client must retry, and the
    # repeat must be the same event
    gateway.cut_next(times=1, after_storing=True)
    _run(project, "events", gateway)
    assert len(gateway.events) == 2
    assert gateway.events[0] == gateway.events[1]


def test_removed_and_readded_key_gets_a_new_message_id(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": _track(send_initial_results=True)}, users=1)
    _run(project, "events", gateway)
    sql(project.warehouse, "delete from users")
    _run(project, "events", gateway, approve_large_change=True)  # an emptied model trips the guard
    sql(
        project.warehouse,
        "insert into users values (1, 'u1', 'a1', 'user1@example.com', 'free', 'DE', now(), 'e1')",
    )
    _run(project, "events", gateway)
    names = [e["event"] for e in gateway.events]
    assert names == ["User Signed Up", "User Deleted Account", "User Signed Up"]
    assert gateway.events[0]["properties"] == gateway.events[2]["properties"]
    assert gateway.events[0]["messageId"] != gateway.events[2]["messageId"]


# -- 5. values and timestamps ------------------------------------------------------------------


def test_timestamp_column_and_typed_values(tmp_path: Path, gateway: TestGateway) -> None:
    sync = {
        "model": "select * from typed",
        "primary_key": "id",
        "type": "identify",
        "user_id": "uid",
        "timestamp": "ts",
        "mapping": {
            "price": "price",
            "big": "big",
            "ratio": "ratio",
            "tags": "tags",
            "blob": "blob",
            "uuid": "uuid",
            "day": "day",
            "at": "ts",
        },
    }
    project = write_project(tmp_path, {"typed": sync}, users=0)
    sql(
        project.warehouse,
        """
        create table typed as select 1 as id, 42::bigint as uid,
            timestamptz '1969-07-20 20:17:40+00' as ts, 12345678901234567890.123456::decimal(38,6)
            as price, 170141183460469231731687303715884105727::hugeint as big,
            'nan'::double as ratio, ['a', 'b'] as tags, '\\xFF\\x00'::blob as blob,
            '5f0c9b4e-2b0a-4a51-9b7c-6a1c0e4f7a11'::uuid as uuid, date '1900-01-02' as day
        """,
    )
    _run(project, "typed", gateway)
    (event,) = gateway.events
    traits = event["context"]["traits"]
    assert event["userId"] == "42"
    assert event["timestamp"].startswith("1969-07-20T20:17:40")
    assert traits["at"] == event["timestamp"]
    assert traits["ratio"] is None and traits["tags"] == ["a", "b"]
    assert traits["blob"] == "/wA=" and traits["uuid"] == "5f0c9b4e-2b0a-4a51-9b7c-6a1c0e4f7a11"
    assert traits["day"] == "1900-01-02"
    raw = next(r for r in gateway.requests if r.status == 200)
    assert b"12345678901234567890.123456" in (raw.body or b"")
    assert b"170141183460469231731687303715884105727" in (raw.body or b"")


def test_default_timestamp_is_the_time_the_change_was_first_seen(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=1)
    start = datetime.now().astimezone()
    _run(project, "traits", gateway)
    (event,) = gateway.events
    sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert abs((sent - start).total_seconds()) < 60


# -- 6. rows that cannot be sent ---------------------------------------------------------------


def test_bad_rows_are_reported_and_the_rest_is_sent(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=4)
    sql(
        project.warehouse,
        "insert into users values (null, 'u7', 'a7', 'x', 'free', 'DE', now(), 'e')",
    )
    sql(
        project.warehouse,
        "insert into users values (2, 'u2b', 'a2b', 'x', 'free', 'DE', now(), 'e')",
    )
    sql(project.warehouse, "update users set user_id = null, anon_id = '   ' where id = 3")
    result = _run(project, "traits", gateway)
    assert _keys(gateway.events) == [("u1", "identify"), ("u4", "identify")]
    diff = asset_metadata(result, "traits", "diff")
    assert diff["rejected_rows"] == 4
    reasons = {(r["key"], r["reason"].split(" (")[0]) for r in diff["rejected_sample"]}
    assert reasons == {
        ("(null)", "null primary key"),
        ("2", "duplicate primary key"),
        ("3", "neither user ID nor anonymous ID"),
    }
    logs = "\n".join(result.run_logs)
    assert "id=3 not sent: neither user ID nor anonymous ID" in logs


# -- 7/8. delivery failures and state ----------------------------------------------------------


def test_gateway_rejected_events_are_recorded_and_retried_next_run(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=6)
    gateway.reject_events_where(
        lambda e: e.get("userId") == "u4", "event is not a valid rudder event"
    )
    result = _run(project, "traits", gateway)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3", "u5", "u6"]
    meta = asset_metadata(result, "traits", "events")
    assert meta["events_rejected"] == 1 and meta["events_accepted"] == 5
    assert meta["rejected_sample"][0]["key"] == "4"
    assert "id=4 rejected, kept pending" in "\n".join(result.run_logs)
    frame = result.output_for_node("traits__events")
    rejected = frame[frame["status"] == "rejected"]
    assert rejected["id"].tolist() == ["4"]
    assert "event is not a valid rudder event" in rejected["error"].iloc[0]

    first_id = _pending_message_ids(project, "traits")
    gateway.clear_faults()
    _run(project, "traits", gateway)
    resent = gateway.events[-1]
    assert resent["userId"] == "u4" and resent["messageId"] == first_id["4"]


def test_unavailable_data_plane_commits_nothing_then_delivers_everything(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    gateway.fail_next(503, times=1000)
    result = run_sync(
        project,
        "traits",
        rudderstack_for(gateway.url, retry_max_seconds=0.5),
        raise_on_error=False,
    )
    assert not result.success
    ids = _pending_message_ids(project, "traits")
    assert len(ids) == 3
    gateway.clear_faults()
    _run(project, "traits", gateway)
    assert sorted(e["messageId"] for e in gateway.events) == sorted(ids.values())


def test_wrong_write_key_stops_the_run_without_leaking_it(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    secret = "sk-very-secret-wrong-key-123"
    result = run_sync(
        project, "traits", rudderstack_for(gateway.url, key=secret), raise_on_error=False
    )
    assert not result.success
    text = "\n".join(result.run_logs)
    assert "401" in text and "write key" in text
    assert secret not in text
    assert len(_pending_message_ids(project, "traits")) == 2


# -- 9. config and model errors ----------------------------------------------------------------


def test_mapped_column_missing_from_model_fails_the_run_naming_it(
    tmp_path: Path, gateway: TestGateway
) -> None:
    sync = dict(IDENTIFY_SYNC, mapping={"email": "emial"})
    project = write_project(tmp_path, {"traits": sync}, users=1)
    result = _run(project, "traits", gateway, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error)
    assert "'emial'" in message and "mapping.email" in message
    assert "id, user_id, anon_id, email, plan, country" in message


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_sends_nothing_and_never_counts_as_delivered(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=2)
    result = run_sync(project, "traits", rudderstack_for(None))
    assert gateway.requests == []
    meta = asset_metadata(result, "traits", "events")
    assert meta["status"] == "dry_run" and meta["events_accepted"] == 2
    assert meta["sample_added"]["context"]["traits"]["plan"] == "free"
    assert state_path(project.state_dir, "traits", dry_run=True).exists()
    _run(project, "traits", gateway)  # the real destination still gets everything
    assert len(gateway.events) == 2


def test_state_refuses_a_different_data_plane(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=1)
    _run(project, "traits", gateway)
    with TestGateway() as other:
        result = run_sync(project, "traits", rudderstack_for(other.url), raise_on_error=False)
        assert not result.success and other.requests == []


def _pending_message_ids(project: Project, sync: str) -> dict[str, str]:
    path = state_path(project.state_dir, sync, dry_run=False)
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("select __rs_pk, __rs_message_id from pending").fetchall()
    return dict(rows)


@pytest.fixture(autouse=True)
def _no_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUDDERSTACK_DATA_PLANE_URL", raising=False)
