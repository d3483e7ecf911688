"""PostgreSQL's store (`store.StateStore`): one sync's state tables over one ADBC connection.

The connection (ADBC, autocommit off) is the run's: it holds the sync's advisory lock for as long
as a step has the state open, so two runs of one sync never interleave, and every change to the
state is one of its transactions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from ..errors import StateError
from ..jsonvalues import quote_ident, quote_literal
from ..warehouses.base import redact
from ..warehouses.postgres import PostgresWarehouse, url_password
from .sql import Tables

_DDL = """
create table if not exists {meta} (key text primary key, value text);
create table if not exists {snapshot} (
    __rs_pk text primary key,
    __rs_hash text,
    __rs_version bigint not null,
    __rs_deleted boolean not null,
    __rs_user_id text,
    __rs_anonymous_id text,
    __rs_props text,
    __rs_committed_at timestamptz not null,
    __rs_wpk text,
    __rs_whash text
);
create index if not exists {snapshot_wpk_index} on {snapshot} (__rs_wpk);
create table if not exists {pending} (
    __rs_window text,
    __rs_change_id bigint primary key,
    __rs_pk text,
    __rs_change text,
    __rs_hash text,
    __rs_version bigint,
    __rs_message_id text,
    __rs_timestamp text,
    __rs_user_id text,
    __rs_anonymous_id text,
    __rs_props text,
    __rs_send boolean,
    __rs_first_seen timestamptz,
    __rs_attempts integer,
    __rs_last_error text,
    __rs_origin text,
    __rs_wpk text,
    __rs_whash text
);
create table if not exists {rejected_rows} (
    __rs_window text,
    __rs_pk text,
    reason text,
    __rs_hash text,
    __rs_attempts integer,
    __rs_first_seen timestamptz,
    __rs_wpk text
);
create table if not exists {delivery_log} (
    run_id text,
    window_key text,
    change_id bigint,
    pk text,
    change text,
    message_id text,
    status text,
    error text,
    attempt integer,
    logged_at timestamptz
);
create index if not exists {delivery_log_time_index} on {delivery_log} (logged_at);
"""


def grants(schema: str, user: str, database: str) -> str:
    """The statements that give a warehouse user what in-warehouse state needs."""
    s, u = quote_ident(schema), quote_ident(user)
    return (
        f"either let rudder_sync create the schema: GRANT CREATE ON DATABASE "
        f"{quote_ident(database)} TO {u}; or create it for that user: CREATE SCHEMA {s} "
        f"AUTHORIZATION {u}; or, in a schema another role owns: GRANT USAGE, CREATE ON SCHEMA "
        f"{s} TO {u}; (and GRANT SELECT on the tables the models read)"
    )


class Store:
    """The sync's tables (`Tables`) and the ADBC connection that reads and writes them."""

    dialect = "postgres"
    paramstyle = "numeric"
    now_sql = "now()"

    def __init__(self, warehouse: PostgresWarehouse, tables: Tables, sync_name: str) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        self.warehouse = warehouse
        self.tables = tables
        self.sync_name = sync_name
        self.error_types: tuple[type[Exception], ...] = (adbc.Error,)
        try:
            self.conn = adbc.connect(warehouse.url)
        except adbc.Error as exc:
            raise self.error("cannot connect to the warehouse for its state", exc) from None
        self.cursor = self.conn.cursor()

    @property
    def where(self) -> str:
        """The state's location for messages: warehouse, schema and table prefix."""
        return f"{self.warehouse.describe()} schema {self.tables.schema} ({self.tables.prefix}__*)"

    def error(self, what: str, exc: BaseException, fix: str = "") -> StateError:
        url = self.warehouse.url
        message = " ".join(str(exc).split("\n\nQuery was:")[0].split()).rstrip(".")
        text = f"sync '{self.sync_name}': {what} ({self.where}): {message}"
        text += f". Fix: {fix}." if fix else ""
        return StateError(redact(text, [url, url_password(url)]))

    # -- statements -----------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Run a statement; rows it changed (-1 when the driver does not say)."""
        self.cursor.execute(sql, params)
        return int(self.cursor.rowcount)

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        self.cursor.execute(sql, params)
        return list(self.cursor.fetchall())

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        self.cursor.execute(sql, params)
        return self.cursor.fetch_arrow_table()

    def columns(self, table: str) -> list[str]:
        self.cursor.execute(f"select * from {table} limit 0")
        return [column[0] for column in self.cursor.description or ()]

    def ingest(self, name: str, table: pa.Table) -> str:
        """``table`` as a temporary table of this connection; its name."""
        self.cursor.execute(f"drop table if exists pg_temp.{quote_ident(name)}")
        self.cursor.adbc_ingest(name, table, mode="create", temporary=True)
        return f"pg_temp.{quote_ident(name)}"

    @contextmanager
    def reader(
        self, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        with self.warehouse.read_on(self.conn, sql, params, read_only=read_only) as reader:
            yield reader

    def begin_read_only(self) -> None:
        self.execute("set transaction isolation level repeatable read, read only")

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def commit_snapshot(self, where: str) -> None:
        t = self.tables
        self.execute(
            f"""
            insert into {t.snapshot}
            select __rs_pk, __rs_hash, __rs_version, __rs_change = 'removed', __rs_user_id,
                   __rs_anonymous_id, __rs_props, now(), __rs_wpk,
                   case when __rs_change <> 'removed' then __rs_whash end
            from {t.pending} where {where} and __rs_window is null
            on conflict (__rs_pk) do update set
                __rs_hash = excluded.__rs_hash, __rs_version = excluded.__rs_version,
                __rs_deleted = excluded.__rs_deleted, __rs_user_id = excluded.__rs_user_id,
                __rs_anonymous_id = excluded.__rs_anonymous_id,
                __rs_props = excluded.__rs_props, __rs_committed_at = excluded.__rs_committed_at,
                __rs_wpk = coalesce(excluded.__rs_wpk, {t.snapshot}.__rs_wpk),
                __rs_whash = excluded.__rs_whash
            """
        )

    def refresh_snapshot_keys(self, fresh: str) -> None:
        self.execute(
            f"""
            update {self.tables.snapshot} s set __rs_wpk = f.__rs_wpk, __rs_whash = f.__rs_whash
            from {fresh} f where s.__rs_pk = f.__rs_pk
              and (s.__rs_wpk is distinct from f.__rs_wpk
                   or s.__rs_whash is distinct from f.__rs_whash)
            """
        )

    def exists(self, table: str) -> bool:
        return bool(self.rows("select to_regclass($1) is not null", [table])[0][0])

    def table_names(self, prefix: str) -> list[str]:
        found = self.rows(
            "select tablename from pg_tables where schemaname = $1 and starts_with(tablename, $2)",
            [self.tables.schema, prefix],
        )
        return [name for (name,) in found]

    def analyze(self, table: str) -> None:
        self.execute(f"analyze {table}")

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        settings = []
        if statement_timeout_seconds:
            milliseconds = max(1, round(statement_timeout_seconds * 1000))
            settings.append(f"set local statement_timeout = {milliseconds}")
        # The planner does not weigh the per-row hashing: let it use parallel workers.
        return [*settings, "set local parallel_tuple_cost = 0"]

    def is_timeout(self, exc: BaseException) -> bool:
        return "statement timeout" in str(exc)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements inside commit together, or not at all."""
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def get_meta(self) -> dict[str, str]:
        return dict(self.rows(f"select key, value from {self.tables.meta}"))

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            f"insert into {self.tables.meta} values ($1, $2) "
            "on conflict (key) do update set value = excluded.value",
            [key, value],
        )

    # -- opening --------------------------------------------------------------------------------
    def ensure_tables(self) -> bool:
        """Create the schema (if missing) and the sync's tables; whether they existed before."""
        schema = self.tables.schema
        names = {role: getattr(self.tables, role) for role in _roles()}
        index = self.tables.qualified(self.tables.name("snapshot_wpk"))
        # The delivery log's pruning (`SyncState.prune_delivery_log`) deletes by time; a state
        # created before it gets the index at its next opening (the probe misses it).
        time_index = self.tables.qualified(self.tables.name("delivery_log_time"))
        # One round trip when everything exists (every run but the first): a remote warehouse
        # charges one per statement.
        probe = ", ".join(
            f"to_regclass({quote_literal(n)}) is not null"
            for n in (*names.values(), index, time_index)
        )
        try:
            with self.transaction():
                found = self.rows(
                    f"select exists (select 1 from pg_namespace where nspname = $1), {probe}",
                    [schema],
                )[0]
                if all(found):
                    return True
                schema_found, meta_found = found[0], found[1]  # meta: the first role
                if not schema_found:
                    self.execute(f"create schema if not exists {quote_ident(schema)}")
                existed = bool(meta_found)
                ddl = _DDL.format(
                    snapshot_wpk_index=quote_ident(self.tables.name("snapshot_wpk")),
                    delivery_log_time_index=quote_ident(self.tables.name("delivery_log_time")),
                    **names,
                )
                for statement in ddl.split(";"):
                    if statement.strip():
                        self.execute(statement)
        except self.error_types as exc:
            if "permission denied" not in str(exc):
                raise self.error("cannot create its state tables", exc) from None
            user, database = self.rows("select current_user, current_database()")[0]
            self.conn.rollback()
            raise self.error(
                "may not create its state schema or tables", exc, grants(schema, user, database)
            ) from None
        return existed

    def lock(self, wait_seconds: float) -> None:
        """Hold the sync's advisory lock (session level), waiting up to ``wait_seconds``."""
        key = f"rudder_sync/{self.tables.schema}/{self.tables.prefix}"
        deadline = time.monotonic() + wait_seconds
        delay = 0.1
        while True:
            got = self.rows("select pg_try_advisory_lock(hashtextextended($1, 0))", [key])[0][0]
            self.conn.commit()
            if got:
                return
            if time.monotonic() >= deadline:
                raise StateError(
                    f"sync '{self.sync_name}': another run of this sync holds its state in "
                    f"{self.where} (advisory lock) after {wait_seconds:.0f}s. Fix: wait for that "
                    "run to finish; runs of the same sync cannot overlap."
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    def alive(self) -> bool:
        """Whether the connection still answers (after an error: lost, or a failed statement)."""
        try:
            self.conn.rollback()
            self.rows("select 1")
        except self.error_types:
            return False
        return True

    def close(self) -> None:
        """Close the connection; the server releases the advisory lock with the session."""
        for step in (self.cursor.close, self.conn.rollback, self.conn.close):
            try:
                step()
            except Exception:  # noqa: BLE001, S112 - closing after a failure may fail too
                continue


def _roles() -> tuple[str, ...]:
    return ("meta", "snapshot", "pending", "rejected_rows", "delivery_log")
