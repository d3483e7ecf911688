"""Moving a sync's state between its local DuckDB file and the warehouse, without losing a change.

Turning `state_schema` on moves a local state into the warehouse at the sync's next run (its
snapshot, pending changes with their messageIds, rejected rows, delivery log and salt), and marks
the local file as moved so that it is never used again by mistake. Turning it off is a command,
because local mode does not know the warehouse:

    python -m rudder_sync.warehouse_state.move to-local SYNC [--dry-run-state]

copies the warehouse state into the local file and marks the warehouse state as moved; turning
`state_schema` on again moves it back. A sync removed from the config leaves its tables until

    python -m rudder_sync.warehouse_state.move drop SYNC [--yes]

drops them (without --yes it lists them). A state marked as moved refuses to run, naming where the
state went. The first in-warehouse diff after a move reads every row once (the snapshot has no
warehouse hashes yet) and sends only what changed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import RudderSyncError, StateError
from ..state import LOCK_WAIT_SECONDS, MOVED_KEY, SALT_KEY, SyncState, open_state, run, state_path
from ..warehouses.postgres import PostgresWarehouse
from ..warehouses.settings import PostgresSettings
from .sql import TABLE_ROLES, WINDOW_INFIX, Tables
from .state import DROP_COST, WarehouseSyncState
from .store import WarehouseStore

IMPORTED_KEY = "imported_from"
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
    ingested = {
        table: store.ingest(
            f"__rs_import_{table}",
            old.conn.sql(f"select {columns} from {table}").to_arrow_table(),
        )
        for table, columns in _LOCAL_TABLES.items()
    }
    meta = dict(run(old.conn, "select key, value from meta"))
    with store.transaction():
        for table in ("meta", *_LOCAL_TABLES):
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
        with new.transaction():
            for table, rows in tables.items():
                local_columns = [r[0] for r in run(new.conn, f"describe {table}")]
                new.conn.register("__rs_moved", rows)
                run(new.conn, f"delete from {table}")
                select = ", ".join(
                    f"{c}::ubigint as {c}" if c == "__rs_hash" else c for c in local_columns
                )
                run(new.conn, f"insert into {table} select {select} from __rs_moved")
                new.conn.unregister("__rs_moved")
            run(new.conn, f"delete from meta where key in ('{MOVED_KEY}', '{IMPORTED_KEY}')")
    with state.store.transaction():
        state.store.set_meta(MOVED_KEY, f"{local} at {_now()}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """`python -m rudder_sync.warehouse_state.move to-local|drop SYNC`: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m rudder_sync.warehouse_state.move")
    parser.add_argument("command", choices=["to-local", "drop"])
    parser.add_argument("sync")
    parser.add_argument("--dry-run-state", action="store_true", help="the dry runs' own state")
    parser.add_argument("--yes", action="store_true", help="drop: really drop the tables")
    args = parser.parse_args(argv)
    try:
        message = _to_local(args) if args.command == "to-local" else _drop(args)
    except RudderSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def _warehouse(name: str) -> tuple[Any, PostgresWarehouse]:
    """The project (RUDDER_SYNC_CONFIG) and its warehouse with its state_schema."""
    from ..definitions import load_project

    project = load_project()
    settings = project.warehouse
    schema = getattr(settings, "state_schema", None)
    if not isinstance(settings, PostgresSettings) or not schema:
        raise StateError(
            f"sync '{name}': the config's warehouse has no state_schema, so this command cannot "
            "find the warehouse state. Fix: run it while state_schema is still set."
        )
    url = settings.url if isinstance(settings.url, str) else settings.url.value()
    return project, PostgresWarehouse(url=url, state_schema=schema)


def _to_local(args: argparse.Namespace) -> str:
    from .state import open_warehouse_state

    project, warehouse = _warehouse(args.sync)
    sync = project.syncs.get(args.sync)
    if sync is None:
        raise StateError(f"no sync '{args.sync}' in the config: {', '.join(project.syncs)}")
    local = state_path(project.state, sync.name, args.dry_run_state)
    with open_warehouse_state(
        warehouse, sync.name, sync.primary_key, args.dry_run_state, settle=False
    ) as state:
        if MOVED_KEY in state.store.get_meta():
            raise StateError(f"sync '{sync.name}': its warehouse state was moved already.")
        copy_warehouse_into_local(state, local)
    return f"sync '{sync.name}': state copied into {local}; remove state_schema to use it."


def _drop(args: argparse.Namespace) -> str:
    """Drop a removed sync's tables (its dry-run state's too), under its lock."""
    project, warehouse = _warehouse(args.sync)
    if args.sync in project.syncs:
        raise StateError(
            f"sync '{args.sync}' is still in the config. Fix: remove it from the config first "
            "(its state is dropped only for a sync that no longer runs)."
        )
    assert warehouse.state_schema is not None
    dropped: list[str] = []
    for prefix in (args.sync, f"{args.sync}__dry_run"):
        store = WarehouseStore(warehouse, Tables(warehouse.state_schema, prefix), args.sync)
        try:
            store.lock(LOCK_WAIT_SECONDS)
            names = [
                name
                for (name,) in store.rows(
                    "select tablename from pg_tables where schemaname = $1",
                    [warehouse.state_schema],
                )
                if name in {store.tables.name(role) for role in TABLE_ROLES}
                or name.startswith(prefix + WINDOW_INFIX)
            ]
            if args.yes:
                with store.transaction():
                    for name in names:
                        store.execute(f"drop table {store.tables.qualified(name)}")
            dropped += names
        finally:
            store.close()
    if not args.yes:
        return f"would drop {len(dropped)} tables: {', '.join(dropped) or '(none)'}; add --yes."
    return f"sync '{args.sync}': dropped {len(dropped)} tables: {', '.join(dropped) or '(none)'}."


if __name__ == "__main__":
    sys.exit(main())
