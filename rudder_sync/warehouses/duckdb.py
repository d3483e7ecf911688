"""The embedded default: a DuckDB file, opened read-only so syncs never lock writers out.

An unpartitioned sync's model can also be read where it is (`attach`): the file is attached
read-only into the sync's own state connection, so the diff fingerprints the model's rows in
place instead of copying them into the state first.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
from pydantic import Field

from .base import BATCH_ROWS, RUN_AGAIN, WarehouseError, WarehouseResource
from .sql import statement_body


class DuckDBWarehouse(WarehouseResource):
    """A DuckDB database file, opened read-only for each model."""

    kind: ClassVar[str] = "duckdb"
    dialect: ClassVar[str] = "duckdb"

    database: str = Field(description="Path of the DuckDB file (or ':memory:').")
    connection_config: dict[str, Any] = Field(
        default={}, description="DuckDB settings; access_mode is always READ_ONLY."
    )
    read_in_place: bool = Field(
        default=True,
        description="Unpartitioned syncs: the diff step attaches this file read-only into the "
        "sync's state and reads the model where it is, instead of the snapshot step copying the "
        "model's rows into the state. Ignored (rows copied) with connection_config set.",
    )

    def describe(self) -> str:
        return f"duckdb {self.database}"

    def reads_in_place(self) -> bool:
        """Whether `attach` applies: a file, and no settings that only a connection of its own
        could take."""
        return self.read_in_place and self.database != ":memory:" and not self.connection_config

    @contextmanager
    def attach(self, conn: duckdb.DuckDBPyConnection, sql: str) -> Iterator[AttachedModel]:
        """This file attached read-only into `conn` (the sync's state) for reading model `sql`.

        The file stays attached, so no writer can change it, until the block ends: every read of
        the model in the block sees the same rows.
        """
        self._check_exists()
        home = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
        try:
            conn.execute(f"attach {_literal(self.database)} as {ATTACHED} (read_only)")
        except duckdb.Error as exc:
            raise WarehouseError(
                f"cannot open warehouse {self.database}: {self.error_message(exc)}"
            ) from exc
        try:
            model = AttachedModel(conn, statement_body(sql), home, self)
            with model.reading():
                model.casts = _copy_casts(conn, model.sql)
            yield model
        finally:
            # After an error inside a transaction `reading` could not switch back; the
            # transaction is rolled back by now.
            conn.execute(f"use {_ident(home)}")
            conn.execute(f"detach {ATTACHED}")

    def open_connection(self) -> duckdb.DuckDBPyConnection:
        self._check_exists()
        config = {**self.connection_config, "access_mode": "READ_ONLY"}
        try:
            return duckdb.connect(self.database, read_only=True, config=config)
        except duckdb.Error as exc:
            raise WarehouseError(
                f"cannot open warehouse {self.database}: {self.error_message(exc)}"
            ) from exc

    @contextmanager
    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """Run `sql` and stream its result in Arrow batches of BATCH_ROWS rows (read-only: the
        connections of `open_connection` are)."""
        reader: pa.RecordBatchReader | None = None
        timer = None
        if self.statement_timeout_seconds:
            timer = threading.Timer(self.statement_timeout_seconds, conn.interrupt)
            timer.daemon = True
            timer.start()
        try:
            try:
                conn.execute("set enable_progress_bar = false")
                used = _named_parameters(sql)
                bound = {k: v for k, v in (params or {}).items() if k in used}
                relation = conn.sql(sql, params=bound) if bound else conn.sql(sql)
                reader = relation.to_arrow_reader(BATCH_ROWS)
            except duckdb.Error as exc:
                raise WarehouseError(self.error_message(exc)) from exc
            yield reader
        finally:
            if timer is not None:
                timer.cancel()
            # The reader holds the query result, and with it the database: closed here, not when
            # a traceback that references it is garbage-collected, so writers are not locked out
            # (the connection is closed by `connection`, or at the end of its session).
            if reader is not None:
                reader.close()

    def _check_exists(self) -> None:
        if self.database != ":memory:" and not Path(self.database).exists():
            raise WarehouseError(
                f"warehouse file {self.database} does not exist. Fix: set 'warehouse' in the sync "
                "config to an existing DuckDB file."
            )

    def error_message(self, exc: duckdb.Error) -> str:
        text = str(exc).strip()
        if isinstance(exc, duckdb.InterruptException) and self.statement_timeout_seconds:
            return (
                f"{text}: the model ran longer than statement_timeout_seconds="
                f"{self.statement_timeout_seconds:g}. Fix: make it faster or raise the limit."
            )
        if isinstance(exc, duckdb.IOException):  # a file, not the SQL (HTTP errors are IO too)
            return f"{text}. Fix: {IO_FIX}."
        return text


IO_FIX = (
    "DuckDB could not read a file (the warehouse, or one the model reads): check that it exists "
    f"and is readable and that its disk or server is healthy, {RUN_AGAIN}"
)


def _named_parameters(sql: str) -> set[str]:
    """Parameters the SQL uses: DuckDB refuses named parameters that the query does not use."""
    statements = duckdb.extract_statements(sql)
    return set(statements[0].named_parameters) if statements else set()


ATTACHED = "__rs_warehouse"
# Types that reach the state differently when the rows are copied through Arrow, and the cast
# that gives the same value, so a model read in place hashes and renders as a copied one did.
_COPIED_AS = {"UUID": "VARCHAR", "ENUM": "VARCHAR"}


class InPlaceUnsupported(WarehouseError):
    """A model column whose copy through Arrow no cast reproduces: copy the rows instead."""


@dataclass
class AttachedModel:
    """A model of an attached DuckDB warehouse, read from another connection (the state's)."""

    conn: duckdb.DuckDBPyConnection
    sql: str
    home: str  # the connection's own database, where unqualified names resolve otherwise
    warehouse: DuckDBWarehouse
    casts: dict[str, str] | None = None  # column -> type, for columns copied as another type

    @property
    def relation(self) -> str:
        """The model as a subquery; read it inside `reading()`."""
        if not self.casts:
            return f"({self.sql})"
        replaced = ", ".join(
            f"cast({_ident(c)} as {t}) as {_ident(c)}" for c, t in self.casts.items()
        )
        return f"(select * replace ({replaced}) from ({self.sql}))"

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Names in the model resolve in the warehouse (temp tables still first); a model that
        fails, or runs past `statement_timeout_seconds`, raises `WarehouseError`."""
        timeout = self.warehouse.statement_timeout_seconds
        timer = threading.Timer(timeout, self.conn.interrupt) if timeout else None
        self.conn.execute(f"use {ATTACHED}")
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            yield
        except duckdb.Error as exc:  # the model's own error, as `read_model` reports it
            raise WarehouseError(self.warehouse.error_message(exc)) from None
        finally:
            if timer is not None:
                timer.cancel()
            # In an aborted transaction this fails; `DuckDBWarehouse.attach` switches back after it.
            with suppress(duckdb.TransactionException):
                self.conn.execute(f"use {_ident(self.home)}")


_scratch_lock = threading.Lock()
_scratch: list[duckdb.DuckDBPyConnection] = []


def _scratch_connection() -> duckdb.DuckDBPyConnection:
    """A new connection to one empty in-memory database per process: opening a database costs
    about 20 ms, a connection to an open one nothing. Close it after use."""
    with _scratch_lock:
        if not _scratch:
            _scratch.append(duckdb.connect())
        return _scratch[0].cursor()


def _copy_casts(conn: duckdb.DuckDBPyConnection, sql: str) -> dict[str, str]:
    """Columns whose type a copy through Arrow changes, and the type the copy had.

    Raises `InPlaceUnsupported` for a change no plain cast reproduces (e.g. HUGEINT, TIME WITH
    TIME ZONE, nested UUIDs or ENUMs).
    """
    native = conn.sql(f"select * from ({sql}) limit 0")
    copied = _scratch_connection()  # the same round trip `SyncState.replace_table` makes
    try:
        copied.register("__rs_empty", native.to_arrow_table())
        relation = copied.sql("select * from __rs_empty")
        copied_types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    finally:
        copied.close()
    casts = {}
    for column, kind in zip(native.columns, map(str, native.types), strict=True):
        target = copied_types[column]
        if kind == target:
            continue
        base = re.match(r"[A-Z]+", kind)
        if base is None or _COPIED_AS.get(base.group()) != target:
            raise InPlaceUnsupported(f"column {column!r} is {kind}, copied as {target}")
        casts[column] = target
    return casts


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
