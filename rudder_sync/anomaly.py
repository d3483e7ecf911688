"""Anomaly checks against the sync's own history (`anomaly: {window: 20, max_deviation: 0.5}`).

What the fixed-threshold change guard cannot see: a model that halves slowly, a diff far larger
or smaller than usual, or a feed that silently stops producing changes. After each diff, three
non-blocking (WARN) checks on `<sync>/diff` compare the run with the median of its last `window`
runs, and carry that history in their metadata:

- `row_count_anomaly`: the model's rows outside median * (1 +- max_deviation);
- `change_count_anomaly`: the run's changes (added + changed + removed) outside that band around
  their median (when the median is above zero);
- `feed_stopped`: no changes for `quiet_runs` runs in a row, when the runs before usually had some.

The history is kept in the state folder (`<state>/history/<sync>.json`), so a throwaway Dagster
instance per run still has it; it holds the last `window + quiet_runs` runs. A run that the run
config makes a dry run is checked against it but neither recorded nor alerted on. With alerts whose
`on` has `anomaly`, a failing check opens the `anomaly` condition and passing ones clear it.
"""

import os
import statistics
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    multi_asset_check,
)

from .alerts.dispatch import Dispatcher, Observation
from .config import SyncConfig
from .dry_runs import run_asks_for_dry_run

ROW_COUNT = "row_count_anomaly"
CHANGE_COUNT = "change_count_anomaly"
FEED_STOPPED = "feed_stopped"


def history_path(state_dir: Path, sync: str) -> Path:
    return state_dir / "history" / f"{sync}.json"


def load_history(state_dir: Path, sync: str) -> list[dict[str, Any]]:
    try:
        return list(orjson.loads(history_path(state_dir, sync).read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return []


def save_history(state_dir: Path, sync: str, runs: list[dict[str, Any]]) -> None:
    path = history_path(state_dir, sync)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{sync}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(orjson.dumps(runs))
    os.replace(temporary, path)


@dataclass(frozen=True)
class Verdict:
    check: str
    passed: bool
    sentence: str  # what was compared, with the numbers
    figures: dict[str, Any]


def band_verdict(
    check: str, what: str, value: int, history: list[int], deviation: float, min_history: int
) -> Verdict:
    """`value` against median * (1 +- deviation) of `history` (passes with too little of it)."""
    if len(history) < min_history:
        return Verdict(check, True, f"{len(history)} runs of history, fewer than {min_history}", {})
    median = statistics.median(history)
    low, high = median * (1 - deviation), median * (1 + deviation)
    figures = {"value": value, "median": median, "low": round(low, 2), "high": round(high, 2)}
    if what == "changes" and median == 0:
        return Verdict(check, True, "the feed usually has no changes: no band", figures)
    passed = low <= value <= high
    sentence = (
        f"{value} {what}, median of the last {len(history)} runs {median:g} "
        f"(band {low:g} to {high:g})"
    )
    return Verdict(check, passed, sentence, figures)


def stopped_verdict(changes: int, history: list[int], quiet_runs: int, min_history: int) -> Verdict:
    """No changes for `quiet_runs` runs (this one included) while the runs before had some."""
    recent = [*history[-(quiet_runs - 1) :], changes] if quiet_runs > 1 else [changes]
    before = history[: len(history) - (quiet_runs - 1)] if quiet_runs > 1 else history
    figures = {"quiet_runs": quiet_runs, "recent_changes": recent}
    if len(before) < min_history or len(recent) < quiet_runs:
        return Verdict(FEED_STOPPED, True, "too little history", figures)
    usual = statistics.median(before)
    figures["usual_changes"] = usual
    stopped = usual > 0 and all(c == 0 for c in recent)
    sentence = (
        f"no changes in the last {quiet_runs} runs, where the median before was {usual:g}"
        if stopped
        else f"{sum(recent)} changes in the last {len(recent)} runs (median before {usual:g})"
    )
    return Verdict(FEED_STOPPED, not stopped, sentence, figures)


def anomaly_checks(sync: SyncConfig, state_dir: Path) -> list[AssetChecksDefinition]:
    """The sync's anomaly checks on `<sync>/diff`; none without `anomaly:`."""
    settings = sync.anomaly
    if settings is None:
        return []
    diff_key = AssetKey([sync.name, "diff"])
    descriptions = {
        ROW_COUNT: "The model's rows against the median of the sync's last runs.",
        CHANGE_COUNT: "The run's changes against the median of the sync's last runs.",
        FEED_STOPPED: "No changes for several runs where there usually are some.",
    }

    @multi_asset_check(
        name=f"{sync.name}__anomaly",
        specs=[
            AssetCheckSpec(name, asset=diff_key, blocking=False, description=text)
            for name, text in descriptions.items()
        ],
    )
    def anomaly(context: AssetCheckExecutionContext) -> Any:
        event = context.instance.get_latest_materialization_event(diff_key)
        materialization = event.asset_materialization if event else None
        if event is None or materialization is None or event.run_id != context.run.run_id:
            raise RuntimeError(f"sync '{sync.name}': no diff materialized in this run")
        metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        rows = int(metadata["model_rows"])
        changes = sum(int(metadata[c]) for c in ("added", "changed", "removed"))
        runs = load_history(state_dir, sync.name)
        past = runs[-settings.window :]
        verdicts = [
            band_verdict(
                ROW_COUNT,
                "model rows",
                rows,
                [r["model_rows"] for r in past],
                settings.max_deviation,
                settings.min_history,
            ),
            band_verdict(
                CHANGE_COUNT,
                "changes",
                changes,
                [r["changes"] for r in past],
                settings.max_deviation,
                settings.min_history,
            ),
            stopped_verdict(
                changes, [r["changes"] for r in runs], settings.quiet_runs, settings.min_history
            ),
        ]
        this_run = {
            "run_id": context.run.run_id,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_rows": rows,
            "changes": changes,
        }
        if not run_asks_for_dry_run(context.run.run_config, sync):
            keep = settings.window + settings.quiet_runs
            save_history(state_dir, sync.name, [*runs, this_run][-keep:])
            _alert(context, sync, state_dir, verdicts)
        for verdict in verdicts:
            yield AssetCheckResult(
                asset_key=diff_key,
                check_name=verdict.check,
                passed=verdict.passed,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "verdict": verdict.sentence,
                    **{k: v for k, v in verdict.figures.items() if not isinstance(v, list)},
                    "history": MetadataValue.json(past),
                    "window": settings.window,
                    "max_deviation": settings.max_deviation,
                },
            )

    return [anomaly]


def _alert(
    context: AssetCheckExecutionContext, sync: SyncConfig, state_dir: Path, verdicts: list[Verdict]
) -> None:
    alerts = sync.alerts_config
    if alerts is None:
        return
    failed = [v for v in verdicts if not v.passed]
    what = (
        f"Sync '{sync.name}': " + "; ".join(f"{v.check}: {v.sentence}" for v in failed) + "."
        if failed
        else f"Sync '{sync.name}': row and change counts are within their usual band again."
    )
    fix = (
        "compare the model's latest result with the usual one (a broken join, a stale or "
        "truncated upstream table, a feed that stopped); the diff's anomaly checks carry the "
        "history. If the new level is right, it becomes the usual one within a few runs."
        if failed
        else "Resolved."
    )
    figures = {v.check: v.figures for v in verdicts}
    Dispatcher(alerts, sync, state_dir, context.log).observe(
        Observation("anomaly", bool(failed), what, fix, figures), context.run.run_id
    )
