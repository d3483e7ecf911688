"""Moving a sync's state between its local DuckDB file and the warehouse, without losing a change.

Turning `state_schema` on moves a local state into the warehouse at the sync's next run
(`settle_local_state`: its snapshot, pending changes with their messageIds, rejected rows,
delivery log and salt), and marks the local file as moved so that it is never used again by
mistake. Turning it off is a command, because local mode does not know the warehouse:
`python -m rudder_sync state to-local SYNC` (`cli/state.py`) copies the warehouse state into the
local file (`copy_warehouse_into_local`) and marks the warehouse state as moved; turning
`state_schema` on again moves it back. `python -m rudder_sync state drop SYNC` drops a removed
sync's tables. A state marked as moved refuses to run, naming where the state went. The first
in-warehouse diff after a move reads every row once (the snapshot has no warehouse hashes yet) and
sends only what changed.

`python -m rudder_sync.warehouse_state.move to-local|drop SYNC` is the same command under its
former name.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from ..errors import StateError
from ..state import MOVED_KEY, SALT_KEY, SyncState, open_state, run
from .state import APPEND_CURSOR, DROP_COST, WarehouseSyncState

IMPORTED_KEY = "imported_from"
# meta of an append sync's state: its cursor's DuckDB type (`append.CURSOR_TYPE_KEY`), which the
# local `append_cursor` table has and the warehouse's (text) does not
CURSOR_TYPE_KEY = "append_cursor_type"
# What a local table gives the warehouse: hashes as text (the warehouse has no unsigned
# 64-bit type); no warehouse key or hash yet, so the first diff after the move reads every row.
_HASH_AS_TEXT = "* replace (__rs_hash::varchar as __rs_hash)"
_LOCAL_TABLES = {
    "snapshot": f"{_HASH_AS_TEXT}, null::varchar as __rs_wpk, null::varchar as __rs_whash",
    "pending": f"{_HASH_AS_TEXT}, null::varchar as __rs_wpk, null::varchar as __rs_whash",
    "rejected_rows": f"{_HASH_AS_TEXT}, null::varchar as __rs_wpk",
    "delivery_log": "*",
}


def settle_local_state(state: WarehouseSyncState, local: Path) -> str | None:
    """Before a warehouse state is used: move a local state in, or refuse an ambiguous pair.

    Returns what happened, for the log (None: nothing to do).
    """
    meta = state.all_meta()
    if not local.exists():
        if MOVED_KEY in meta:
            raise StateError(
                f"sync '{state.sync_name}': its state in {state.path} was moved to "
                f"{meta[MOVED_KEY]}, and that file is gone. Fix: restore the file; dropping the "
                f"sync's tables in the warehouse instead means starting over: {DROP_COST}."
            )
        return None
    with open_state(local.parent, state.sync_name, local.name.endswith(".dry_run.duckdb")) as old:
        if old.get_meta(MOVED_KEY):
            return None  # moved here before: the warehouse state is the one
        fresh = not meta.get("initialized") and not state.store.rows(
            f"select 1 from {state.tables.snapshot} limit 1"
        )
        same = meta.get(IMPORTED_KEY) == str(local) and meta.get(SALT_KEY) == old.get_meta(SALT_KEY)
        if not (fresh or MOVED_KEY in meta or same):
            raise StateError(
                f"sync '{state.sync_name}': both {local} and {state.path} hold a state, and "
                "neither was moved from the other. Fix: keep one: move the file away to use the "
                "warehouse state, or drop the sync's warehouse tables to move the file in."
            )
        if not same:
            copy_local_into_warehouse(old, state, local)
        with old.transaction():
            old.set_meta(MOVED_KEY, f"{state.path} at {_now()}")
    return f"moved its state from {local} into {state.path}"


def copy_local_into_warehouse(old: SyncState, state: WarehouseSyncState, local: Path) -> None:
    """Replace the warehouse tables with the local state's (one warehouse transaction)."""
    t = state.tables
    store = state.store
    tables = dict(_LOCAL_TABLES)
    meta = dict(run(old.conn, "select key, value from meta"))
    if old.has_table(APPEND_CURSOR):  # an append sync's keys and their cursor, as text
        tables[APPEND_CURSOR] = "__rs_pk, __rs_cursor::varchar as __rs_cursor"
        meta[CURSOR_TYPE_KEY] = run(
            old.conn,
            "select data_type from information_schema.columns "
            f"where table_name = '{APPEND_CURSOR}' and column_name = '__rs_cursor'",
        )[0][0]
        state.ensure_append_cursor()  # DDL: its own commit, before the copy's
    ingested = {
        table: store.ingest(
            f"__rs_import_{table}",
            old.conn.sql(f"select {columns} from {table}").to_arrow_table(),
        )
        for table, columns in tables.items()
    }
    with store.transaction():
        for table in ("meta", *tables):
            store.execute(f"delete from {getattr(t, table)}")
        for table, source in ingested.items():
            columns = ", ".join(store.columns(source))
            store.execute(
                f"insert into {getattr(t, table)} ({columns}) select {columns} from {source}"
            )
        for key, value in meta.items():
            if key != MOVED_KEY:
                store.set_meta(key, value)
        store.set_meta(IMPORTED_KEY, str(local))
    run(state.conn, "delete from meta")
    state.load()


def copy_warehouse_into_local(state: WarehouseSyncState, local: Path) -> None:
    """Replace the local state's tables with the warehouse's; mark the warehouse state moved."""
    with open_state(local.parent, state.sync_name, local.name.endswith(".dry_run.duckdb")) as new:
        t = state.tables
        tables = {
            "meta": state.store.arrow(f"select key, value from {t.meta}"),
            **{
                table: state.store.arrow(f"select * from {getattr(t, table)}")
                for table in _LOCAL_TABLES
            },
        }
        cursor_type = state.store.get_meta().get(CURSOR_TYPE_KEY)
        if cursor_type is not None and state.store.exists(t.append_cursor):
            tables[APPEND_CURSOR] = state.store.arrow(
                f"select __rs_pk, __rs_cursor from {t.append_cursor}"
            )
            run(
                new.conn,
                f"create or replace table {APPEND_CURSOR} "
                f"(__rs_pk varchar, __rs_cursor {cursor_type})",
            )
        with new.transaction():
            for table, rows in tables.items():
                local_columns = [r[0] for r in run(new.conn, f"describe {table}")]
                new.conn.register("__rs_moved", rows)
                run(new.conn, f"delete from {table}")
                casts = {"__rs_hash": "ubigint", "__rs_cursor": cursor_type}
                select = ", ".join(
                    f"{c}::{casts[c]} as {c}" if c in casts else c for c in local_columns
                )
                run(new.conn, f"insert into {table} select {select} from __rs_moved")
                new.conn.unregister("__rs_moved")
            run(new.conn, f"delete from meta where key in ('{MOVED_KEY}', '{IMPORTED_KEY}')")
    with state.store.transaction():
        state.store.set_meta(MOVED_KEY, f"{local} at {_now()}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


if __name__ == "__main__":  # the command's former name, kept working
    from ..cli.state import main

    sys.exit(main(prog="python -m rudder_sync.warehouse_state.move"))
