"""PostgreSQL through ADBC (`adbc-driver-postgresql`): COPY in binary, straight into Arrow.

Each model runs in its own read-only transaction (`SET TRANSACTION READ ONLY`, and
`statement_timeout` when set), so a model that writes fails and a slow one is cancelled. Columns
whose type ADBC would hand over as opaque wire bytes (enums, inet, timetz, xml, geometric types,
ranges, ...) are cast to text by the server; `money` to numeric; `numeric(p,s)` becomes DuckDB's
DECIMAL(p,s) and unconstrained `numeric` JSON numbers (docs/json-values.md#postgresql).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
from pydantic import Field

from ..jsonvalues import quote_ident
from .arrow import exact_decimal, exact_number_json, opaque_storage
from .base import StreamGuard, WarehouseError, WarehouseResource, guarded
from .sql import bind, statement_body

# Types whose Arrow form (after exact_number_json for numeric) DuckDB and the JSON rules take as is.
_NATIVE = {
    "bool", "int2", "int4", "int8", "float4", "float8", "text", "varchar", "bpchar", "name",
    "char", "date", "time", "timestamp", "timestamptz", "interval", "json", "jsonb", "uuid",
    "bytea", "numeric", "oid",
}  # fmt: skip
_TYPE_KEY = b"POSTGRESQL:type"
_NUMERIC = "numeric"
_CONNECT_FIXES = (
    ("password authentication failed", "check the user and password in the warehouse url"),
    ("no password supplied", "put the password in the warehouse url (through {env: ...})"),
    ("does not exist", "check the database (and user) name in the warehouse url"),
    ("could not translate host name", "check the host name in the warehouse url"),
    ("Connection refused", "check the host and port, and that the server is running"),
    ("timeout expired", "check the host and port, and that this machine may connect to it"),
    ("SSL", "check sslmode in the warehouse url and the server's TLS settings"),
)


class PostgresWarehouse(WarehouseResource):
    """A PostgreSQL database, read through ADBC. `url` is a libpq URI; pass it with `EnvVar`."""

    kind: ClassVar[str] = "postgres"
    dialect: ClassVar[str] = "postgres"

    url: str = Field(
        repr=False,
        description="libpq URI, postgresql://user:password@host:port/database?sslmode=... "
        "(secret when it holds a password: set it with EnvVar).",
    )
    state_schema: str | None = Field(
        default=None,
        description="Keep each unpartitioned sync's state in this schema and diff there: only "
        "changed rows leave the warehouse (README: 'Large models: diff in the warehouse').",
    )

    def describe(self) -> str:
        return describe_url(self.kind, self.url)

    @contextmanager
    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        """Run `sql` in a read-only transaction and stream its rows, normalised."""
        import adbc_driver_postgresql.dbapi as adbc

        try:
            conn = adbc.connect(self.url)
        except adbc.Error as exc:
            raise self._error("cannot connect to", exc) from None
        try:
            with self.read_on(conn, sql, params, read_only=True) as reader:
                yield reader
        finally:
            _quietly(conn.rollback, conn.close)

    @contextmanager
    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """Stream `sql`'s rows, normalised, on an open ADBC connection, in a transaction that ends
        with the read (committed; rolled back after an error). In-warehouse state reads its
        own tables on its connection this way: one connection less per step."""
        import adbc_driver_postgresql.dbapi as adbc

        # COPY (...) wraps the query: a trailing `;` or comment would end up inside
        query, args = bind(statement_body(sql), params, "numeric")
        bound = args or None
        cursor = conn.cursor()
        finished = False
        try:
            try:
                if read_only:
                    cursor.execute("set transaction read only")
                if self.statement_timeout_seconds:
                    milliseconds = max(1, round(self.statement_timeout_seconds * 1000))
                    cursor.execute(f"set local statement_timeout = {milliseconds}")
                probe = cursor.adbc_execute_schema(query, bound)
                cursor.execute(_typed_query(query, probe), bound)
                reader = cursor.fetch_record_batch()
            except adbc.Error as exc:
                raise self._error("the model failed on", exc) from None
            schema = _normalised_schema(reader.schema)
            guard = StreamGuard()
            try:
                yield guard.reader(schema, self._batches(reader, schema, adbc.Error))
                finished = True
            except Exception as exc:
                guard.reraise(exc)
                raise
            finally:
                guard.close()
        finally:
            _quietly(cursor.close, conn.commit if finished else conn.rollback)

    def _batches(
        self, reader: pa.RecordBatchReader, schema: pa.Schema, errors: type[Exception]
    ) -> Iterator[pa.RecordBatch]:
        normalised = (_normalise(batch, schema) for batch in reader)
        return guarded(normalised, (errors, OSError), self._lost)

    def _lost(self, exc: BaseException) -> WarehouseError:
        return self._error("lost the result stream from", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = _driver_message(exc)
        fix = "correct the model; it runs read-only in the warehouse's own SQL"
        if what == "cannot connect to":
            fix = next((f for key, f in _CONNECT_FIXES if key in message), "check the url")
        elif "statement timeout" in message:
            what = "the model failed on"
            fix = self.timeout_fix()
        elif "read-only transaction" in message:
            fix = "models run in a read-only transaction; remove the statement that writes"
        elif what == "lost the result stream from":
            fix = "the connection dropped mid-stream; nothing was committed, run the sync again"
        return self.failure(what, message, fix, [self.url, url_password(self.url)])


def describe_url(kind: str, url: str) -> str:
    """`postgres host:port/database` from a libpq URI, without user or password."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or 5432
        database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or ["(default)"])[0]
    except ValueError:
        return f"{kind} (unparsable url)"
    return f"{kind} {host}:{port}/{database}"


def url_password(url: str) -> str | None:
    """The password a libpq URI carries, in its userinfo or as ?password=."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return unquote(parts.password)
    return (parse_qs(parts.query).get("password") or [None])[0]


def _typed_query(query: str, schema: pa.Schema) -> str:
    """The model, wrapped to cast columns that ADBC would return as opaque bytes."""
    columns, changed = [], False
    for field in schema:
        cast = _cast(field.name, (field.metadata or {}).get(_TYPE_KEY, b"").decode())
        changed = changed or cast != quote_ident(field.name)
        columns.append(cast)
    if not changed:
        return query
    return f"select {', '.join(columns)} from (\n{query}\n) as __rs_model"


def _cast(name: str, pg_type: str) -> str:
    column = quote_ident(name)
    if pg_type in _NATIVE or not pg_type:
        return column
    if pg_type == "money":
        return f"{column}::numeric as {column}"
    if pg_type.startswith("_") and pg_type[1:] in _NATIVE - {_NUMERIC}:
        return column
    if pg_type in ("_numeric", "_money"):
        return f"to_jsonb({column}) as {column}"
    if pg_type.startswith("_"):
        return f"{column}::text[] as {column}"
    return f"{column}::text as {column}"


def _is_numeric(field: pa.Field) -> bool:
    return (field.metadata or {}).get(_TYPE_KEY) == _NUMERIC.encode()


def _numeric_type(field: pa.Field) -> pa.DataType:
    """numeric(p,s) with p <= 38: DuckDB's DECIMAL(p,s); wider or unconstrained: JSON numbers."""
    typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
    if typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        if precision <= 38:
            return pa.decimal128(precision, scale)
    return pa.json_()


def _normalised_schema(schema: pa.Schema) -> pa.Schema:
    fields = []
    for field in schema:
        if _is_numeric(field):
            field = field.with_type(_numeric_type(field))
        elif isinstance(field.type, pa.ExtensionType) and field.type.extension_name not in (
            "arrow.json",
            "arrow.uuid",
        ):
            field = field.with_type(field.type.storage_type)
        fields.append(field)
    return pa.schema(fields, metadata=schema.metadata)


def _normalise(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for field, target, column in zip(batch.schema, schema, batch.columns, strict=True):
        if isinstance(target.type, pa.Decimal128Type):
            column = exact_decimal(opaque_storage(column), target.type.precision, target.type.scale)
        elif _is_numeric(field):
            column = exact_number_json(opaque_storage(column))
        elif isinstance(field.type, pa.ExtensionType) and field.type.extension_name not in (
            "arrow.json",
            "arrow.uuid",
        ):
            column = opaque_storage(column)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _driver_message(exc: Exception) -> str:
    """The server's words, without ADBC's prefixes, the echoed query or trailing noise."""
    text = str(exc).split("\n\nQuery was:")[0]
    for prefix in ("[libpq] ", "Failed to connect: "):
        text = text.replace(prefix, "")
    text = text.split("] ", 1)[-1] if text.startswith("[") else text
    for code in ("IO: ", "INVALID_STATE: ", "INVALID_ARGUMENT: ", "NOT_FOUND: ", "CANCELLED: "):
        text = text.removeprefix(code)
    return " ".join(text.split()).rstrip(". ")


def _quietly(*steps: Any) -> None:
    """Close, commit or roll back quietly: after a dropped connection these raise too, and the
    first error counts."""
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001, S112 - the original error is already on its way
            continue
