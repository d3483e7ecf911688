"""Snowflake's store (`store.StateStore`): a sync's state in `<database>.<state_schema>`.

Through snowflake-connector-python on the warehouse's own session (`SnowflakeWarehouse.connect`:
autocommit off, `qmark`, UTC, the statement timeout). Snowflake has transactions, but every DDL
statement commits the one that is open, so the store creates tables only before a transaction's
first write: its loaded tables (`ingest`) are transient tables of the sync
(`<sync>__in__rs_<name>`, replaced at each use) rather than temporary ones, because a temporary
table must live in the session's current schema, which is the models' one. The lock is a row
(`rowlock_store`); upserts are MERGE. Unquoted names fold to upper case in Snowflake: the state's
SQL names every column unquoted, and its tables quoted (`"rudder_sync"."<sync>__snapshot"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import pyarrow as pa

from ..jsonvalues import quote_ident
from ..warehouses.snowflake import _binding, _schema
from ..warehouses.vendor import batches_of, first_line
from .rowlock_store import LOCK_TABLE, RowLockStore, insert_values
from .sql import LOADED_INFIX

# Snowflake errors of a statement denied for missing privileges.
_DENIED = ("Insufficient privileges", "not authorized", "access control")


class Store(RowLockStore):
    """A sync's state tables in Snowflake, locked by a row."""

    dialect: ClassVar[str] = "snowflake"
    text_type: ClassVar[str] = "text"
    grantee: ClassVar[str] = "role"

    def _connect(self) -> Any:
        return self.warehouse.connect()

    def _errors(self) -> tuple[type[Exception], ...]:
        from snowflake.connector.errors import Error

        return (Error,)

    def _secrets(self) -> list[str | None]:
        return list(self.warehouse._secrets())  # noqa: SLF001 - the warehouse's own secrets

    def _message(self, exc: BaseException) -> str:
        return first_line(getattr(exc, "msg", None) or str(exc))

    def _bind(self, value: Any) -> Any:
        return _binding(value)

    def _fetch_table(self) -> pa.Table:
        described = list(self.cursor.description or [])
        chunks = list(self.cursor.fetch_arrow_batches())
        schema = _schema(described, chunks[0].schema if chunks else None)
        return pa.Table.from_batches(list(batches_of(chunks, schema)), schema)

    def _insert_rows(self, target: str, columns: Sequence[str], rows: list[tuple]) -> None:
        # Multi-row INSERTs with bound values (times as ISO text, which TIMESTAMP_TZ parses), at
        # most 16,384 rows each (Snowflake's limit for a VALUES list). Not executemany: above a
        # size its array binding uploads to a stage, which fakesnow does not serve.
        insert_values(self.cursor, target, columns, rows, _text_time, max_rows=16_384)

    def _ingest_target(self, name: str) -> tuple[str, str]:
        table = f"{self.tables.prefix}{LOADED_INFIX}{name.removeprefix('__rs_')}"
        return self.tables.qualified(table), "create transient table"

    def _create_schema(self) -> None:
        """CREATE SCHEMA makes the new schema the session's current one, where the models'
        unqualified names would then resolve: it runs on a connection of its own."""
        if self.tables.schema in self._schema_names():
            return
        conn = self._connect()
        try:
            conn.cursor().execute(f"create schema if not exists {quote_ident(self.tables.schema)}")
            conn.commit()
        finally:
            conn.close()

    def _take_row(self, key: str, now: datetime, expires: datetime) -> None:
        """One MERGE: insert this run's row, or take over the sync's expired one. Every value is
        bound in the source (fakesnow does not bind parameters inside MERGE's clauses)."""
        lock = self.lock_table
        self.execute(
            f"""
            merge into {lock} using (
                select cast($1 as text) as sync_key, cast($2 as text) as owner,
                       cast($3 as timestamp_tz) as acquired_at,
                       cast($4 as timestamp_tz) as expires_at
            ) s on {quote_ident(LOCK_TABLE)}.sync_key = s.sync_key
            when matched and {quote_ident(LOCK_TABLE)}.expires_at < s.acquired_at then update set
                owner = s.owner, acquired_at = s.acquired_at, expires_at = s.expires_at
            when not matched then insert (sync_key, owner, acquired_at, expires_at)
                values (s.sync_key, s.owner, s.acquired_at, s.expires_at)
            """,
            [key, self.owner, now, expires],
        )

    def _merge_source(self, select: str) -> str:
        return f"({select})"

    def denied(self, exc: BaseException) -> bool:
        return any(words in self._message(exc) for words in _DENIED)

    def grants(self) -> str:
        role, database = self.rows("select current_role(), current_database()")[0]
        self.conn.rollback()
        r, d = quote_ident(str(role)), quote_ident(str(database))
        s = f"{d}.{quote_ident(self.tables.schema)}"
        return (
            f"either let rudder_sync create the schema: GRANT USAGE ON DATABASE {d} TO ROLE {r}; "
            f"GRANT CREATE SCHEMA ON DATABASE {d} TO ROLE {r}; or create it for that role: "
            f"CREATE SCHEMA {s}; GRANT OWNERSHIP ON SCHEMA {s} TO ROLE {r}; or, in a schema "
            f"another role owns: GRANT USAGE ON DATABASE {d} TO ROLE {r}; GRANT USAGE, CREATE "
            f"TABLE ON SCHEMA {s} TO ROLE {r}; (and SELECT on the tables the models read)"
        )

    def is_timeout(self, exc: BaseException) -> bool:
        return "timeout" in self._message(exc).lower()


def _text_time(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
