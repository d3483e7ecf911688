"""`python -m rudder_sync state to-local|drop SYNC`: a sync's state in the warehouse, by hand.

Turning `state_schema` on moves a local state into the warehouse at the sync's next run; turning
it off is this command, because local mode does not know the warehouse:

    python -m rudder_sync state to-local SYNC [--dry-run-state]

copies the warehouse state into the local file and marks the warehouse state as moved (turning
`state_schema` on again moves it back). A sync removed from the config leaves its tables until

    python -m rudder_sync state drop SYNC [--yes]

drops them (without --yes it lists them). The project is RUDDER_SYNC_CONFIG's, with its
`state_schema` still set. The copying is `warehouse_state.move`'s;
`python -m rudder_sync.warehouse_state.move` is the same command under its former name.

Exit status: 0 when done, 1 with one line saying why not, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ProjectConfig, config_path_from_env, load_config
from ..errors import RudderSyncError, StateError
from ..state import LOCK_WAIT_SECONDS, MOVED_KEY, state_path
from ..warehouse_state import state_in_warehouse
from ..warehouse_state.move import copy_warehouse_into_local
from ..warehouse_state.sql import LOADED_INFIX, TABLE_ROLES, WINDOW_INFIX, Tables
from ..warehouse_state.state import open_warehouse_state
from ..warehouse_state.store import open_store
from ..warehouses import WarehouseResource, build_warehouse


def main(argv: list[str] | None = None, prog: str = "python -m rudder_sync state") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Move a sync's in-warehouse state (state_schema) back to its local file, or "
        "drop a removed sync's tables. The project is RUDDER_SYNC_CONFIG's.",
    )
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


def _warehouse(name: str) -> tuple[ProjectConfig, WarehouseResource]:
    """The project (RUDDER_SYNC_CONFIG) and its warehouse with its state_schema."""
    project = load_config(config_path_from_env())
    warehouse = None
    if getattr(project.warehouse, "state_schema", None):
        warehouse = build_warehouse(project.warehouse).process_config_and_initialize()
    if warehouse is None or not state_in_warehouse(warehouse):
        raise StateError(
            f"sync '{name}': the config's warehouse has no state_schema, so this command cannot "
            "find the warehouse state. Fix: run it while state_schema is still set."
        )
    return project, warehouse


def _to_local(args: argparse.Namespace) -> str:
    project, warehouse = _warehouse(args.sync)
    sync = project.syncs.get(args.sync)
    if sync is None:
        raise StateError(f"no sync '{args.sync}' in the config: {', '.join(project.syncs)}")
    local = state_path(project.state, sync.name, args.dry_run_state)
    with open_warehouse_state(warehouse, sync.name, sync.primary_key, args.dry_run_state) as state:
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
    schema = getattr(warehouse, "state_schema", None)
    assert schema is not None
    dropped: list[str] = []
    for prefix in (args.sync, f"{args.sync}__dry_run"):
        store = open_store(warehouse, Tables(schema, prefix), args.sync)
        try:
            store.lock(LOCK_WAIT_SECONDS)
            names = [
                name
                for name in store.table_names(prefix)
                if name in {store.tables.name(role) for role in TABLE_ROLES}
                or name.startswith((prefix + WINDOW_INFIX, prefix + LOADED_INFIX))
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
