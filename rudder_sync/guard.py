"""The change guard: hold back a diff that is suspiciously large before anything is sent.

A model bug (a broken join, an empty upstream table) shows up as a diff that removes or changes
most rows; sending it would blast the destination with events that cannot be taken back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import GuardConfig
from .diff import DiffSummary

# Below `min_rows` compared rows a fraction trips only for "most of the table" (more than this
# share, or the configured threshold if higher) of at least SMALL_MODEL_MIN_ROWS rows: a small
# model that loses most of its rows is held back, a tiny one's everyday churn is not.
SMALL_MODEL_SHARE = 0.5
SMALL_MODEL_MIN_ROWS = 10


@dataclass(frozen=True)
class GuardVerdict:
    tripped: list[str]  # one sentence per threshold exceeded
    figures: dict[str, float | int]

    @property
    def passed(self) -> bool:
        return not self.tripped


def evaluate_guard(
    guard: GuardConfig, summaries: Iterable[DiffSummary], always: Sequence[str] = ()
) -> GuardVerdict:
    """Check a run's diff (all its windows) against the sync's thresholds.

    Fractions compare each diff with what it was compared against (the committed snapshot, or the
    previous window). From `min_rows` compared rows the configured thresholds apply; below it only
    most of the table (see SMALL_MODEL_SHARE) trips, and only from SMALL_MODEL_MIN_ROWS rows: one
    row of four is no model bug, 45 of 50 is. A model that returns no rows where it had some trips
    at any size, unless `allow_empty_model`. A diff against nothing (a first run) has no
    fractions, only the event count. ``always`` trips the guard whatever the figures: a resync or
    a baseline reset is deliberate, so it goes through only with an explicit approval.
    """
    tripped: list[str] = list(always)
    summaries = list(summaries)
    figures: dict[str, float | int] = {}
    for change, limit in (
        ("removed", guard.max_removed_fraction),
        ("changed", guard.max_changed_fraction),
    ):
        worst = 0.0
        sentence = None
        for summary in summaries:
            if not summary.base_rows:
                continue
            count = summary.counts[change]
            fraction = count / summary.base_rows
            worst = max(worst, fraction)
            if limit is None:
                continue
            reason = _trips(guard, limit, count, summary.base_rows, change)
            if reason and (sentence is None or fraction > sentence[0]):
                sentence = (fraction, reason)
        figures[f"{change}_fraction"] = round(worst, 4)
        if sentence is not None:
            tripped.append(sentence[1])
    emptied = [s.base_rows for s in summaries if s.base_rows and not s.model_rows]
    if emptied and not guard.allow_empty_model:
        tripped.append(
            f"the model returned no rows where the previous snapshot had {max(emptied)} "
            "(allow_empty_model is false)"
        )
    events = sum(sum(summary.to_send.values()) for summary in summaries)
    if guard.max_events is not None and events > guard.max_events:
        tripped.append(f"{events} events to send > max_events {guard.max_events}")
    figures["events_to_send"] = events
    return GuardVerdict(tripped=tripped, figures=figures)


def _trips(guard: GuardConfig, limit: float, count: int, base: int, change: str) -> str | None:
    """The sentence saying why `count` of `base` compared rows trips, or None."""
    fraction = count / base
    if base >= guard.min_rows:
        if fraction > limit:
            return f"{change} fraction {fraction:.1%} > max_{change}_fraction {limit:g}"
        return None
    share = max(limit, SMALL_MODEL_SHARE)
    if fraction > share and count >= SMALL_MODEL_MIN_ROWS:
        return (
            f"{change} fraction {fraction:.1%} of a model below min_rows ({count} of {base} rows) "
            f"> {share:g}"
        )
    return None
