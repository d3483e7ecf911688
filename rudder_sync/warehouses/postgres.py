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
import pyarrow.compute as pc
from pydantic import Field

from ..jsonvalues import quote_ident
from .arrow import exact_decimal, exact_number_json, opaque_storage
from .base import (
    CONNECTION_LOST_FIX,
    StreamGuard,
    WarehouseError,
    WarehouseResource,
    connection_lost,
    guarded,
)
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
        "changed rows leave the warehouse (docs/large-models.md).",
    )

    def describe(self) -> str:
        return describe_url(self.kind, self.url)

    def open_connection(self) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        try:
            return adbc.connect(self.url)
        except adbc.Error as exc:
            raise self._error("cannot connect to", exc) from None

    def disconnect(self, conn: Any) -> None:
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
        def checked() -> Iterator[pa.RecordBatch]:
            rows = 0
            for batch in reader:
                normalised = _normalise(batch, schema)
                self._check_text(normalised, rows)
                rows += normalised.num_rows
                yield normalised

        return guarded(checked(), (errors, OSError), self._lost)

    def _check_text(self, batch: pa.RecordBatch, rows_before: int) -> None:
        """Fail on text that is not UTF-8, naming the column and the row.

        PostgreSQL hands over a SQL_ASCII database's bytes (or `convert_from(..., 'SQL_ASCII')`)
        unchecked, and ADBC puts them in Arrow strings as they are; DuckDB would refuse them later
        with "Invalid unicode ... in segment statistics update", naming neither.
        """
        for field, column in zip(batch.schema, batch.columns, strict=True):
            if not _has_text(field.type):
                continue
            try:
                column.validate(full=True)
            except pa.ArrowInvalid as exc:
                if "UTF8" not in str(exc):
                    raise
                where = f"column {field.name!r}"
                found = _first_invalid_text(column)
                if found is not None:
                    where += (
                        f", row {rows_before + found[0] + 1} of the result (counting from 1, in "
                        f"the order the server sent it){found[1]}"
                    )
                raise self.failure(
                    "the model returned text that is not valid UTF-8 from",
                    where,
                    _NOT_UTF8_FIX.format(column=quote_ident(field.name)),
                    [self.url, url_password(self.url)],
                ) from None

    def _lost(self, exc: BaseException) -> WarehouseError:
        """An error while streaming: ADBC raises the server's error (a dropped connection, or
        the model's own, e.g. a division by zero at row 1M) as an OSError."""
        return self._error("the model failed on", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = _driver_message(exc)
        fix = "correct the model; it runs read-only in the warehouse's own SQL"
        if what == "cannot connect to":
            fix = next((f for key, f in _CONNECT_FIXES if key in message), "check the url")
        elif connection_lost(exc):
            what, fix = "lost the connection to", CONNECTION_LOST_FIX
        elif "statement timeout" in message:
            fix = self.timeout_fix()
        elif "read-only transaction" in message:
            fix = "models run in a read-only transaction; remove the statement that writes"
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


_NOT_UTF8_FIX = (
    "the database holds bytes that are not UTF-8 as text (a SQL_ASCII database, or "
    "convert_from(..., 'SQL_ASCII')); correct the value, or convert the column in the model, e.g. "
    "for Latin-1 bytes convert_from(convert(convert_to({column}, 'SQL_ASCII'), 'LATIN1', 'UTF8'), "
    "'UTF8') as {column}"
)


def _has_text(kind: pa.DataType) -> bool:
    """Whether values of this type hold strings (which Arrow does not check are UTF-8)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if isinstance(kind, pa.ExtensionType):
        return _has_text(kind.storage_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _has_text(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_text(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _first_invalid_text(column: pa.Array) -> tuple[int, str] | None:
    """The first row whose value holds text that is not UTF-8, and where in a plain string the
    bad byte is (never the value itself: it may be personal). The error path only: Python."""
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        for row, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
            try:
                if raw is not None:
                    raw.decode()
            except UnicodeDecodeError as exc:
                return row, f": byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the value"
        return None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        found = _first_invalid_text(column.flatten())  # the values of this slice's lists only
        if found is None:
            return None
        ends = pc.subtract(column.offsets[1:], column.offsets[0])  # end of each row's values
        return int(pc.sum(pc.less_equal(ends, found[0])).as_py() or 0), ""
    if pa.types.is_struct(kind):
        rows = [_first_invalid_text(field) for field in column.flatten()]
        return min((found[0], "") for found in rows if found is not None) if any(rows) else None
    return None


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
