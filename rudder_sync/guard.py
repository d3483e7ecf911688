"""The change guard: hold back a diff that is suspiciously large before anything is sent.

A model bug (a broken join, an empty upstream table) shows up as a diff that removes or changes
most rows; sending it would blast the destination with events that cannot be taken back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import GuardConfig
from .diff import DiffSummary


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
    previous window), and only from `min_rows` compared rows: one row of four is no model bug.
    A diff against nothing (a first run) has no fractions, only the event count.
    ``always`` trips the guard whatever the figures: a resync or a baseline reset is deliberate,
    so it goes through only with an explicit approval.
    """
    tripped: list[str] = list(always)
    removed_fraction = changed_fraction = 0.0
    events = 0
    for summary in summaries:
        events += sum(summary.to_send.values())
        if summary.base_rows and summary.base_rows >= max(guard.min_rows, 1):
            removed_fraction = max(removed_fraction, summary.counts["removed"] / summary.base_rows)
            changed_fraction = max(changed_fraction, summary.counts["changed"] / summary.base_rows)
    limit = guard.max_removed_fraction
    if limit is not None and removed_fraction > limit:
        tripped.append(f"removed fraction {removed_fraction:.1%} > max_removed_fraction {limit:g}")
    limit = guard.max_changed_fraction
    if limit is not None and changed_fraction > limit:
        tripped.append(f"changed fraction {changed_fraction:.1%} > max_changed_fraction {limit:g}")
    if guard.max_events is not None and events > guard.max_events:
        tripped.append(f"{events} events to send > max_events {guard.max_events}")
    figures = {
        "removed_fraction": round(removed_fraction, 4),
        "changed_fraction": round(changed_fraction, 4),
        "events_to_send": events,
    }
    return GuardVerdict(tripped=tripped, figures=figures)
