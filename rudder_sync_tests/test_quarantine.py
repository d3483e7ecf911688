"""Quarantine (issue 12, item 3): a change that keeps failing stops being sent after max_attempts.

Real runs against the real test gateway, which answers 400 for the events a rule matches (as
rudder-server does for a bad event); the client bisects the batch, the rest is delivered, and the
rejected change stays pending with its attempts in the real state file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from dagster import AssetCheckSeverity

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, Project, asset_metadata, rudderstack_for, sql, write_project
from .test_resync import APPROVED_RESET, check_results, failure_text, run_with, state_rows

REASON = "event rejected by a destination transformation"


def bad_plan(event: dict[str, Any]) -> bool:
    return event.get("context", {}).get("traits", {}).get("plan") == "bad"


def project_with_a_bad_row(tmp_path: Path, **keys: Any) -> Project:
    project = write_project(tmp_path, {"traits": dict(IDENTIFY_SYNC, **keys)}, users=3)
    sql(project.warehouse, "update users set plan = 'bad' where id = 2")
    return project


def sent_user_ids(gateway: TestGateway, since: int) -> list[str]:
    """userIds of every event the client sent (accepted or not) in requests from ``since`` on."""
    return [
        body_event["userId"]
        for request in gateway.requests[since:]
        if request.body
        for body_event in _events_of(request.body)
    ]


def _events_of(body: bytes) -> list[dict[str, Any]]:
    return orjson.loads(body).get("batch", [])


def test_a_change_rejected_max_attempts_times_is_quarantined_then_not_sent(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=3)
    gateway.reject_events_where(bad_plan, REASON)
    for attempt in (1, 2, 3):
        result = run_with(project, "traits", rudderstack_for(gateway.url))
        assert result.success, failure_text(result)
        assert "u2" in sent_user_ids(gateway, 0)
        check = check_results(result)["quarantined_rows"]
        assert check.passed is (attempt < 3)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u3"]

    check = check_results(result)["quarantined_rows"]
    assert check.severity == AssetCheckSeverity.WARN
    assert check.metadata["quarantined"].value == 1
    (row,) = check.metadata["sample"].value
    assert row["key"] == "2" and row["attempts"] == 3 and REASON in row["reason"]
    assert row["change_type"] == "added" and row["source"] == "gateway" and row["first_seen"]
    events = asset_metadata(result, "traits", "events")
    assert events["quarantined"] == 1 and events["quarantined_rows"][0]["key"] == "2"
    assert "quarantined id=2 after 3 attempts" in "\n".join(result.run_logs)

    # the fourth run sends nothing for it: not a single request carries u2
    before = len(gateway.requests)
    result = run_with(project, "traits", rudderstack_for(gateway.url))
    assert result.success and "u2" not in sent_user_ids(gateway, before)
    assert asset_metadata(result, "traits", "diff")["added_to_send"] == 0
    assert check_results(result)["quarantined_rows"].metadata["quarantined"].value == 1
    # still pending, never committed: state does not move ahead of what RudderStack accepted
    assert state_rows(project, "traits", "select __rs_pk, __rs_attempts from pending") == [("2", 3)]


def test_a_quarantined_row_is_readmitted_when_its_content_changes(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=1)
    gateway.reject_events_where(bad_plan, REASON)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    quarantined = run_with(project, "traits", rudderstack_for(gateway.url))
    assert check_results(quarantined)["quarantined_rows"].metadata["quarantined"].value == 1

    sql(project.warehouse, "update users set plan = 'pro' where id = 2")  # the row is fixed
    result = run_with(project, "traits", rudderstack_for(gateway.url))
    assert result.success, failure_text(result)
    (fixed,) = [e for e in gateway.events if e["userId"] == "u2"]
    assert fixed["context"]["traits"]["plan"] == "pro"
    assert check_results(result)["quarantined_rows"].passed
    assert state_rows(project, "traits", "select count(*) from pending") == [(0,)]


def test_retry_quarantined_readmits_them_with_new_attempts(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=2)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(3):
        assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    assert state_rows(project, "traits", "select __rs_attempts from pending") == [(2,)]

    gateway.clear_faults()  # the destination's filter was fixed; the row did not change
    result = run_with(project, "traits", rudderstack_for(gateway.url), {"retry_quarantined": True})
    assert result.success, failure_text(result)
    assert asset_metadata(result, "traits", "diff")["readmitted_quarantined"] == 1
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    assert check_results(result)["quarantined_rows"].passed


def test_retry_quarantined_that_fails_again_gives_max_attempts_more_tries(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=2)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(2):
        assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    before = len(gateway.requests)
    run_with(project, "traits", rudderstack_for(gateway.url), {"retry_quarantined": True})
    run_with(project, "traits", rudderstack_for(gateway.url))
    assert sent_user_ids(gateway, before).count("u2") >= 2  # two more attempts, one per run
    before = len(gateway.requests)
    last = run_with(project, "traits", rudderstack_for(gateway.url))
    assert "u2" not in sent_user_ids(gateway, before)
    assert check_results(last)["quarantined_rows"].metadata["sample"].value[0]["attempts"] == 2


def test_max_attempts_null_retries_forever(tmp_path: Path, gateway: TestGateway) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=None)
    gateway.reject_events_where(bad_plan, REASON)
    for _ in range(6):  # beyond the default of 5
        before = len(gateway.requests)
        result = run_with(project, "traits", rudderstack_for(gateway.url))
        assert result.success and "u2" in sent_user_ids(gateway, before)
        assert check_results(result)["quarantined_rows"].passed
    assert state_rows(project, "traits", "select __rs_attempts from pending") == [(6,)]


def test_a_row_failing_validation_is_quarantined_and_readmitted_when_it_changes(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"traits": dict(IDENTIFY_SYNC, max_attempts=2)}, users=2)
    sql(project.warehouse, "update users set user_id = null, anon_id = ' ' where id = 2")
    first = run_with(project, "traits", rudderstack_for(gateway.url))
    assert check_results(first)["quarantined_rows"].passed
    assert check_results(first)["rejected_rows"].metadata["rejected"].value == 1
    second = run_with(project, "traits", rudderstack_for(gateway.url))
    check = check_results(second)["quarantined_rows"]
    assert not check.passed
    (row,) = check.metadata["sample"].value
    assert row["key"] == "2" and row["source"] == "validation" and row["attempts"] == 2
    assert row["reason"].startswith("neither user ID nor anonymous ID")

    # other content, still invalid: a new row as far as quarantine goes
    sql(project.warehouse, "update users set email = 'other@x' where id = 2")
    third = run_with(project, "traits", rudderstack_for(gateway.url))
    assert check_results(third)["quarantined_rows"].passed
    sql(project.warehouse, "update users set user_id = 'u2' where id = 2")  # fixed
    fourth = run_with(project, "traits", rudderstack_for(gateway.url))
    assert check_results(fourth)["quarantined_rows"].passed
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2"]


def test_reset_baseline_drops_quarantined_changes(tmp_path: Path, gateway: TestGateway) -> None:
    project = project_with_a_bad_row(tmp_path, max_attempts=1)
    gateway.reject_events_where(bad_plan, REASON)
    assert run_with(project, "traits", rudderstack_for(gateway.url)).success
    result = run_with(project, "traits", rudderstack_for(gateway.url), APPROVED_RESET)
    assert result.success, failure_text(result)
    assert check_results(result)["quarantined_rows"].passed
    assert state_rows(project, "traits", "select count(*) from pending") == [(0,)]
