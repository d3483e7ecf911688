"""Databricks SQL through `databricks-sql-connector`: Arrow tables, fetched in chunks.

Parameters are native named parameters (`:name`, bound by the server; partition bounds as
TIMESTAMP). A statement timeout is the `STATEMENT_TIMEOUT` session configuration (seconds).
Databricks has no read-only session: give the principal only `USE CATALOG`, `USE SCHEMA` and
`SELECT` (docs/warehouses.md). Rows come `fetchmany_arrow(BATCH_ROWS)` at a time with Arrow's
native decimals, timestamps and complex types (STRUCT, ARRAY, MAP); `TIMESTAMP` becomes UTC,
`TIMESTAMP_NTZ` stays without zone, `VARIANT` (sent as JSON text) becomes DuckDB `JSON`, decimals
up to 38 digits stay decimals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from .base import BATCH_ROWS, WarehouseError, WarehouseResource, guarded, stream
from .sql import bind
from .vendor import JSON, batches_of, close_quietly, first_line, plain_type, utc_datetime

_JSON_TYPES = {"variant", "json"}
_FIXES = (
    ("Invalid access token", "check 'access_token' (a personal access token or service "
     "principal token)"),
    ("403", "check 'access_token' and that the principal may use the SQL warehouse"),
    ("401", "check 'access_token'"),
    ("404", "check 'http_path' (SQL warehouse > Connection details)"),
    ("TABLE_OR_VIEW_NOT_FOUND", "check the table names, 'catalog' and 'schema'; the principal "
     "needs USE CATALOG, USE SCHEMA and SELECT (docs/warehouses.md)"),
    ("INSUFFICIENT_PERMISSIONS", "grant the principal USE CATALOG, USE SCHEMA and SELECT"),
    ("Name or service not known", "check 'server_hostname'"),
    ("Failed to resolve", "check 'server_hostname'"),
)  # fmt: skip


class DatabricksWarehouse(WarehouseResource):
    """A Databricks SQL warehouse. Pass `access_token` with `EnvVar`."""

    kind: ClassVar[str] = "databricks"
    dialect: ClassVar[str] = "databricks"

    server_hostname: str = Field(description="Workspace host, e.g. dbc-1.cloud.databricks.com.")
    http_path: str = Field(description="HTTP path of the SQL warehouse.")
    access_token: str = Field(repr=False, description="Access token (secret: set it with EnvVar).")
    catalog: str | None = Field(default=None, description="Default catalog of the models.")
    schema_name: str | None = Field(default=None, description="Default schema of the models.")
    connect_args: dict[str, Any] = Field(
        default={}, description="More keyword arguments for databricks.sql.connect."
    )

    def describe(self) -> str:
        text = f"databricks {self.server_hostname}{self.http_path}"
        if self.catalog:
            text += f" catalog {self.catalog}" + (
                f".{self.schema_name}" if self.schema_name else ""
            )
        return text

    state_schema: str | None = Field(
        default=None,
        description="Keep each sync's state in this schema of `catalog` and diff there: only "
        "changed rows leave the warehouse (docs/large-models.md).",
    )

    def connect(self) -> Any:
        """A connection with this engine's session: the catalog and schema, UTC, the statement
        timeout (the in-warehouse state's connection too)."""
        from databricks import sql as dbsql

        session: dict[str, Any] = {"TIMEZONE": "UTC"}
        if self.statement_timeout_seconds:
            session["STATEMENT_TIMEOUT"] = str(max(1, round(self.statement_timeout_seconds)))
        kwargs = {
            "server_hostname": self.server_hostname,
            "http_path": self.http_path,
            "access_token": self.access_token,
            "catalog": self.catalog,
            "schema": self.schema_name,
            "session_configuration": session,
            "user_agent_entry": "rudder_sync",
            **self.connect_args,
        }
        return dbsql.connect(**{k: v for k, v in kwargs.items() if v is not None})

    def open_connection(self) -> Any:
        try:
            return self.connect()
        except Exception as exc:  # noqa: BLE001 - request, auth and socket errors
            raise self._error("cannot connect to", exc) from None

    @contextmanager
    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """Stream `sql`'s rows on an open connection (the in-warehouse state reads the model's
        probe and the changed rows on its own). Databricks has no read-only statement mode:
        ``read_only`` is the caller's promise."""
        query, values = bind(sql, params, "colon")
        cursor = conn.cursor()
        try:
            try:
                cursor.execute(query, parameters=_parameters(dict(values)))
                first = cursor.fetchmany_arrow(BATCH_ROWS)
                schema = normalised_schema(first.schema, cursor.description or [])
            except Exception as exc:  # noqa: BLE001 - the connector's errors have no common base
                raise self._error("the model failed on", exc) from None
            yield stream(schema, self._batches(cursor, first, schema))
        finally:
            close_quietly(cursor.close)

    def _batches(self, cursor: Any, first: pa.Table, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        # Any exception: the connector raises its own, thrift's and urllib3's while fetching.
        return guarded(batches_of(_chunks(cursor, first), schema), (Exception,), self._lost)

    def _lost(self, exc: BaseException) -> WarehouseError:
        return self._error("lost the result stream from", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = first_line(str(exc))
        fix = "correct the model; it runs in Databricks SQL"
        if what == "cannot connect to":
            fix = "check 'server_hostname', 'http_path' and 'access_token'"
        fix = next((f for words, f in _FIXES if words in message), fix)
        if ("TIMEOUT" in message.upper() or "timed out" in message) and (
            self.statement_timeout_seconds
        ):
            fix = self.timeout_fix()
        elif what == "lost the result stream from":
            fix = "the result stream broke off; run the sync again"
        return self.failure(what, message, fix, [self.access_token])


def _chunks(cursor: Any, first: pa.Table) -> Iterator[pa.Table]:
    table = first
    while table.num_rows:
        yield table
        table = cursor.fetchmany_arrow(BATCH_ROWS)


def _parameters(values: dict[str, Any]) -> dict[str, Any] | None:
    """Native named parameters; zone-aware datetimes as TIMESTAMP in UTC."""
    return {name: utc_datetime(value) for name, value in values.items()} or None


def normalised_schema(actual: pa.Schema, description: list[Any]) -> pa.Schema:
    """The connector's Arrow schema made DuckDB-friendly; VARIANT (JSON text) -> JSON."""
    fields = []
    for index, field in enumerate(actual):
        kind = str(description[index][1]).lower() if index < len(description) else ""
        if kind in _JSON_TYPES and pa.types.is_string(field.type):
            fields.append(field.with_type(JSON))
        else:
            fields.append(field.with_type(plain_type(field.type)))
    return pa.schema(fields)
