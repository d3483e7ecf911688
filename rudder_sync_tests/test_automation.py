"""Schedules, trigger sensors, the failure sensor, upstream deps and the change guard."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
)

from rudder_sync.definitions import build_definitions
from rudder_sync.state import state_path
from rudder_sync.warehouses import DuckDBWarehouse

from .gateway import TestGateway
from .helpers import (
    HISTORY_SYNC,
    IDENTIFY_SYNC,
    TRACK_SYNC,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)


def _defs(tmp_path: Path, syncs: dict[str, dict[str, Any]], users: int = 3) -> Any:
    project = write_project(tmp_path, syncs, users=users)
    return project, build_definitions(project.config(), rudderstack_for(None))


def test_schedule_runs_the_sync_job_and_is_running_by_default(tmp_path: Path) -> None:
    _, defs = _defs(tmp_path, {"traits": dict(IDENTIFY_SYNC, schedule="*/15 * * * *")})
    schedule = defs.get_schedule_def("traits_schedule")
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.job_name == "traits"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    result = schedule.evaluate_tick(build_schedule_context())
    assert [type(r) for r in result.run_requests or []] == [RunRequest]


def test_partitioned_schedule_runs_the_latest_complete_window(tmp_path: Path) -> None:
    _, defs = _defs(tmp_path, {"history": dict(HISTORY_SYNC, schedule="0 3 * * *")}, users=0)
    schedule = defs.get_schedule_def("history_schedule")
    context = build_schedule_context(
        scheduled_execution_time=datetime(2024, 1, 5, 3, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key == "2024-01-04"


def test_trigger_sensor_records_then_fires_on_change(tmp_path: Path) -> None:
    trigger = {
        "sql": "select max(updated_at) as latest, count(*) as n from users",
        "every_seconds": 30,
    }
    project, defs = _defs(tmp_path, {"traits": dict(IDENTIFY_SYNC, trigger=trigger)})
    sensor = defs.get_sensor_def("traits_trigger")
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    warehouse = DuckDBWarehouse(database=str(project.warehouse))

    def evaluate(cursor: str | None) -> tuple[Any, str | None]:
        context = build_sensor_context(cursor=cursor, resources={"warehouse": warehouse})
        result = sensor(context)
        return result, context.cursor

    first, cursor = evaluate(None)
    assert isinstance(first, SkipReason) and "first evaluation" in (first.skip_message or "")
    unchanged, same = evaluate(cursor)
    assert isinstance(unchanged, SkipReason) and same == cursor
    sql(
        project.warehouse, "insert into users values (7, 'u7', 'a7', 'x', 'free', 'DE', now(), 'e')"
    )
    fired, new_cursor = evaluate(cursor)
    assert isinstance(fired, RunRequest) and new_cursor != cursor
    assert fired.run_key and fired.run_key.startswith("traits:")


def test_trigger_sensor_errors_are_raised_not_swallowed(tmp_path: Path) -> None:
    trigger = {"sql": "select max(nope) from users"}
    project, defs = _defs(tmp_path, {"traits": dict(IDENTIFY_SYNC, trigger=trigger)})
    sensor = defs.get_sensor_def("traits_trigger")
    context = build_sensor_context(
        resources={"warehouse": DuckDBWarehouse(database=str(project.warehouse))}
    )
    with pytest.raises(Exception, match="nope"):
        sensor(context)


def test_upstream_assets_are_deps_with_an_automation_condition(tmp_path: Path) -> None:
    sync = dict(IDENTIFY_SYNC, upstream=["analytics/users", "dbt/stg_plans"])
    _, defs = _defs(tmp_path, {"traits": sync})
    graph = defs.resolve_asset_graph()
    snapshot = graph.get(AssetKey(["traits", "snapshot"]))
    assert {AssetKey(["analytics", "users"]), AssetKey(["dbt", "stg_plans"])} <= set(
        snapshot.parent_keys
    )
    for step in ("snapshot", "diff", "events"):
        assert graph.get(AssetKey(["traits", step])).automation_condition is not None


def test_failure_sensor_logs_the_failed_sync_with_its_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sync = dict(IDENTIFY_SYNC, mapping={"email": "emial"})
    project, defs = _defs(tmp_path, {"traits": sync})
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("traits").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    sensor = defs.get_sensor_def("rudder_sync_failures")
    context = build_run_status_sensor_context(
        sensor_name="rudder_sync_failures",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure,
    ).for_run_failure()
    capfd.readouterr()
    sensor(context)
    logged = capfd.readouterr().err
    assert "run of 'traits' failed" in logged and "'emial'" in logged


# -- change guard ------------------------------------------------------------------------------


def _guarded(**guard: Any) -> dict[str, Any]:
    return dict(TRACK_SYNC, guard={"min_rows": 0, **guard})


def test_guard_stops_a_large_removal_before_anything_is_sent(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": _guarded()}, users=10)
    run_sync(project, "events", rudderstack_for(gateway.url))  # baseline
    sql(project.warehouse, "delete from users where id <= 3")  # 30% > 20%
    result = run_sync(project, "events", rudderstack_for(gateway.url), raise_on_error=False)
    assert not result.success
    assert gateway.requests == []
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "change_guard"]
    assert not check.passed
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["removed_fraction"] == 0.3 and "max_removed_fraction 0.2" in meta["tripped"]
    assert "change guard tripped" in "\n".join(result.run_logs)
    # nothing committed: the approved re-run sends exactly the three removals
    approved = run_sync(project, "events", rudderstack_for(gateway.url), approve_large_change=True)
    assert approved.success
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    assert {e["event"] for e in gateway.events} == {"User Deleted Account"}


def test_guard_limits_can_be_turned_off_and_max_events_counts(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(
        tmp_path, {"traits": dict(IDENTIFY_SYNC, guard={"max_events": 4})}, users=5
    )
    blocked = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    assert not blocked.success and gateway.requests == []
    project.config_path.write_text(
        project.config_path.read_text().replace("max_events: 4", "max_events: null")
    )
    assert run_sync(project, "traits", rudderstack_for(gateway.url)).success
    assert len(gateway.events) == 5


def test_rejected_rows_check_warns_with_a_sample(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    sql(project.warehouse, "update users set user_id = null, anon_id = null where id = 2")
    result = run_sync(project, "traits", rudderstack_for(gateway.url))
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["change_guard"].passed
    rejected = checks["rejected_rows"]
    assert not rejected.passed and rejected.severity.value == "WARN"
    assert rejected.metadata["rejected"].value == 1
    assert rejected.metadata["sample"].value[0]["key"] == "2"
    assert checks["gateway_rejections"].passed
    assert state_path(project.state_dir, "traits", False).exists()


def test_gateway_rejections_check_warns(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    gateway.reject_events_where(
        lambda e: e.get("userId") == "u3", "event is not a valid rudder event"
    )
    result = run_sync(project, "traits", rudderstack_for(gateway.url))
    check = next(
        c for c in result.get_asset_check_evaluations() if c.check_name == "gateway_rejections"
    )
    assert not check.passed and check.metadata["rejected"].value == 1
    assert check.metadata["sample"].value[0]["key"] == "3"
