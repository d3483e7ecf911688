"""The snapshot and diff steps of a sync whose state lives in the warehouse.

Snapshot: the model is materialised in the warehouse with its fingerprints (`sql.fingerprint`);
nothing leaves. Diff: the warehouse finds the keys that changed (`sql.delta`), only their rows
and snapshot rows are read out, and the local diff (`diff.compute_diff`) runs on them in the
scratch state, so its changes, messageIds and rejected rows are those of local mode. The delivery
step is the local one, on the scratch state, mirrored into the warehouse.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from ..config import SyncConfig
from ..diff import DiffMode, check_model_columns, content_shape
from ..jsonvalues import column_types, quote_ident
from ..state import StateError
from ..steps import DiffResult, Snapshot, run_diff
from ..warehouses.postgres import PostgresWarehouse
from .sql import base_rows_sql, changed_rows_sql, delta_sql, fingerprint_sql
from .state import WarehouseSyncState

DIALECT = "postgres"


def take_snapshot_in_warehouse(
    state: WarehouseSyncState, sync: SyncConfig, warehouse: PostgresWarehouse
) -> Snapshot:
    """Materialise the model as `<sync>__model` with its fingerprints; its rows and types."""
    body = sync.model.strip().rstrip(";")
    with warehouse.read_model(f"select * from (\n{body}\n) as __rs_probe limit 0") as reader:
        empty = reader.read_all()
    check_model_columns(sync, empty.schema.names)
    store, tables = state.store, state.tables
    create = fingerprint_sql(sync, content_shape(sync), tables, DIALECT, sync.model)
    try:
        with store.transaction():
            if warehouse.statement_timeout_seconds:
                milliseconds = max(1, round(warehouse.statement_timeout_seconds * 1000))
                store.execute(f"set local statement_timeout = {milliseconds}")
            store.execute(f"drop table if exists {tables.model}")
            store.execute(create)
    except store.error_types as exc:
        fix = (
            warehouse.timeout_fix()
            if "statement timeout" in str(exc)
            else "correct the model; it runs in the warehouse's own SQL"
        )
        raise store.error("the model failed", exc, fix) from None
    rows = int(store.rows(f"select count(*) from {tables.model}")[0][0])
    scratch = duckdb.connect()
    try:
        scratch.register("__rs_empty", empty)
        types = column_types(scratch, "__rs_empty")
    finally:
        scratch.close()
    return Snapshot({"": rows}, types)


def run_diff_in_warehouse(
    state: WarehouseSyncState,
    sync: SyncConfig,
    warehouse: PostgresWarehouse,
    mode: DiffMode,
    now: datetime,
    retry_quarantined: bool = False,
) -> DiffResult:
    """Diff in the warehouse, read out only what changed, and rebuild the pending changes."""
    store, tables = state.store, state.tables
    if not store.rows("select to_regclass($1) is not null", [tables.model])[0][0]:
        raise StateError(
            f"sync '{sync.name}': no model snapshot in {state.path} yet; materialize "
            f"{sync.name}/snapshot first."
        )
    with store.transaction():
        store.execute(f"drop table if exists {tables.delta}")
        store.execute(delta_sql(tables, DIALECT))
    every_row = mode.resync or not state.initialized
    with warehouse.read_model(changed_rows_sql(tables, DIALECT, every_row)) as reader:
        rows_transferred = state.replace_model_rows(reader)
    state_rows = _load_base_rows(state, sync)
    result = run_diff(state, sync, [], mode, now, retry_quarantined)
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
    return state.load_table("snapshot", base_rows_sql(state.tables, ingested, DIALECT))
