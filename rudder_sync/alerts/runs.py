"""Run failures that no step saw: a run-failure sensor, next to the step hooks.

The step hooks (`hooks.py`) alert on every failed step, in the run, without a daemon. A run can
also fail outside its steps: a run worker killed or out of memory, resources that fail before a
step starts, a run the daemon's run monitoring marks failed. This sensor, evaluated by the
daemon, opens `run_failure` for those (a failure with step failures is the hooks' to report; the
shared condition file keeps either from repeating the other's alert).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorDefinition,
    run_failure_sensor,
)

from ..config import SyncConfig
from .dispatch import Dispatcher, Observation

SENSOR_NAME = "rudder_sync_run_failure_alerts"


def run_failure_alerts(
    syncs: Sequence[SyncConfig], state_dir: Path, namespace: str | None = None
) -> SensorDefinition | None:
    """The project's sensor; None when no sync alerts on run_failure."""
    watched = {
        sync.name: sync
        for sync in syncs
        if sync.alerts_config is not None and "run_failure" in sync.alerts_config.on
    }
    if not watched:
        return None

    @run_failure_sensor(
        name=SENSOR_NAME + (f"_{namespace}" if namespace else ""),
        default_status=DefaultSensorStatus.RUNNING,
        description="Alerts on sync runs that failed outside their steps (the step hooks alert "
        "on the others).",
    )
    def alert_run_failures(context: RunFailureSensorContext) -> None:
        run = context.dagster_run
        sync = watched.get(run.job_name)
        if sync is None or context.get_step_failure_events():
            return
        alerts = sync.alerts_config
        assert alerts is not None
        reason = " ".join((context.failure_event.message or "unknown reason").split())[:600]
        seen = Observation(
            "run_failure",
            True,
            f"Sync '{sync.name}': the run failed outside its steps: {reason}",
            "see the run's event log (a killed or out-of-memory run worker, resources that "
            "could not start); then run the sync again: dagster job execute -m "
            f"rudder_sync.definitions -j {sync.name}. Changes that were not accepted stay "
            "pending and are sent by the next run.",
            {"step": None},
        )
        Dispatcher(alerts, sync, state_dir, context.log).observe(seen, run.run_id)

    return alert_run_failures
