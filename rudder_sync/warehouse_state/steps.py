"""The snapshot and diff steps of a sync whose state lives in the warehouse.

Snapshot: the model (per time window, for partitioned syncs) is materialised in the warehouse with
its fingerprints (`sql.fingerprint_sql`); nothing leaves. Diff: the warehouse finds the keys that
changed (against the committed snapshot, or a window against the window before), only their rows
are read out, and the local diff (`diff.compute_diff`) runs on them in the scratch state, so its
changes, messageIds and rejected rows are those of local mode. The delivery step is the local one,
on the scratch state, mirrored into the warehouse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
from dagster import TimeWindowPartitionsDefinition

from ..config import SyncConfig
from ..diff import DiffMode, DiffSummary, Window, check_model_columns, compute_diff, content_shape
from ..diff import pending_frame as build_pending_frame
from ..errors import MissingWindowError
from ..jsonvalues import column_types, quote_ident
from ..partitions import WindowSpec
from ..state import StateError
from ..steps import DiffResult, Snapshot, run_diff
from ..warehouses.base import WarehouseResource
from ..warehouses.sql import bind, statement_body
from .sql import (
    WINDOW_INFIX,
    base_rows_sql,
    changed_rows_sql,
    delta_sql,
    fingerprint_sql,
    window_delta_sql,
    window_rows_sql,
)
from .state import WarehouseSyncState


def take_snapshot_in_warehouse(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    partitions: TimeWindowPartitionsDefinition | None = None,
    windows: Sequence[WindowSpec] = (),
) -> Snapshot:
    """Materialise the model as `<sync>__model` (or each window of the run, and the one before
    the first, as `<sync>__w_<key>`) with its fingerprints; rows per window and the types."""
    tables = state.tables
    if partitions is None:
        targets: dict[str, tuple[str, dict[str, Any] | None]] = {"": (tables.model, None)}
    else:
        keys = [spec.key for spec in windows]
        if windows and windows[0].previous_key:
            keys.insert(0, windows[0].previous_key)
        targets = {}
        for key in keys:
            window = partitions.time_window_for_partition_key(key)
            bounds = {"partition_start": window.start, "partition_end": window.end}
            targets[key] = (tables.qualified(tables.window_name(key)), bounds)
        _drop_windows_except(state, {tables.window_name(key) for key in keys})
    rows, empty = {}, pa.table({})
    for key, (target, params) in targets.items():
        empty = _probe(state, sync, warehouse, params)
        rows[key] = _materialise(state, sync, warehouse, target, params)
    scratch = duckdb.connect()
    try:
        scratch.register("__rs_empty", empty)
        types = column_types(scratch, "__rs_empty")
    finally:
        scratch.close()
    return Snapshot(rows, types)


def _probe(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    params: Mapping[str, Any] | None,
) -> pa.Table:
    """The model's columns (no rows), checked against the sync's (read-only, on the state's
    connection)."""
    body = statement_body(sync.model)
    probe = f"select * from (\n{body}\n) as __rs_probe limit 0"
    with state.store.reader(probe, params, read_only=True) as r:
        empty = r.read_all()
    check_model_columns(sync, empty.schema.names)
    return empty


def _materialise(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    target: str,
    params: Mapping[str, Any] | None,
) -> int:
    """`create table <target> as` the fingerprinted model, in one transaction; its rows."""
    store = state.store
    model, args = bind(sync.model, params, store.paramstyle)  # type: ignore[arg-type]
    create = fingerprint_sql(sync, content_shape(sync), state.tables, store.dialect, model, target)
    try:
        with store.transaction():
            for setting in store.model_settings(warehouse.statement_timeout_seconds):
                store.execute(setting)
            store.execute(f"drop table if exists {target}")
            store.execute(create, list(args) or None)
    except store.error_types as exc:
        fix = (
            warehouse.timeout_fix()
            if store.is_timeout(exc)
            else "correct the model; it runs in the warehouse's own SQL"
        )
        raise store.error("the model failed", exc, fix) from None
    return int(store.rows(f"select count(*) from {target}")[0][0])


def _drop_windows_except(state: WarehouseSyncState, keep: set[str]) -> None:
    """Drop the window tables outside this run, so the schema does not grow with history."""
    tables = state.tables
    prefix = tables.prefix + WINDOW_INFIX
    found = state.store.table_names(prefix)
    with state.store.transaction():
        for name in found:
            if name not in keep:
                state.store.execute(f"drop table {tables.qualified(name)}")


def run_diff_in_warehouse(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    mode: DiffMode,
    now: datetime,
    retry_quarantined: bool = False,
    windows: Sequence[WindowSpec] = (),
) -> DiffResult:
    """Diff in the warehouse, read out only what changed, and rebuild the pending changes."""
    if windows:
        return _diff_windows(state, sync, warehouse, windows, now, retry_quarantined)
    store, tables = state.store, state.tables
    if not _exists(state, tables.model):
        raise StateError(
            f"sync '{sync.name}': no model snapshot in {state.path} yet; materialize "
            f"{sync.name}/snapshot first."
        )
    with store.transaction():
        store.execute(f"drop table if exists {tables.delta}")
        store.execute(delta_sql(tables, store.dialect))
        store.analyze(tables.delta)  # the plans that read it need its size
    every_row = mode.resync or not state.initialized
    with store.reader(changed_rows_sql(tables, store.dialect, every_row)) as reader:
        rows_transferred = state.replace_model_rows(reader)
    state_rows = _load_base_rows(state, sync)
    result = run_diff(state, sync, warehouse, [], mode, now, retry_quarantined)
    state.push_diff()
    model_rows, base_rows = store.rows(
        f"select (select count(*) from {tables.model}), "
        f"(select count(*) from {tables.snapshot} where not __rs_deleted)"
    )[0]
    summary = result.summaries[""]
    summary.model_rows, summary.base_rows = int(model_rows), int(base_rows)
    result.transfer = {
        "rows_transferred": rows_transferred,
        "state_rows_transferred": state_rows,
        "model_rows": int(model_rows),
    }
    return result


def _load_base_rows(state: WarehouseSyncState, sync: SyncConfig) -> int:
    """The snapshot rows of the keys that left and of the removed keys, into the scratch
    snapshot; how many."""
    pk = quote_ident(sync.primary_key)
    keys = state.conn.sql(
        f"select distinct cast({pk} as varchar) as __rs_pk from model_rows where {pk} is not null"
    ).to_arrow_table()
    ingested = state.store.ingest("__rs_keys", keys)
    state.store.analyze(ingested)  # a temp table has no statistics until then
    return state.load_table("snapshot", base_rows_sql(state.tables, ingested, state.store.dialect))


def _diff_windows(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    windows: Sequence[WindowSpec],
    now: datetime,
    retry_quarantined: bool,
) -> DiffResult:
    """Each window against the one before, in order: the warehouse finds the keys that differ,
    their rows of both windows leave, and the local diff compares them."""
    readmitted = state.readmit_quarantined(sync.max_attempts) if retry_quarantined else 0
    summaries: dict[str, DiffSummary] = {}
    transferred = model_total = 0
    for spec in windows:
        current = _window_table(state, spec.key)
        previous = _window_table(state, spec.previous_key) if spec.previous_key else None
        with state.store.transaction():
            state.store.execute(f"drop table if exists {state.tables.delta}")
            state.store.execute(
                window_delta_sql(state.tables, current, previous, state.store.dialect)
            )
            state.store.analyze(state.tables.delta)
        transferred += _read_window(state, warehouse, current, "__rs_current_window", True)
        if previous is not None:
            transferred += _read_window(state, warehouse, previous, "__rs_previous_window", False)
        window = Window(
            key=spec.key,
            end=spec.end,
            rows="__rs_current_window",
            previous_rows="__rs_previous_window" if previous is not None else None,
        )
        summary = compute_diff(state, sync, now, window)
        model_rows, unchanged_before = state.store.rows(
            f"select (select count(*) from {current}), "
            + (
                f"(select count(*) from {previous} where __rs_wpk is not null and __rs_wpk "
                f"not in (select __rs_wpk from {state.tables.delta}))"
                if previous is not None
                else "0"
            )
        )[0]
        # Rows of the window before that stayed inside are unchanged, so valid: part of the base.
        summary.model_rows = int(model_rows)
        summary.base_rows += int(unchanged_before)
        model_total += int(model_rows)
        summaries[spec.key] = summary
    frame, left_out = build_pending_frame(state, sync, list(summaries))
    state.push_diff()
    transfer = {"rows_transferred": transferred, "model_rows": model_total}
    return DiffResult(summaries, frame, readmitted, transfer, frame_left_out=left_out)


def _window_table(state: WarehouseSyncState, key: str) -> str:
    table = state.tables.qualified(state.tables.window_name(key))
    if not _exists(state, table):
        raise MissingWindowError(key)
    return table


def _read_window(
    state: WarehouseSyncState, warehouse: WarehouseResource, table: str, into: str, current: bool
) -> int:
    rows = window_rows_sql(table, state.tables, state.store.dialect, current)
    with state.store.reader(rows) as reader:
        return state.replace_table(into, reader)


def _exists(state: WarehouseSyncState, table: str) -> bool:
    return state.store.exists(table)
