"""`guard.evaluate_guard` on its own: diff summaries in, a verdict out (no state, no Dagster)."""

from __future__ import annotations

from rudder_sync.config import GuardConfig
from rudder_sync.diff import DiffSummary
from rudder_sync.guard import evaluate_guard

GUARD = GuardConfig(max_removed_fraction=0.2, max_changed_fraction=0.5, max_events=100, min_rows=10)


def summary(
    base_rows: int, added: int = 0, changed: int = 0, removed: int = 0, sent: int | None = None
) -> DiffSummary:
    counts = {"added": added, "changed": changed, "removed": removed}
    to_send = dict(counts) if sent is None else {"added": sent, "changed": 0, "removed": 0}
    return DiffSummary(
        model_rows=base_rows + added - removed,
        counts=counts,
        to_send=to_send,
        rejected_count=0,
        base_rows=base_rows,
    )


def test_a_small_diff_passes_with_its_figures() -> None:
    verdict = evaluate_guard(GUARD, [summary(100, added=5, changed=10, removed=2)])
    assert verdict.passed and verdict.tripped == []
    assert verdict.figures == {
        "removed_fraction": 0.02,
        "changed_fraction": 0.1,
        "events_to_send": 17,
    }


def test_each_threshold_trips_with_its_own_sentence() -> None:
    verdict = evaluate_guard(GUARD, [summary(100, changed=60, removed=30, added=20)])
    assert not verdict.passed
    assert verdict.tripped == [
        "removed fraction 30.0% > max_removed_fraction 0.2",
        "changed fraction 60.0% > max_changed_fraction 0.5",
        "110 events to send > max_events 100",
    ]


def test_fractions_need_min_rows_and_a_first_run_only_counts_events() -> None:
    assert evaluate_guard(GUARD, [summary(9, removed=9)]).passed  # 9 compared rows < min_rows
    first_run = evaluate_guard(GUARD, [summary(0, added=500, sent=0)])
    assert first_run.passed and first_run.figures["removed_fraction"] == 0.0
    assert not evaluate_guard(GUARD, [summary(0, added=101)]).passed  # but events still count


def test_windows_take_the_worst_fraction_and_the_sum_of_events() -> None:
    windows = [summary(100, removed=10, added=60), summary(20, removed=5, added=50)]
    verdict = evaluate_guard(GUARD, windows)
    assert verdict.figures == {
        "removed_fraction": 0.25,
        "changed_fraction": 0.0,
        "events_to_send": 125,
    }
    assert verdict.tripped == [
        "removed fraction 25.0% > max_removed_fraction 0.2",
        "125 events to send > max_events 100",
    ]


def test_null_thresholds_are_off_and_always_trips_whatever_the_figures() -> None:
    off = GuardConfig(max_removed_fraction=None, max_changed_fraction=None, max_events=None)
    assert evaluate_guard(off, [summary(100, removed=100, changed=0)]).passed
    verdict = evaluate_guard(off, [summary(100)], always=["a resync sends every row again"])
    assert verdict.tripped == ["a resync sends every row again"]
