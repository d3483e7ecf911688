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


def test_a_first_run_only_counts_events() -> None:
    first_run = evaluate_guard(GUARD, [summary(0, added=500, sent=0)])
    assert first_run.passed and first_run.figures["removed_fraction"] == 0.0
    assert not evaluate_guard(GUARD, [summary(0, added=101)]).passed  # but events still count


DEFAULTS = GuardConfig()  # min_rows 100, max_removed_fraction 0.2, max_changed_fraction 0.5


def test_a_small_model_that_loses_most_of_its_rows_trips() -> None:
    """Issue 26 item 8: below min_rows the old guard ignored fractions, so a broken 50-row model
    sent 50 `removed` events."""
    verdict = evaluate_guard(DEFAULTS, [summary(50, removed=45)])
    assert verdict.tripped == [
        "removed fraction 90.0% of a model below min_rows (45 of 50 rows) > 0.5"
    ]
    assert verdict.figures["removed_fraction"] == 0.9
    changed = evaluate_guard(DEFAULTS, [summary(30, changed=20)])
    assert changed.tripped == [
        "changed fraction 66.7% of a model below min_rows (20 of 30 rows) > 0.5"
    ]
    # the configured threshold, when higher than a half, holds for small models too
    lenient = GuardConfig(max_removed_fraction=0.95)
    assert evaluate_guard(lenient, [summary(50, removed=45)]).passed
    off = GuardConfig(max_removed_fraction=None, max_changed_fraction=None)
    assert evaluate_guard(off, [summary(50, removed=45, changed=5)]).passed


def test_a_small_models_churn_does_not_trip() -> None:
    """Below min_rows: a half or less, or fewer than 10 rows, is everyday churn, not a bug; a
    guard that tripped on it would hold the sync back on every run."""
    assert evaluate_guard(DEFAULTS, [summary(50, removed=25, changed=25)]).passed  # not most
    assert evaluate_guard(DEFAULTS, [summary(9, removed=8)]).passed  # most, but 8 rows
    assert evaluate_guard(DEFAULTS, [summary(4, changed=4)]).passed
    assert evaluate_guard(DEFAULTS, [summary(1, removed=1, added=1)]).passed  # a row replaced
    # from min_rows on, the configured fraction alone decides
    assert not evaluate_guard(DEFAULTS, [summary(100, removed=21)]).passed


def test_a_model_that_returns_no_rows_trips_at_any_size() -> None:
    for base in (1, 9, 50, 100_000):
        verdict = evaluate_guard(DEFAULTS, [summary(base, removed=base)])
        assert (
            f"the model returned no rows where the previous snapshot had {base} "
            "(allow_empty_model is false)"
        ) in verdict.tripped, base
    # also with the fractions off; not on a first run, nor when allowed
    off = GuardConfig(max_removed_fraction=None, max_changed_fraction=None, max_events=None)
    assert not evaluate_guard(off, [summary(3, removed=3)]).passed
    assert evaluate_guard(DEFAULTS, [summary(0)]).passed
    allowed = GuardConfig(allow_empty_model=True, min_rows=100)
    assert evaluate_guard(allowed, [summary(3, removed=3)]).passed
    # one emptied window of several trips, naming the largest emptied window
    windows = [summary(5, added=1), summary(2, removed=2), summary(7, removed=7)]
    assert evaluate_guard(DEFAULTS, windows).tripped == [
        "the model returned no rows where the previous snapshot had 7 (allow_empty_model is false)"
    ]


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
    assert evaluate_guard(off, [summary(100, removed=90, changed=0)]).passed
    verdict = evaluate_guard(off, [summary(100)], always=["a resync sends every row again"])
    assert verdict.tripped == ["a resync sends every row again"]
