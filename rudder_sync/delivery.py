"""Send a sync's pending events and move the snapshot forward only for what RudderStack accepted.

Accepted changes are committed in groups (every COMMIT_EVERY_EVENTS events or COMMIT_EVERY_SECONDS)
rather than per request, to keep the state writes batched, on a thread beside the sending; a crash
between delivery and commit only re-sends those events (at most RESEND_BOUND_EVENTS), with the same
messageIds, at the next run. A commit logs the changes and records their IDs; the snapshot takes
them in groups of SETTLE_EVERY_EVENTS and at the end of the delivery (`SyncState.settle_commits`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import CHANGE_TYPES, SyncConfig
from .errors import RudderstackRefusedError
from .events import iter_event_columns
from .rudderstack import ChangeId, DeliveryStats, RudderstackResource
from .state import SyncState

COMMIT_EVERY_EVENTS = 20_000
COMMIT_EVERY_SECONDS = 5.0
# Accepted but not yet committed, at most: the group being gathered and the one being committed.
RESEND_BOUND_EVENTS = 2 * COMMIT_EVERY_EVENTS
# Committed changes move into the snapshot (`SyncState.settle_commits`) once this many wait, on
# the commit thread while the sending goes on, and the rest at the end: DuckDB's row group, so
# that each such move is written straight to the file rather than through its log.
SETTLE_EVERY_EVENTS = 122_880


@dataclass
class DeliveryReport:
    """What one run delivered, for metadata, logs and the `<sync>/events` asset."""

    status: str  # "delivered" or "dry_run"
    committed_without_event: int = 0
    accepted: int = 0
    rejected: list[tuple[ChangeId, str]] = field(default_factory=list)
    stats: DeliveryStats = field(default_factory=DeliveryStats)

    def absorb(self, other: DeliveryReport) -> None:
        """Add one window's report to a run's total (the stats object is shared already)."""
        self.committed_without_event += other.committed_without_event
        self.accepted += other.accepted
        self.rejected.extend(other.rejected)


class _Committer:
    """Commits accepted changes in the order they came back, and records rejected ones.

    On a thread of its own: building and sending the next events does not wait for the state's
    disk (DuckDB releases the GIL while it writes). At most one commit runs while the next group
    gathers, so a crash re-sends at most RESEND_BOUND_EVENTS events (or what 5 s accepted).
    Only this thread uses the state's connection until `close()`; the events are read on a
    cursor of their own.
    """

    def __init__(self, state: SyncState, run_id: str, status: str, destination: str | None) -> None:
        self.state, self.run_id, self.status = state, run_id, status
        self.destination = destination
        self.ids: list[np.ndarray] = []
        self.count = 0
        self.unsettled = 0  # committed by ranges, not yet in the snapshot
        self.last_flush = time.monotonic()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rudder_sync_commit")
        self._running: Future[object] | None = None

    def accepted(self, change_ids: np.ndarray) -> None:
        self.ids.append(change_ids)
        self.count += len(change_ids)
        due = time.monotonic() - self.last_flush >= COMMIT_EVERY_SECONDS
        if self.count >= COMMIT_EVERY_EVENTS or due:
            self.flush()

    def rejected(self, failures: list[tuple[ChangeId, str]]) -> None:
        self.flush()
        self._submit(self.state.record_failures, failures, self.run_id)

    def flush(self) -> None:
        if self.count:
            ids, self.ids, self.count = np.concatenate(self.ids), [], 0
            self.unsettled += len(ids)
            settle = self.unsettled >= SETTLE_EVERY_EVENTS
            if settle:
                self.unsettled = 0
            self._submit(self._commit, ids, settle)
        self.last_flush = time.monotonic()

    def _commit(self, ids: np.ndarray, settle: bool) -> None:
        """On the commit thread: commit ``ids`` (logged, their IDs recorded), and with ``settle``
        move what is committed so far into the snapshot."""
        self.state.commit_changes(ids, self.run_id, self.status, self.destination, defer=True)
        if settle:
            self.state.settle_commits()

    def close(self) -> None:
        """Commit what is left and wait for it; raises the first commit's error, if any."""
        try:
            self.flush()
            self._wait()
        finally:
            self._worker.shutdown(wait=True)

    def _submit(self, work: Callable[..., object], *args: object) -> None:
        self._wait()  # one at a time: the bound on re-sends, and the order of the state's writes
        self._running = self._worker.submit(work, *args)

    def _wait(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.result()


def deliver_pending(
    state: SyncState,
    sync: SyncConfig,
    rudderstack: RudderstackResource,
    run_id: str,
    log: logging.Logger,
    window: str | None = None,
    commit: bool = True,
    stats: DeliveryStats | None = None,
    destination: str | None = None,
    keys: Sequence[str] | None = None,
) -> DeliveryReport:
    """Commit the changes that send nothing, then deliver the rest and commit what was accepted.

    The first accepted commit records ``destination`` as the state's destination. With
    commit=False (a run-config dry run) nothing is sent and the state does not move. With
    ``keys`` (run config only_keys) only those rows' changes are sent; the others stay pending
    as they are (the changes that send nothing are committed all the same: they are the
    baseline's, and a first run must record it whole).
    """
    status = "dry_run" if rudderstack.dry_run else "delivered"
    report = DeliveryReport(status=status, stats=stats or DeliveryStats())
    # Closed explicitly: its cursor keeps the state file open (and locked against other
    # processes), and after a failure only the cyclic garbage collector would free it.
    events = iter_event_columns(state, sync, window, keys)
    if not commit:
        try:
            for outcome in rudderstack.deliver(events, stats=report.stats, log=log):
                report.accepted += len(outcome.accepted)
                report.rejected.extend((e.ref, r) for e, r in outcome.rejected)
        finally:
            events.close()
        return report
    state.start_resync(window)
    report.committed_without_event = state.commit_silent_changes(window)

    committer = _Committer(state, run_id, status, destination)
    # Rejections count toward quarantine once the delivery is over: if the data plane turns out
    # to refuse everything, the rows were not at fault and their attempt does not count.
    failures: list[tuple[ChangeId, str]] = []
    # The outcomes are acyclic: keep the collector from walking Dagster's whole heap while
    # thousands of them come and go (it once took a third of the delivery's time). When the
    # host process froze its heap already (gc.freeze before forking workers, or a test
    # session), that freeze does the same and stays: unfreeze would release it too.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        for outcome in rudderstack.deliver(events, stats=report.stats, log=log):
            if outcome.accepted:
                report.accepted += len(outcome.accepted)
                committer.accepted(outcome.accepted.ref_array())
            if outcome.rejected:
                failures.extend((e.ref, reason) for e, reason in outcome.rejected)
    except RudderstackRefusedError:
        failures.clear()
        raise
    finally:
        if freeze:
            gc.unfreeze()
        events.close()
        report.rejected.extend(failures)
        # Whatever happens (a 401, retries exhausted, a crash of our own), keep what was accepted.
        try:
            if failures:
                committer.rejected(failures)
        finally:
            committer.close()
        # The commits above logged the changes and recorded their IDs; the snapshot takes the
        # last of them here (`SyncState.commit_changes`, defer). Killed before: at the next open.
        state.settle_commits()
    return report


def pending_counts(
    state: SyncState,
    window: str | None,
    sync: SyncConfig | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, int]:
    """Changes to send per change type (of one window; of these primary ``keys``, if given),
    before delivery starts.

    With ``sync``, quarantined changes are not counted: they are not sent.
    """
    by_change = state.change_counts(window, sync.max_attempts if sync else None, keys)
    return {change: by_change.get(change, (0, 0))[1] for change in CHANGE_TYPES}


def delivery_frame(state: SyncState, run_id: str, sync: SyncConfig) -> pd.DataFrame:
    """One row per event this run tried: (window,) key, messageId, change type, status, error."""
    frame = (
        state.conn.sql(
            """
            select window_key, pk, change, message_id, status, error, attempt from delivery_log
            where run_id = $run_id order by window_key, change_id
            """,
            params={"run_id": run_id},
        )
        .to_arrow_table()
        .to_pandas()  # Arrow-backed strings: no Python object per value
    )
    frame.columns = [
        "partition",
        sync.primary_key,
        "change_type",
        "message_id",
        "status",
        "error",
        "attempt",
    ]
    return frame if sync.partitions else frame.drop(columns="partition")
