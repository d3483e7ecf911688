"""One sync's state tables in the warehouse's state schema, behind one small protocol per engine.

`StateStore` is what `state`, `steps` and `move` call: statements, reads (rows, Arrow, a stream),
loading a local table (`ingest`), transactions, the sync's lock, its tables and the grants it
needs. Each engine family is one dialect module (`postgres_store`, `snowflake_store`,
`redshift_store`, `bigquery_store`, `databricks_store`) named in `DIALECT_MODULES`; adding an
engine is a module and a line there, never a branch in the steps.

SQL handed to a store is written with PostgreSQL's `$1` placeholders; a store whose driver binds
`?` renumbers them (`qmark`). Timestamps the state writes come from `now_sql`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa

from ..errors import StateError
from ..warehouses.base import WarehouseResource
from .postgres_store import Store as WarehouseStore
from .sql import Tables

__all__ = ["DIALECT_MODULES", "StateStore", "WarehouseStore", "open_store", "supports"]

# warehouse kind -> the dialect module (in this package) whose `Store` keeps its state.
DIALECT_MODULES = {
    "postgres": "postgres_store",
    "snowflake": "snowflake_store",
    "redshift": "redshift_store",
    "bigquery": "bigquery_store",
    "databricks": "databricks_store",
}
# The state tables of a sync that a store creates (the model, delta and window tables are made
# by the steps), by role.
STATE_ROLES = ("meta", "snapshot", "pending", "rejected_rows", "delivery_log")


class StateStore(Protocol):
    """One sync's state tables in the warehouse and the connection that reads and writes them."""

    tables: Tables
    sync_name: str
    #: sqlglot dialect of the in-warehouse diff's statements
    dialect: str
    #: how the model's `$name` parameters are bound (`warehouses.sql.bind`)
    paramstyle: str
    #: the driver's exception classes
    error_types: tuple[type[Exception], ...]

    @property
    def where(self) -> str:
        """The state's location for messages: warehouse, schema and table prefix."""
        ...

    @property
    def now_sql(self) -> str:
        """SQL for the current time, as the state records it (delivery log, snapshot)."""
        ...

    def error(self, what: str, exc: BaseException, fix: str = "") -> StateError: ...

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Run a statement; rows it changed (-1 when the driver does not say)."""
        ...

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]: ...

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """A query's rows (the state's own tables: lower-case column names)."""
        ...

    def reader(
        self, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> AbstractContextManager[pa.RecordBatchReader]:
        """Stream a query's rows typed as `read_model` types them (model rows that leave)."""
        ...

    def columns(self, table: str) -> list[str]: ...

    def ingest(self, name: str, table: pa.Table) -> str:
        """``table`` as a table of this session, for the statements that follow; its name.

        Called before the first write of a transaction (on Snowflake it is DDL, which commits).
        """
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """The statements inside commit together, or not at all."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def begin_read_only(self) -> None:
        """Make the statements that follow (until commit or rollback) one read-only transaction
        seeing one snapshot, where the engine has such transactions (`lookup`)."""
        ...

    def get_meta(self) -> dict[str, str]: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def commit_snapshot(self, where: str) -> None:
        """Upsert the pending changes chosen by ``where`` (unwindowed) into the snapshot."""
        ...

    def refresh_snapshot_keys(self, fresh: str) -> None:
        """Record the warehouse key and hash of rows that left unchanged (``fresh``)."""
        ...

    def ensure_tables(self) -> bool:
        """Create the schema (if missing) and the sync's tables; whether they existed before."""
        ...

    def exists(self, table: str) -> bool:
        """Whether a (qualified) table exists."""
        ...

    def table_names(self, prefix: str) -> list[str]:
        """Names of the state schema's tables that start with ``prefix``."""
        ...

    def analyze(self, table: str) -> None:
        """Statistics for a table just written, where the planner needs them."""
        ...

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        """Statements run before the model's `create table ... as`, in its transaction."""
        ...

    def is_timeout(self, exc: BaseException) -> bool: ...

    def lock(self, wait_seconds: float) -> None:
        """Hold the sync's lock, waiting up to ``wait_seconds``; fail naming its holder."""
        ...

    def alive(self) -> bool:
        """Whether the connection still answers (after an error: lost, or a failed statement)."""
        ...

    def close(self) -> None:
        """Release the lock and close the connection."""
        ...


def supports(warehouse: WarehouseResource) -> bool:
    """Whether the warehouse's engine can keep a sync's state (`state_schema`)."""
    return warehouse.kind in DIALECT_MODULES


def open_store(warehouse: WarehouseResource, tables: Tables, sync_name: str) -> StateStore:
    """Connect to the warehouse for one sync's state, with the store of its engine."""
    module = importlib.import_module(f"{__package__}.{DIALECT_MODULES[warehouse.kind]}")
    store: StateStore = module.Store(warehouse, tables, sync_name)
    return store


_PLACEHOLDER = re.compile(r"\$(\d+)")


def qmark(sql: str, params: Sequence[Any] | None) -> tuple[str, list[Any] | None]:
    """`$n` placeholders as `?`, the values in the order they appear (``$1`` may repeat).

    SQL without them (a model already bound in `?` style) keeps its values as they are."""
    if params is None:
        return sql, None
    values = list(params)
    if not _PLACEHOLDER.search(sql):
        return sql, values
    order: list[Any] = []

    def one(match: re.Match[str]) -> str:
        order.append(values[int(match.group(1)) - 1])
        return "?"

    return _PLACEHOLDER.sub(one, sql), order
