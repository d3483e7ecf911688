"""Snowflake through `snowflake-connector-python`: Arrow result chunks, streamed.

Each model runs on its own connection with `autocommit` off (rolled back at the end), parameters
bound by the server (`qmark` style: values never enter the SQL text), exact decimals
(`arrow_number_to_decimal`), the session in UTC and, when set, the `STATEMENT_TIMEOUT_IN_SECONDS`
session parameter. Snowflake has no read-only session: give the user a role that can only read
(docs/warehouses.md). Columns take the Arrow type their Snowflake type calls for, whatever each
result chunk held: `VARIANT`/`OBJECT`/`ARRAY`/`MAP` arrive as JSON text and become DuckDB `JSON`,
`TIMESTAMP_TZ`/`TIMESTAMP_LTZ` become UTC timestamps, `NUMBER(p,s)` decimals.

Users of `dagster-snowflake` hand over their `SnowflakeResource` with
`SnowflakeWarehouse.from_dagster(resource)`: its connection settings (and their `EnvVar`s) are
used as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from typing import Any, ClassVar

import dagster as dg
import pyarrow as pa
from pydantic import Field

from .base import WarehouseError, WarehouseResource, guarded, stream
from .sql import bind
from .vendor import (
    JSON,
    batches_of,
    close_quietly,
    first_line,
    plain_type,
    timestamp,
    utc_datetime,
    whole_seconds,
)

# Snowflake type (cursor.description's type_code, named by the connector) -> Arrow type.
_FIXED_TYPES = {
    "REAL": pa.float64(),
    "TEXT": pa.string(),
    "DATE": pa.date32(),
    "TIME": pa.time64("us"),
    "TIMESTAMP": timestamp(tz=False),
    "TIMESTAMP_NTZ": timestamp(tz=False),
    "TIMESTAMP_LTZ": timestamp(tz=True),
    "TIMESTAMP_TZ": timestamp(tz=True),
    "BOOLEAN": pa.bool_(),
    "BINARY": pa.binary(),
    "GEOGRAPHY": pa.string(),
    "GEOMETRY": pa.string(),
    "FILE": pa.string(),
    "INTERVAL_YEAR_MONTH": pa.int64(),
    "INTERVAL_DAY_TIME": pa.int64(),
}
_SEMI_STRUCTURED = {"VARIANT", "OBJECT", "ARRAY", "MAP"}

# (words in the connector's message, errno) -> fix
_FIXES = (
    (("Incorrect username or password",), 390100, "check 'user' and 'password'"),
    (("could not decrypt key", "Could not deserialize key", "private key", "No such file"), -1,
     "check 'private_key_file' (a PKCS#8 PEM file) and 'private_key_passphrase'"),
    (("JWT token is invalid",), 390144, "check 'private_key_file' and that its public key is set "
     "on the user (ALTER USER ... SET RSA_PUBLIC_KEY)"),
    (("Could not connect", "Failed to connect", "Max retry", "Name or service not known"), 250001,
     "check 'account' (the account identifier, e.g. xy12345.eu-central-1 or orgname-account) and "
     "that this machine can reach Snowflake"),
    (("Role",), 390189, "check 'role', and that it is granted to the user"),
    (("No active warehouse",), 606, "set 'warehouse' (a warehouse the role has USAGE on)"),
    (("reached its statement or warehouse timeout",), 630, ""),
    (("does not exist or not authorized",), 2003, "check the database, schema and table names; the "
     "role needs USAGE on the database and schema and SELECT on the tables (docs/warehouses.md)"),
)  # fmt: skip


class _SnowflakeReader(WarehouseResource):
    """Running a model on Snowflake; subclasses say how to connect."""

    kind: ClassVar[str] = "snowflake"
    dialect: ClassVar[str] = "snowflake"

    def _connect_args(self) -> dict[str, Any]:
        raise NotImplementedError

    def _secrets(self) -> list[str | None]:
        raise NotImplementedError

    def connect(self) -> Any:
        """A connection with this engine's session: autocommit off, `qmark` parameters, exact
        decimals, UTC, the statement timeout (the in-warehouse state's connection too)."""
        import snowflake.connector

        kwargs = self._connect_args()
        session = dict(kwargs.pop("session_parameters", None) or {})
        session.update(TIMEZONE="UTC", QUERY_TAG="rudder_sync")
        if self.statement_timeout_seconds:
            session["STATEMENT_TIMEOUT_IN_SECONDS"] = whole_seconds(self.statement_timeout_seconds)
        kwargs.update(
            paramstyle="qmark",
            arrow_number_to_decimal=True,
            autocommit=False,
            session_parameters=session,
        )
        return snowflake.connector.connect(**kwargs)

    def open_connection(self) -> Any:
        from snowflake.connector.errors import Error

        try:
            return self.connect()
        except Error as exc:
            raise self._error("cannot connect to", exc) from None
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable private key file
            raise self._error("cannot connect to", exc) from None

    def disconnect(self, conn: Any) -> None:
        close_quietly(conn.rollback, conn.close)

    @contextmanager
    def read_on(
        self, conn: Any, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        """Stream `sql`'s rows, typed by their Snowflake types, on an open connection (the
        in-warehouse state reads its own tables this way). Snowflake has no read-only
        transaction: ``read_only`` is the role's business (docs/warehouses.md)."""
        from snowflake.connector.errors import Error

        query, args = bind(sql, params, "qmark")
        cursor = conn.cursor()
        try:
            try:
                cursor.execute(query, [_binding(v) for v in args] or None)
                described = list(cursor.description or [])
                tables = cursor.fetch_arrow_batches()
                first = next(tables, None)
            except Error as exc:
                raise self._error("the model failed on", exc) from None
            schema = _schema(described, first.schema if first is not None else None)
            chunks = chain([first], tables) if first is not None else iter(())
            yield stream(schema, self._batches(chunks, schema, Error))
        finally:
            close_quietly(cursor.close)

    def _batches(
        self, chunks: Iterator[pa.Table], schema: pa.Schema, errors: type[Exception]
    ) -> Iterator[pa.RecordBatch]:
        return guarded(batches_of(chunks, schema), (errors, OSError), self._lost)

    def _lost(self, exc: BaseException) -> WarehouseError:
        return self._error("lost the result stream from", exc)

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        message = first_line(getattr(exc, "msg", None) or str(exc))
        errno = getattr(exc, "errno", None)
        fix = "correct the model; it runs in Snowflake's own SQL"
        if what == "cannot connect to":
            fix = "check the connection settings"
        for words, number, text in _FIXES:
            if errno == number or any(w in message for w in words):
                fix = text
                break
        if what != "cannot connect to" and "timeout" in message and self.statement_timeout_seconds:
            fix = self.timeout_fix()
        elif what == "lost the result stream from":
            fix = "the connection dropped mid-stream; nothing was committed, run the sync again"
        return self.failure(what, message, fix, self._secrets())


class SnowflakeWarehouse(_SnowflakeReader):
    """A Snowflake account. Pass `password` or `private_key_passphrase` with `EnvVar`."""

    account: str = Field(description="Account identifier, e.g. xy12345.eu-central-1.")
    user: str = Field(description="User to log in as (give it a read-only role).")
    password: str | None = Field(default=None, repr=False, description="Password (secret).")
    private_key_file: str | None = Field(
        default=None, description="Path of a PKCS#8 private key for key-pair authentication."
    )
    private_key_passphrase: str | None = Field(
        default=None, repr=False, description="Passphrase of the private key file (secret)."
    )
    role: str | None = Field(default=None, description="Role; default: the user's default.")
    warehouse: str | None = Field(default=None, description="Virtual warehouse that runs models.")
    database: str | None = Field(default=None, description="Default database of the models.")
    schema_name: str | None = Field(default=None, description="Default schema of the models.")
    host: str | None = Field(
        default=None,
        description="Endpoint host (a private link, a local emulator); default: the account's.",
    )
    port: int | None = Field(default=None, description="Endpoint port; default 443.")
    protocol: str | None = Field(
        default=None, description="https (default), or http for an emulator on a loopback host."
    )
    connect_args: dict[str, Any] = Field(
        default={},
        description="More keyword arguments for snowflake.connector.connect (e.g. "
        "authenticator, login_timeout); secrets here are not redacted, use the fields.",
    )
    state_schema: str | None = Field(
        default=None,
        description="Keep each sync's state in this schema of `database` and diff there: only "
        "changed rows leave the warehouse (docs/large-models.md).",
    )

    def describe(self) -> str:
        text = _describe(self.account, self.database, self.schema_name, self.warehouse)
        return text + (f" via {self.host}:{self.port or 443}" if self.host else "")

    def _connect_args(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "password": self.password,
            "private_key_file": self.private_key_file,
            "private_key_file_pwd": self.private_key_passphrase,
            "role": self.role,
            "warehouse": self.warehouse,
            "database": self.database,
            "schema": self.schema_name,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "application": "rudder_sync",
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.update(self.connect_args)
        return kwargs

    def _secrets(self) -> list[str | None]:
        return [self.password, self.private_key_passphrase]

    @staticmethod
    def from_dagster(
        resource: dg.ConfigurableResource, statement_timeout_seconds: float | None = None
    ) -> DagsterSnowflakeWarehouse:
        """A warehouse on the connection of a `dagster_snowflake.SnowflakeResource`."""
        return DagsterSnowflakeWarehouse(
            snowflake=resource, statement_timeout_seconds=statement_timeout_seconds
        )


class DagsterSnowflakeWarehouse(_SnowflakeReader):
    """Snowflake reached through a `dagster_snowflake.SnowflakeResource` (a nested resource:
    its `EnvVar`s are resolved by Dagster, and stay names in Dagster's storage and UI).

    Models always run through snowflake-connector-python, with the resource's connection
    arguments (account, user, authentication, role, warehouse, database, schema, ...) and this
    engine's own session settings; the resource's `connector` and `paramstyle` are not used.
    """

    snowflake: dg.ConfigurableResource = Field(description="A dagster_snowflake.SnowflakeResource.")

    def describe(self) -> str:
        res = self.snowflake
        return _describe(
            getattr(res, "account", None) or "?",
            getattr(res, "database", None),
            getattr(res, "schema_", None),
            getattr(res, "warehouse", None),
        )

    def _connect_args(self) -> dict[str, Any]:
        try:
            args = self.snowflake._connection_args  # noqa: SLF001 - the resource's own connect()
        except AttributeError:
            raise WarehouseError(
                f"{type(self.snowflake).__name__} is not a dagster_snowflake.SnowflakeResource. "
                "Fix: pass a SnowflakeResource to SnowflakeWarehouse.from_dagster."
            ) from None
        args = dict(args)
        args.pop("paramstyle", None)
        args["application"] = "rudder_sync"
        return args

    def _secrets(self) -> list[str | None]:
        res = self.snowflake
        return [
            getattr(res, name, None) for name in ("password", "private_key", "private_key_password")
        ]


def _describe(account: str, database: str | None, schema: str | None, wh: str | None) -> str:
    text = f"snowflake account {account}"
    if database:
        text += f" database {database}" + (f".{schema}" if schema else "")
    if wh:
        text += f" (warehouse {wh})"
    return text


def _binding(value: Any) -> Any:
    """Datetimes bound with their Snowflake type: zone-aware as TIMESTAMP_TZ (in UTC)."""
    value = utc_datetime(value)
    if getattr(value, "tzinfo", None) is not None:
        return ("TIMESTAMP_TZ", value)
    return value


def _schema(described: list[Any], actual: pa.Schema | None) -> pa.Schema:
    """The rows' Arrow schema from the result's Snowflake types; structured types (OBJECT,
    ARRAY, MAP with typed fields) keep the Arrow type the connector gives them."""
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    fields = []
    for index, column in enumerate(described):
        got = actual.field(index).type if actual is not None else None
        name = FIELD_ID_TO_NAME.get(column.type_code, "")
        fields.append(pa.field(column.name, _arrow_type(name, column, got)))
    return pa.schema(fields)


def _arrow_type(name: str, column: Any, got: pa.DataType | None) -> pa.DataType:
    if name == "FIXED":
        precision, scale = column.precision or 38, column.scale or 0
        if scale or precision > 18:
            return pa.decimal128(precision, scale)
        return pa.int64()
    if name in _FIXED_TYPES:
        return _FIXED_TYPES[name]
    if name in _SEMI_STRUCTURED:
        if got is None or pa.types.is_string(got) or pa.types.is_large_string(got):
            return JSON
        return plain_type(got)
    return plain_type(got) if got is not None else pa.string()
