"""Redshift's store (`store.StateStore`): a sync's state in `<state_schema>` of the database.

Through redshift_connector (autocommit off: the driver opens each transaction; `?` parameters).
Redshift has transactions (DDL included) and serializable isolation, no advisory locks and no
enforced primary keys: the lock is a row (`rowlock_store`), upserts are MERGE from a temporary
table (Redshift's MERGE reads a table, not a subquery), loaded tables are temporary tables, and
text columns are `VARCHAR(65535)` (Redshift's `TEXT` is `VARCHAR(256)`; 65535 bytes is its
largest, so a row's properties must fit in 64 KB of JSON). Every statement is also valid
PostgreSQL, which is what the tests run it on (docs/warehouses.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa

from ..jsonvalues import quote_ident
from ..warehouses.redshift import _driver_message, arrow_schema, record_batch
from ..warehouses.vendor import utc_datetime
from .rowlock_store import RowLockStore, insert_values

_MERGE_SOURCE = "__rs_merge_source"


class Store(RowLockStore):
    """A sync's state tables in Redshift, locked by a row."""

    dialect: ClassVar[str] = "redshift"
    text_type: ClassVar[str] = "varchar(65535)"

    def _connect(self) -> Any:
        return self.warehouse.connect()

    def _cursor(self, conn: Any) -> Any:
        cursor = conn.cursor()
        cursor.paramstyle = "qmark"  # not format: the driver does not undo `%%` in literals
        return cursor

    def _errors(self) -> tuple[type[Exception], ...]:
        import redshift_connector

        return (redshift_connector.Error,)

    def _secrets(self) -> list[str | None]:
        return [self.warehouse.password]

    def _message(self, exc: BaseException) -> str:
        return _driver_message(exc)  # type: ignore[arg-type]

    def _bind(self, value: Any) -> Any:
        return utc_datetime(value)

    def _fetch_table(self) -> pa.Table:
        schema = arrow_schema(self.cursor.description or [])
        rows = self.cursor.fetchall() or ()
        return pa.Table.from_batches([record_batch(rows, schema)], schema)

    def _insert_rows(self, target: str, columns: Sequence[str], rows: list[tuple]) -> None:
        insert_values(self.cursor, target, columns, rows, self._bind)

    def _ingest_target(self, name: str) -> tuple[str, str]:
        return quote_ident(name), "create temp table"

    def _merge_source(self, select: str) -> str:
        self.execute(f"drop table if exists {_MERGE_SOURCE}")
        self.execute(f"create temp table {_MERGE_SOURCE} as {select}")
        return _MERGE_SOURCE

    def denied(self, exc: BaseException) -> bool:
        return "permission denied" in self._message(exc)

    def grants(self) -> str:
        user, database = self.rows("select current_user, current_database()")[0]
        self.conn.rollback()
        s, u, d = quote_ident(self.tables.schema), quote_ident(str(user)), quote_ident(database)
        return (
            f"either let rudder_sync create the schema: GRANT CREATE ON DATABASE {d} TO {u}; "
            f"or create it for that user: CREATE SCHEMA {s} AUTHORIZATION {u}; or, in a schema "
            f"another user owns: GRANT USAGE, CREATE ON SCHEMA {s} TO {u}; (and GRANT TEMP ON "
            f"DATABASE {d} TO {u} if PUBLIC lost it, and SELECT on the tables the models read)"
        )

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        if not statement_timeout_seconds:
            return []
        return [f"set statement_timeout to {max(1, round(statement_timeout_seconds * 1000))}"]

    def is_timeout(self, exc: BaseException) -> bool:
        return "statement timeout" in self._message(exc)

    def analyze(self, table: str) -> None:
        self.execute(f"analyze {table}")
