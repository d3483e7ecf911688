"""The embedded default: a DuckDB file, opened read-only so syncs never lock writers out."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
from pydantic import Field

from .base import BATCH_ROWS, WarehouseError, WarehouseResource


class DuckDBWarehouse(WarehouseResource):
    """A DuckDB database file, opened read-only for each model."""

    kind: ClassVar[str] = "duckdb"
    dialect: ClassVar[str] = "duckdb"

    database: str = Field(description="Path of the DuckDB file (or ':memory:').")
    connection_config: dict[str, Any] = Field(
        default={}, description="DuckDB settings; access_mode is always READ_ONLY."
    )

    def describe(self) -> str:
        return f"duckdb {self.database}"

    @contextmanager
    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        """Run `sql` and stream its result in Arrow batches of BATCH_ROWS rows."""
        if self.database != ":memory:" and not Path(self.database).exists():
            raise WarehouseError(
                f"warehouse file {self.database} does not exist. Fix: set 'warehouse' in the sync "
                "config to an existing DuckDB file."
            )
        config = {**self.connection_config, "access_mode": "READ_ONLY"}
        try:
            conn = duckdb.connect(self.database, read_only=True, config=config)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open warehouse {self.database}: {exc}") from exc
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
                raise WarehouseError(self._message(exc)) from exc
            yield reader
        finally:
            if timer is not None:
                timer.cancel()
            # The reader holds the query result, and with it the database: closed here, not when
            # a traceback that references it is garbage-collected, so writers are not locked out.
            if reader is not None:
                reader.close()
            conn.close()

    def _message(self, exc: duckdb.Error) -> str:
        text = str(exc).strip()
        if isinstance(exc, duckdb.InterruptException) and self.statement_timeout_seconds:
            return (
                f"{text}: the model ran longer than statement_timeout_seconds="
                f"{self.statement_timeout_seconds:g}. Fix: make it faster or raise the limit."
            )
        return text


def _named_parameters(sql: str) -> set[str]:
    """Parameters the SQL uses: DuckDB refuses named parameters that the query does not use."""
    statements = duckdb.extract_statements(sql)
    return set(statements[0].named_parameters) if statements else set()
