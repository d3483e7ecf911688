"""Read-only access to the warehouse that the models query.

Everything above this module sees a warehouse only through `Warehouse.read_model`, which streams a
model's rows as Arrow record batches. DuckDB is the embedded default; another warehouse (PostgreSQL
next) is one more class implementing the same method.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from pydantic import Field

BATCH_ROWS = 100_000


class WarehouseError(RuntimeError):
    """The warehouse could not be opened or the model could not run."""


class Warehouse(Protocol):
    """What the sync needs from a warehouse: run a model, stream its rows."""

    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Any:  # a context manager yielding a pyarrow.RecordBatchReader
        ...


class DuckDBWarehouse(DuckDBResource):
    """A DuckDB file opened read-only, so syncs never lock writers out or change the data."""

    connection_config: dict[str, Any] = Field(
        default={"access_mode": "READ_ONLY"},
        description="DuckDB settings; access_mode is always READ_ONLY.",
    )

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
        try:
            try:
                conn.execute("set enable_progress_bar = false")
                used = _named_parameters(sql)
                bound = {k: v for k, v in (params or {}).items() if k in used}
                relation = conn.sql(sql, params=bound) if bound else conn.sql(sql)
                reader = relation.to_arrow_reader(BATCH_ROWS)
            except duckdb.Error as exc:
                raise WarehouseError(str(exc).strip()) from exc
            yield reader
        finally:
            # The reader holds the query result, and with it the database: closed here, not when
            # a traceback that references it is garbage-collected, so writers are not locked out.
            if reader is not None:
                reader.close()
            conn.close()


def _named_parameters(sql: str) -> set[str]:
    """Parameters the SQL uses: DuckDB refuses named parameters that the query does not use."""
    statements = duckdb.extract_statements(sql)
    return set(statements[0].named_parameters) if statements else set()
