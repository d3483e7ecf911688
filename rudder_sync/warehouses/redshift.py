"""Amazon Redshift through `redshift_connector`: a server-side cursor, fetched in chunks.

`redshift_connector` has no Arrow fetch and reads a whole result into memory on `execute`, so a
model runs as `DECLARE ... CURSOR` inside a `BEGIN READ ONLY` transaction (a model that writes
fails) and its rows come `FETCH FORWARD` BATCH_ROWS at a time, each chunk built into an Arrow
batch typed by the column's Redshift type. `statement_timeout` is set when configured.
Parameters are bound by the driver (`?`, sent as `$n` binds), never pasted into the SQL.
`NUMERIC` becomes JSON numbers with their exact digits (as for PostgreSQL), `SUPER` becomes
DuckDB `JSON`, `TIMESTAMPTZ` a UTC timestamp; `GEOMETRY`, `TIMETZ`, `INTERVAL` and other types
without an Arrow counterpart their text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from .base import BATCH_ROWS, WarehouseError, WarehouseResource, guarded, stream
from .sql import bind, statement_body
from .vendor import (
    JSON,
    batches_of,
    close_quietly,
    first_line,
    timestamp,
    utc_datetime,
)

# Redshift (PostgreSQL) type OID -> Arrow type; others arrive as text.
OID_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    25: pa.string(),
    1043: pa.string(),
    1042: pa.string(),
    18: pa.string(),
    19: pa.string(),
    1082: pa.date32(),
    1083: pa.time64("us"),
    1114: timestamp(tz=False),
    1184: timestamp(tz=True),
    17: pa.binary(),
    6551: pa.binary(),  # VARBYTE
    1700: JSON,  # NUMERIC: exact digits
    4000: JSON,  # SUPER
    114: JSON,
    3802: JSON,
}
_NUMERIC = 1700
_CURSOR = "__rudder_sync_model"
_FIXES = (
    ("password authentication failed", "check 'user' and 'password'"),
    ("does not exist", "check 'database' and the table names; the user needs USAGE on the "
     "schema and SELECT on the tables (docs/warehouses.md)"),
    ("permission denied", "grant the user USAGE on the schema and SELECT on the tables"),
    ("getaddrinfo failed", "check 'host'"),
    ("Name or service not known", "check 'host'"),
    ("Connection refused", "check 'host' and 'port', and that the cluster accepts connections"),
    ("timed out", "check 'host' and 'port', and that this machine may connect to the cluster"),
    ("read-only transaction", "models run in a read-only transaction; remove the statement "
     "that writes"),
)  # fmt: skip


class RedshiftWarehouse(WarehouseResource):
    """A Redshift database. Pass `password` with `EnvVar`."""

    kind: ClassVar[str] = "redshift"
    dialect: ClassVar[str] = "redshift"

    host: str = Field(description="Cluster or workgroup endpoint host.")
    port: int = Field(default=5439, description="Port.")
    database: str = Field(description="Database of the models.")
    user: str = Field(description="User to log in as (give it read-only grants).")
    password: str = Field(repr=False, description="Password (secret: set it with EnvVar).")
    ssl: bool = Field(default=True, description="TLS; false only for a stand-in on loopback.")
    connect_args: dict[str, Any] = Field(
        default={},
        description="More keyword arguments for redshift_connector.connect (e.g. ssl, "
        "sslmode, timeout).",
    )
    state_schema: str | None = Field(
        default=None,
        description="Keep each sync's state in this schema and diff there: only changed rows "
        "leave the warehouse (docs/large-models.md).",
    )

    def describe(self) -> str:
        return f"redshift {self.host}:{self.port}/{self.database}"

    @contextmanager
    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        """Run `sql` through a cursor in a read-only transaction; stream its rows in chunks."""
        query, args = bind(sql, params, "qmark")
        body = statement_body(query)
        with self.connection() as conn, self._read_model_on(conn, body, args) as reader:
            yield reader

    def open_connection(self) -> Any:
        try:
            conn = self.connect()
        except Exception as exc:  # noqa: BLE001 - interface, operational and socket errors
            raise self._error("cannot connect to", exc) from None
        conn.autocommit = True  # the transaction is each read's: BEGIN READ ONLY ... ROLLBACK
        return conn

    @contextmanager
    def _read_model_on(
        self, conn: Any, body: str, args: list[Any]
    ) -> Iterator[pa.RecordBatchReader]:
        """A model's rows through a server-side cursor in a read-only transaction, in chunks."""
        import redshift_connector

        cursor = conn.cursor()
        # qmark, not format: the driver does not undo `%%` inside string literals
        cursor.paramstyle = "qmark"
        try:
            try:
                cursor.execute("begin read only")
                if self.statement_timeout_seconds:
                    milliseconds = max(1, round(self.statement_timeout_seconds * 1000))
                    cursor.execute(f"set statement_timeout to {milliseconds}")
                cursor.execute(
                    f"declare {_CURSOR} no scroll cursor for {body}",
                    [utc_datetime(v) for v in args] or None,
                )
                rows = _fetch(cursor)
                schema = arrow_schema(cursor.description or [])
            except redshift_connector.Error as exc:
                raise self._error("the model failed on", exc) from None
            chunks = self._chunks(cursor, rows, schema)
            yield stream(schema, self._batches(chunks, schema, redshift_connector.Error))
        finally:
            close_quietly(lambda: cursor.execute("rollback"), cursor.close)

    def connect(self) -> Any:
        """A redshift_connector connection (autocommit off: the driver opens transactions)."""
        import redshift_connector

        return redshift_connector.connect(
            host=self.host,
            port=self.port,
            database=self.database,
            user=self.user,
            password=self.password,
            ssl=self.ssl,
            **self.connect_args,
        )

    @contextmanager
    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """Stream `sql`'s rows on an open connection, inside its transaction (the in-warehouse
        state reads its own tables and the model's probe this way); the transaction ends with
        the read: committed, or rolled back after an error or when ``read_only``."""
        import redshift_connector

        query, args = bind(statement_body(sql), params, "qmark")
        cursor = conn.cursor()
        cursor.paramstyle = "qmark"
        finished = False
        try:
            try:
                cursor.execute(query, [utc_datetime(v) for v in args] or None)
                schema = arrow_schema(cursor.description or [])
                rows = cursor.fetchmany(BATCH_ROWS) if cursor.description else []
            except redshift_connector.Error as exc:
                raise self._error("the model failed on", exc) from None

            def chunks(rows: Sequence[Sequence[Any]]) -> Iterator[pa.RecordBatch]:
                while rows:
                    yield record_batch(rows, schema)
                    rows = cursor.fetchmany(BATCH_ROWS)

            yield stream(schema, self._batches(chunks(rows), schema, redshift_connector.Error))
            finished = True
        finally:
            ending = conn.commit if finished and not read_only else conn.rollback
            close_quietly(cursor.close, ending)

    def _chunks(
        self, cursor: Any, rows: Sequence[Sequence[Any]], schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        while rows:
            yield record_batch(rows, schema)
            if len(rows) < BATCH_ROWS:
                return
            rows = _fetch(cursor)

    def _batches(
        self, chunks: Iterator[pa.RecordBatch], schema: pa.Schema, errors: type[Exception]
    ) -> Iterator[pa.RecordBatch]:
        return guarded(batches_of(chunks, schema), (errors, OSError), self._lost)

    def _lost(self, exc: BaseException) -> WarehouseError:
        return self._error("lost the result stream from", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = _driver_message(exc)
        fix = "correct the model; it runs read-only in Redshift's SQL"
        if what == "cannot connect to":
            fix = "check 'host', 'port', 'database', 'user' and 'password'"
        fix = next((f for words, f in _FIXES if words in message), fix)
        if "statement timeout" in message and self.statement_timeout_seconds:
            fix = self.timeout_fix()
        elif what == "lost the result stream from":
            fix = "the connection dropped mid-stream; nothing was committed, run the sync again"
        return self.failure(what, message, fix, [self.password])


def _fetch(cursor: Any) -> Sequence[Sequence[Any]]:
    cursor.execute(f"fetch forward {BATCH_ROWS} from {_CURSOR}")
    return cursor.fetchall() or ()


def arrow_schema(description: Sequence[Sequence[Any]]) -> pa.Schema:
    """The rows' Arrow schema from the cursor description's type OIDs."""
    return pa.schema(
        [pa.field(str(column[0]), OID_TYPES.get(column[1], pa.string())) for column in description]
    )


def record_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """A chunk of the driver's rows (Python values) as an Arrow batch of `schema`."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        if field.type == JSON:
            storage = pa.array([_json_text(v) for v in values], pa.string())
            arrays.append(pa.ExtensionArray.from_storage(JSON, storage))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _json_text(value: Any) -> str | None:
    """NUMERIC's exact digits (non-finite: null) or SUPER/JSON text."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else None
    if isinstance(value, bytes | bytearray):
        return value.decode()
    if isinstance(value, dict | list):  # the driver parsed JSON text: write it back as JSON
        return json.dumps(value, default=str)
    if isinstance(value, int | float):
        return repr(value) if value == value and abs(value) != float("inf") else None
    return str(value)


def _driver_message(exc: Exception) -> str:
    """The server's words: redshift_connector's errors carry a dict of the server's fields."""
    arg = exc.args[0] if exc.args else str(exc)
    if isinstance(arg, dict):
        arg = arg.get("M") or arg.get("message") or str(arg)
    return first_line(str(arg))
