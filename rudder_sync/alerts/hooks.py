"""In-run alerts: step hooks on a sync's assets read what the step produced and open or clear
its conditions. They run in the run itself (`dagster job execute` from cron, the UI, an ad-hoc
materialization), so they need no daemon.

- any step fails (but not because the change guard held the diff back): `run_failure` opens;
  the events step succeeding clears it.
- the diff's `change_guard` check fails: `guard_tripped` opens; it passing clears it.
- the diff leaves out more than `rejected_share` of the model's rows: `rejected_rows` opens.
- the events step's quarantine count grew: `quarantine` opens; an empty quarantine clears it.

A run that the run config makes a dry run neither opens nor clears anything: it works on the
dry-run state, and its success says nothing about delivery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import DagsterEventType, HookContext, HookDefinition, failure_hook, success_hook

from ..config import SyncConfig
from ..dry_runs import run_asks_for_dry_run
from ..reporting import CHANGE_GUARD
from .dispatch import Dispatcher, Observation
from .status import load_status

MAX_ERROR_CHARS = 600


def alert_hooks(sync: SyncConfig, state_dir: Path) -> set[HookDefinition]:
    """The success and failure hooks of a sync's assets; none when it has no alerts."""
    if sync.alerts_config is None:
        return set()

    @success_hook(name=f"{sync.name}__alerts_after_success")
    def after_success(context: HookContext) -> None:
        evaluate_step(context, sync, state_dir, failed=False)

    @failure_hook(name=f"{sync.name}__alerts_after_failure")
    def after_failure(context: HookContext) -> None:
        evaluate_step(context, sync, state_dir, failed=True)

    return {after_success, after_failure}


def evaluate_step(context: HookContext, sync: SyncConfig, state_dir: Path, failed: bool) -> None:
    alerts = sync.alerts_config
    assert alerts is not None
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None and run_asks_for_dry_run(run.run_config, sync):
        return
    dispatcher = Dispatcher(alerts, sync, state_dir, context.log)
    step = context.op.name.removeprefix(f"{sync.name}__")
    # The asset's own output is "result" (check results are outputs of their own).
    metadata = _plain(dict((context.op_output_metadata or {}).get("result") or {}))
    guard = _guard_evaluation(context) if step == "diff" else None
    observations: list[Observation] = []
    if step == "diff":
        if guard is not None:
            observations.append(_guard(sync, guard))
        if metadata:
            observations.append(_rejected(sync, metadata, alerts.rejected_share))
    if failed and not (guard is not None and not guard["passed"]):
        observations.append(_failure(sync, step, context.op_exception))
    if step == "events" and not failed:
        observations.append(
            Observation(
                "run_failure",
                False,
                f"Sync '{sync.name}' ran through again: its events step succeeded.",
                "Resolved by this run.",
                {},
            )
        )
        if "quarantined" in metadata:
            observations.append(_quarantine(sync, dispatcher, int(metadata["quarantined"])))
    for observation in observations:
        dispatcher.observe(observation, context.run_id)


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def _guard_evaluation(context: HookContext) -> dict[str, Any] | None:
    """The change guard's result in this step, from the run's event log."""
    records = context.instance.all_logs(
        context.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    )
    for record in reversed(records):
        event = record.dagster_event
        data = getattr(event, "event_specific_data", None)
        if record.step_key == context.step_key and getattr(data, "check_name", None) == (
            CHANGE_GUARD
        ):
            return {"passed": data.passed, **_plain(dict(data.metadata))}  # type: ignore[union-attr]
    return None


def _guard(sync: SyncConfig, guard: dict[str, Any]) -> Observation:
    figures = {
        key: guard[key]
        for key in ("removed_fraction", "changed_fraction", "events_to_send", "tripped")
        if key in guard
    }
    if guard["passed"]:
        return Observation(
            "guard_tripped",
            False,
            f"Sync '{sync.name}': the diff passed the change guard "
            f"({guard.get('events_to_send', 0)} events to send).",
            "Resolved: the diff was delivered (approved, or within the thresholds).",
            figures,
        )
    return Observation(
        "guard_tripped",
        True,
        f"Sync '{sync.name}': the change guard held back the diff, nothing was sent or "
        f"committed: {guard.get('tripped', '?')} (removed {guard.get('removed_fraction', 0):.1%}, "
        f"changed {guard.get('changed_fraction', 0):.1%}, "
        f"{guard.get('events_to_send', 0)} events to send).",
        "check the model's latest result. If the change is intended, re-run with run config "
        f"ops: {{{sync.name}__diff: {{config: {{approve_large_change: true}}}}}}; if it is a "
        "model bug, fix the model and run again.",
        figures,
    )


def _rejected(sync: SyncConfig, metadata: dict[str, Any], share: float) -> Observation:
    rejected, rows = int(metadata.get("rejected_rows", 0)), int(metadata.get("model_rows", 0))
    fraction = rejected / rows if rows else 0.0
    figures = {"rejected_rows": rejected, "model_rows": rows, "rejected_share": round(fraction, 4)}
    active = rejected > 0 and fraction > share
    what = (
        f"Sync '{sync.name}': {rejected} of {rows} model rows ({fraction:.1%}) were left out "
        f"(null or duplicate primary key, no user or anonymous ID); the alert threshold is "
        f"{share:.1%}."
    )
    fix = (
        f"see the diff's rejected_rows check for a sample, then fix the model so that every row "
        f"has a unique, non-null {sync.primary_key} and an ID column."
        if active
        else "Resolved: the share of rejected rows is back under the threshold."
    )
    return Observation("rejected_rows", active, what, fix, figures)


def _quarantine(sync: SyncConfig, dispatcher: Dispatcher, count: int) -> Observation:
    status = load_status(dispatcher.state_dir, sync.name, "quarantine")
    before = int(status.memory.get("count", 0))
    active = count > 0 and (status.open or count > before)
    figures = {"quarantined": count, "quarantined_before": before}
    what = (
        f"Sync '{sync.name}': {count} changes are quarantined (was {before}): RudderStack "
        f"rejected them {sync.max_attempts} times, so they are no longer sent."
        if active
        else f"Sync '{sync.name}': the quarantine is empty."
    )
    fix = (
        "see the events' quarantined_rows check for the reasons; fix the rows (a changed row "
        f"is re-admitted) or re-admit them with run config ops: {{{sync.name}__diff: "
        "{config: {retry_quarantined: true}}}."
        if active
        else "Resolved: every quarantined change was delivered or re-admitted."
    )
    return Observation("quarantine", active, what, fix, figures, memory={"count": count})


def _failure(sync: SyncConfig, step: str, error: BaseException | None) -> Observation:
    message = " ".join(str(error or "unknown error").split())
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    return Observation(
        "run_failure",
        True,
        f"Sync '{sync.name}': the {step} step failed: {message}",
        "follow the fix in the error above (the run's logs have the details), then run the "
        f"sync again: dagster job execute -m rudder_sync.definitions -j {sync.name}. Changes "
        "that were not accepted stay pending and are sent by the next run.",
        {"step": step},
    )
