"""The work of a sync's three steps, as plain functions over its open state.

The assets (`assets.py`) open the state, call one of these and hand the result to `reporting.py`
for logs, metadata and checks. Nothing here needs a Dagster run: `log` is any logger, and the
windows are the run's partitions in chronological order (none for an unpartitioned sync).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from dagster import TimeWindowPartitionsDefinition

from .config import SyncConfig
from .delivery import (
    DeliveryReport,
    deliver_pending,
    delivery_frame,
    pending_counts,
)
from .diff import (
    REJECTED_SAMPLE,
    DiffMode,
    DiffSummary,
    check_model_columns,
    compute_diff,
    pending_frame,
    sync_shape,
)
from .errors import ConfigError, WindowFailedError
from .jsonvalues import column_types
from .partitions import WindowSpec, diff_window, store_window_rows, window_table
from .reporting import log_window_done
from .rudderstack import RudderstackError, RudderstackResource
from .state import StateError, SyncState, run
from .warehouses import DuckDBWarehouse, WarehouseResource
from .warehouses.duckdb import InPlaceUnsupported

# Set by a snapshot that left the model's rows in the (DuckDB) warehouse for the diff to read.
READ_IN_PLACE_KEY = "model_read_in_place"


@dataclass
class Snapshot:
    rows_by_window: dict[str, int]  # "" for an unpartitioned sync
    types: dict[str, str]  # the model's columns and their DuckDB types
    read_in_place: bool = False  # rows left in the warehouse (see `take_snapshot`)


def take_snapshot(
    state: SyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    partitions: TimeWindowPartitionsDefinition | None,
    windows: list[WindowSpec],
) -> Snapshot:
    """Run the model (once per window) and store its rows in the state.

    A DuckDB model that the diff can read in place is only checked and counted here: its rows
    stay in the warehouse (`model_rows` is dropped, and the meta says so to the diff step).
    """
    in_place = _in_place(warehouse)
    if partitions is None and in_place is not None:
        try:
            with in_place.attach(state.conn, sync.model) as model, model.reading():
                types = column_types(state.conn, model.relation)
                check_model_columns(sync, list(types))
                rows = run(state.conn, f"select count(*) from {model.relation}")[0][0]
        except InPlaceUnsupported:
            pass  # copied below, as from any warehouse
        else:
            run(state.conn, "drop table if exists model_rows")
            state.set_meta(READ_IN_PLACE_KEY, "true")
            return Snapshot({"": rows}, types, read_in_place=True)
    if partitions is None:
        with warehouse.read_model(sync.model) as reader:
            check_model_columns(sync, reader.schema.names)
            rows_by_window = {"": state.replace_model_rows(reader)}
        table = "model_rows"
    else:
        rows_by_window = store_window_rows(state, sync, warehouse, partitions, windows)
        table = window_table(windows[-1].key)
    return Snapshot(rows_by_window, column_types(state.conn, table))


def _in_place(warehouse: WarehouseResource) -> DuckDBWarehouse | None:
    """The warehouse, when it is a DuckDB file whose models can be read in place."""
    if isinstance(warehouse, DuckDBWarehouse) and warehouse.reads_in_place():
        return warehouse
    return None


def settle_diff(
    state: SyncState,
    sync: SyncConfig,
    mode: DiffMode,
    delivered_before: Callable[[], str | None],
    adopt_from: str | None,
    log: Any,
) -> DiffMode:
    """Before a diff: the state must be this sync's (`SyncState.check_identity`) and not lost,
    and a resync asked for while an earlier one is unfinished finishes that one instead; the
    mode the diff runs in.

    ``delivered_before``: the last delivery Dagster's instance recorded for the sync, if any
    (asked only when the state has no baseline: a first run, or a lost state)."""
    notice = state.check_identity(sync_shape(sync), adopt_from)
    if notice:
        log.warning(f"sync '{sync.name}': {notice}")
    if sync.partitions is None and not state.initialized:
        refuse_lost_state(state, sync, mode, delivered_before())
    if mode.resync and (left := state.unfinished_resync(sync.max_attempts)):
        log.warning(
            f"sync '{sync.name}': resync: an earlier resync still has {left} changes to "
            "deliver; this run finishes it under the same messageIds instead of starting a new "
            "one (which would send the rows it delivered again, under new messageIds). Run the "
            "resync again after this run to start a new one."
        )
        return DiffMode()
    return mode


def refuse_lost_state(
    state: SyncState, sync: SyncConfig, mode: DiffMode, delivered_before: str | None
) -> None:
    """A state without a baseline for a sync that delivered before was lost (deleted, moved
    away, its tables dropped): a diff against nothing would record the model as a new baseline
    (a track sync without initial results sends nothing: every change since the last delivery
    is lost) or send it all again. Only run config that says which may go on."""
    if delivered_before is None or mode.resync or mode.reset_baseline:
        return
    raise StateError(
        f"sync '{sync.name}': its state {state.path} holds no baseline, but Dagster recorded a "
        f"delivery of {sync.name}/events ({delivered_before}): the state was lost (deleted, "
        "moved away or its tables dropped), and with it its pending changes and what was "
        "delivered, so the changes since that delivery cannot be found. Fix: restore the state "
        "if you can; otherwise choose in the run config ops: "
        f"{{{sync.name}__diff: {{config: {{...}}}}}}: resync: true, approve_large_change: true "
        "(sends every row again, under new messageIds) or reset_baseline: true, "
        "approve_large_change: true (records the current model as delivered: those changes "
        "are never sent)."
    )


@dataclass
class DiffResult:
    summaries: dict[str, DiffSummary]  # by window key ("" for an unpartitioned sync)
    frame: pd.DataFrame  # the pending changes as users read them
    readmitted: int  # quarantined changes re-admitted by retry_quarantined
    # In-warehouse state: rows read out of the warehouse (rows_transferred, model_rows, ...).
    transfer: dict[str, int] | None = None
    frame_left_out: int = 0  # changes that send nothing, beyond diff.FRAME_SILENT_ROWS


def run_diff(
    state: SyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    windows: list[WindowSpec],
    mode: DiffMode,
    now: datetime,
    retry_quarantined: bool = False,
) -> DiffResult:
    """Diff the model against what was delivered (or each window against the one before).

    The model's rows are those the snapshot step stored, or, when it stored none, the DuckDB
    warehouse's, read in place.
    """
    # Before the diff, so that its counts and the guard include the re-admitted changes.
    readmitted = state.readmit_quarantined(sync.max_attempts) if retry_quarantined else 0
    if not windows and not state.has_table("model_rows"):
        in_place = _in_place(warehouse)
        if in_place is None or not state.get_meta(READ_IN_PLACE_KEY):
            raise StateError(
                f"sync '{sync.name}': no model snapshot yet; materialize {sync.name}/snapshot "
                "first."
            )
        with in_place.attach(state.conn, sync.model) as model:
            summaries = {"": compute_diff(state, sync, now, mode=mode, model=model)}
    elif not windows:
        summaries = {"": compute_diff(state, sync, now, mode=mode)}
    else:
        summaries = {
            spec.key: compute_diff(state, sync, now, diff_window(spec, state)) for spec in windows
        }
    frame, left_out = pending_frame(state, sync, [key for key in summaries if key])
    return DiffResult(summaries, frame, readmitted, frame_left_out=left_out)


def _check_only_keys(
    state: SyncState, sync: SyncConfig, windows: list[str | None], only_keys: Sequence[str]
) -> int:
    """Refuse keys without a pending change to send (in any of the run's windows); how many
    changes of other rows are held back."""
    missing = state.keys_without_sendable(only_keys, windows, sync.max_attempts)
    if missing:
        named = ", ".join(repr(key) for key in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        scope = " in the run's windows" if windows != [None] else ""
        raise ConfigError(
            f"sync '{sync.name}': run config only_keys names {len(missing)} key(s) with no "
            f"pending change to send{scope}: {named}{more}; nothing was sent. Fix: name rows "
            f"of the {sync.primary_key} column with pending changes (the {sync.name}/diff "
            "asset lists them; a quarantined change needs retry_quarantined first), or drop "
            "those keys."
        )
    return sum(
        sum(pending_counts(state, window, sync).values())
        - sum(pending_counts(state, window, sync, only_keys).values())
        for window in windows
    )


@dataclass
class Delivery:
    total: DeliveryReport
    per_window: dict[str, dict[str, Any]] = field(default_factory=dict)
    frame: pd.DataFrame | None = None  # one row per event this run tried
    quarantined: int = 0
    quarantine_sample: list[dict[str, Any]] = field(default_factory=list)
    held_back: int = 0  # run config only_keys: other rows' changes left pending, to send later
    pruned: int = 0  # delivery log rows older than the sync's retention, deleted after delivery


def deliver_windows(
    state: SyncState,
    sync: SyncConfig,
    sender: RudderstackResource,
    run_id: str,
    log: Any,
    windows: list[WindowSpec],
    commit: bool,
    destination: str,
    only_keys: Sequence[str] | None = None,
) -> Delivery:
    """Deliver the pending changes, window by window in order, committing what was accepted.

    ``only_keys`` (run config): send only these rows' changes, committed as usual; the others
    stay pending, untouched, for the next run. A key without a change to send fails the run
    before anything is sent, so that a typo does not pass as "nothing to send"."""
    keys: list[str | None] = [spec.key for spec in windows] or [None]
    result = Delivery(total=DeliveryReport(status="dry_run" if sender.dry_run else "delivered"))
    if only_keys is not None:
        result.held_back = _check_only_keys(state, sync, keys, only_keys)
    for number, key in enumerate(keys, start=1):
        to_send = pending_counts(state, key, sync, only_keys) if key is not None else {}
        try:
            report = deliver_pending(
                state,
                sync,
                sender,
                run_id,
                log,
                window=key,
                commit=commit,
                stats=result.total.stats,
                destination=destination,
                keys=only_keys,
            )
        except RudderstackError as exc:
            if key is None:
                raise
            raise WindowFailedError(
                f"window {key} ({number} of {len(keys)}) failed: {exc}. Windows before it are "
                f"delivered; re-run from {key}"
            ) from None
        result.total.absorb(report)
        if key is not None:
            result.per_window[key] = {
                **to_send,
                "accepted": report.accepted,
                "rejected": len(report.rejected),
            }
            log_window_done(log, sync, key, number, len(keys), report, result.total)
    result.frame = delivery_frame(state, run_id, sync)
    result.quarantined, result.quarantine_sample = state.quarantined(
        sync.max_attempts, REJECTED_SAMPLE
    )
    if commit:  # the state stays bounded: one DELETE, after this run's commits
        result.pruned = state.prune_delivery_log(sync.delivery_log_retention)
        if result.pruned:
            log.info(
                f"sync '{sync.name}': pruned {result.pruned} delivery log rows older than "
                f"{sync.delivery_log_retention} (delivery_log_retention)"
            )
    return result
