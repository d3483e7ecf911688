"""Schedules and sensors that run syncs unattended, and one that reports failed syncs.

- `schedule: "<cron>"`: a schedule for the sync's job, running by default. A partitioned sync's
  schedule runs the latest complete window.
- `trigger: {sql, every_seconds}`: a sensor that runs a cheap query on the warehouse and requests a
  run when its answer changes. The answer is the sensor's cursor; the first evaluation only records
  it. A failing query fails the evaluation, so the error shows on the sensor in the UI.
- one run-failure sensor logs every failed sync run with its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson
from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    schedule,
    sensor,
)

from .config import SyncConfig
from .partitions import partitions_definition
from .warehouses import WarehouseResource

if TYPE_CHECKING:
    from ._compat import UnresolvedAssetJobDefinition

FAILURE_SENSOR_NAME = "rudder_sync_failures"


def build_schedule(
    sync: SyncConfig, job: UnresolvedAssetJobDefinition
) -> ScheduleDefinition | None:
    if sync.schedule is None:
        return None
    if sync.partitions is not None:
        return _latest_window_schedule(sync, job)
    return ScheduleDefinition(
        name=f"{sync.name}_schedule",
        job=job,
        cron_schedule=sync.schedule,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Runs sync '{sync.name}' on '{sync.schedule}'.",
    )


def _latest_window_schedule(
    sync: SyncConfig, job: UnresolvedAssetJobDefinition
) -> ScheduleDefinition:
    """On the sync's cron, run the latest window that is complete at the scheduled time."""
    assert sync.partitions is not None and sync.schedule is not None
    partitions = partitions_definition(sync.partitions)

    @schedule(
        name=f"{sync.name}_schedule",
        job=job,
        cron_schedule=sync.schedule,
        execution_timezone=sync.partitions.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Runs sync '{sync.name}' for its latest complete window on '{sync.schedule}'.",
    )
    def latest_window(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        now = context.scheduled_execution_time or datetime.now(UTC)
        window = partitions.get_prev_partition_window(now)  # the latest window ending by `now`
        if window is None:
            return SkipReason("no complete window yet")
        key = partitions.get_partition_key_for_timestamp(window.start.timestamp())
        return RunRequest(run_key=key, partition_key=key)

    return latest_window


def build_trigger_sensor(
    sync: SyncConfig, job: UnresolvedAssetJobDefinition
) -> SensorDefinition | None:
    trigger = sync.trigger
    if trigger is None:
        return None
    partitions = partitions_definition(sync.partitions) if sync.partitions else None

    warehouse_key = sync.warehouse_key  # the sync's warehouse, under its key in the location

    @sensor(
        name=f"{sync.name}_trigger",
        job=job,
        minimum_interval_seconds=trigger.every_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Runs sync '{sync.name}' when `{trigger.sql}` answers something new.",
        required_resource_keys={warehouse_key},
    )
    def trigger_sensor(context: SensorEvaluationContext, **_: Any) -> RunRequest | SkipReason:
        # (Called directly, as in tests, a sensor also gets its resources as keyword arguments.)
        warehouse: WarehouseResource = getattr(context.resources, warehouse_key)
        with warehouse.read_model(trigger.sql) as reader:
            answer = orjson.dumps(reader.read_all().to_pylist(), default=str).decode()
        if context.cursor is None:
            context.update_cursor(answer)
            return SkipReason(f"first evaluation: recorded the answer {answer[:200]}")
        if answer == context.cursor:
            return SkipReason("the answer has not changed")
        context.update_cursor(answer)
        partition_key = None
        if partitions is not None:
            window = partitions.get_prev_partition_window(datetime.now(UTC))
            if window is None:
                return SkipReason("no complete window yet")
            partition_key = partitions.get_partition_key_for_timestamp(window.start.timestamp())
        return RunRequest(
            run_key=f"{sync.name}:{answer}",
            partition_key=partition_key,
            tags={"rudder_sync/trigger": answer[:200]},
        )

    return trigger_sensor


@cache
def build_failure_sensor() -> SensorDefinition:
    """Watches every job of the code location: the sync jobs and ad-hoc materializations.

    Defined once per code location (`definitions.CodeLocationResources`), and one object for
    the whole process, so that `Definitions.merge` of two projects' definitions keeps it once.
    """

    @run_failure_sensor(
        name=FAILURE_SENSOR_NAME,
        default_status=DefaultSensorStatus.RUNNING,
        description="Logs every failed sync run with the reason.",
    )
    def failure_sensor(context: RunFailureSensorContext) -> None:
        run = context.dagster_run
        reason = context.failure_event.message or "unknown reason"
        step_failures = context.get_step_failure_events()
        details = "; ".join(
            str(event.event_specific_data.error.message).strip()  # type: ignore[union-attr]
            for event in step_failures
            if getattr(event.event_specific_data, "error", None)
        )
        context.log.error(f"run of '{run.job_name}' failed (run {run.run_id}): {details or reason}")

    return failure_sensor
