"""Freshness: `freshness: {max_lag: 2h}` as Dagster's freshness policy on `<sync>/events`, and
a sensor per sync with `freshness:` and alerts.

No run can see that runs stopped happening, so this is a sensor, evaluated by the Dagster daemon
(`dagster dev`, or `dagster-daemon run` next to cron). It compares the last materialization of
`<sync>/events` with `freshness.max_lag`, the same window as the asset's freshness policy, and
opens or clears the `freshness` condition (`dispatch`): one alert when the events get stale, one
when a run delivers again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    FreshnessPolicy,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from ..config import SyncConfig
from .dispatch import Dispatcher, Observation

EVERY_SECONDS = 60


def freshness_policy(sync: SyncConfig) -> FreshnessPolicy | None:
    """Dagster's own freshness policy: the UI shows the events asset as failing freshness when
    its last materialization is older than max_lag."""
    if sync.freshness is None:
        return None
    return FreshnessPolicy.time_window(fail_window=sync.freshness.max_lag)


def utc_now() -> datetime:
    return datetime.now(UTC)


def freshness_sensor(
    sync: SyncConfig, state_dir: Path, clock: Callable[[], datetime] = utc_now
) -> SensorDefinition | None:
    """The sync's freshness sensor; None without `freshness` or alerts for it. (`clock`: the
    current time, for tests that cannot wait out a lag of Dagster's one-minute minimum.)"""
    if sync.freshness is None or sync.alerts_config is None:
        return None
    if "freshness" not in sync.alerts_config.on:
        return None
    events_key = AssetKey([sync.name, "events"])

    @sensor(
        name=f"{sync.name}_freshness_alerts",
        minimum_interval_seconds=EVERY_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Alerts when '{sync.name}/events' is older than freshness.max_lag, and "
        "when it is fresh again.",
    )
    def freshness_alerts(context: SensorEvaluationContext) -> SkipReason:
        seen = freshness_observation(context, sync, events_key, clock())
        if seen is None:
            return SkipReason(f"'{sync.name}/events' was never materialized")
        observation, run_id = seen
        alerts = sync.alerts_config
        assert alerts is not None
        sent = Dispatcher(alerts, sync, state_dir, context.log).observe(observation, run_id)
        state = "stale" if observation.active else "fresh"
        return SkipReason(f"{state}; {'alert sent' if sent else 'no alert (no change)'}")

    return freshness_alerts


def freshness_observation(
    context: SensorEvaluationContext, sync: SyncConfig, events_key: AssetKey, now: datetime
) -> tuple[Observation, str] | None:
    """Whether the events are older than max_lag, from the last materialization."""
    assert sync.freshness is not None
    event = context.instance.get_latest_materialization_event(events_key)
    if event is None:
        return None
    last = datetime.fromtimestamp(event.timestamp, UTC)
    lag = now - last
    max_lag = sync.freshness.max_lag
    active = lag > max_lag
    figures = {
        "last_delivery": last.isoformat(timespec="seconds"),
        "lag_seconds": int(lag.total_seconds()),
        "max_lag_seconds": int(max_lag.total_seconds()),
    }
    if active:
        what = (
            f"Sync '{sync.name}': its events were last delivered {_human(lag)} ago "
            f"({figures['last_delivery']}), more than freshness.max_lag ({_human(max_lag)})."
        )
        fix = (
            "check that the sync's schedule or trigger is running (it needs the Dagster daemon) "
            "and whether its latest runs failed; run it now with: dagster job execute -m "
            f"rudder_sync.definitions -j {sync.name}."
        )
    else:
        what = f"Sync '{sync.name}': its events were delivered {_human(lag)} ago."
        fix = "Resolved: a run delivered within freshness.max_lag."
    return Observation("freshness", active, what, fix, figures), event.run_id


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
