"""What the stores of warehouses without advisory locks share (Snowflake, Redshift).

A DB-API connection with autocommit off and `?` parameters (`store.qmark` renumbers the `$n` the
state's SQL is written with), `information_schema` for what exists, meta rewritten by delete and
insert, and the sync's lock as a row of `<state_schema>.rudder_sync_locks`:

* taken, then read back: a run holds the lock when its row is the sync's only one. Redshift: one
  transaction deletes the sync's expired row and inserts this run's only if no row is left (a
  conditional insert); serializable isolation lets only one of two such transactions commit (the
  other fails and tries again), while under snapshot isolation (and on the PostgreSQL stand-in)
  both may: each then reads two rows, withdraws its own and tries again, jittered, since the
  other may have read its row alone and hold the lock already. Snowflake: one MERGE inserts the
  row, or takes over an expired one; Snowflake runs MERGE statements on one table one at a
  time, each seeing what the one before committed;
* renewed by a thread (its own connection) every `RENEW_SECONDS` while the state is open, for
  `LOCK_TTL_SECONDS` more; a row past its expiry (a run that died) is taken over. A row whose
  owner ran on this host in a process that is gone is taken over at once (a killed run);
* released (deleted) when the state closes. A run whose row was taken over refuses to commit.

The owner is `host:pid:token`; a run that cannot take the lock in time fails naming the owner
and since when it holds it. Times are this machine's clock (UTC): the same in every engine and
in the PostgreSQL stand-in, at the price of trusting the clocks of the hosts that run syncs to
agree within the lock's lifetime.
"""

from __future__ import annotations

import abc
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pyarrow as pa

from ..errors import StateError
from ..jsonvalues import quote_ident
from ..warehouses.base import WarehouseResource, redact
from .sql import Tables
from .store import STATE_ROLES, qmark

LOCK_TABLE = "rudder_sync_locks"
LOCK_TTL_SECONDS = 600.0
RENEW_SECONDS = 60.0
_SIMPLE = re.compile(r"[a-z_][a-z0-9_]*")
_QUALIFIED = re.compile(r'^"((?:[^"]|"")*)"\."((?:[^"]|"")*)"$')


def table_ddl(text: str) -> dict[str, str]:
    """The state tables' columns, by role, with ``text`` as the engine's text type."""
    return {
        "meta": f"key {text}, value {text}",
        "snapshot": f"""__rs_pk {text}, __rs_hash {text}, __rs_version bigint,
            __rs_deleted boolean, __rs_user_id {text}, __rs_anonymous_id {text},
            __rs_props {text}, __rs_committed_at timestamptz, __rs_wpk {text},
            __rs_whash {text}""",
        "pending": f"""__rs_window {text}, __rs_change_id bigint, __rs_pk {text},
            __rs_change {text}, __rs_hash {text}, __rs_version bigint, __rs_message_id {text},
            __rs_timestamp {text}, __rs_user_id {text}, __rs_anonymous_id {text},
            __rs_props {text}, __rs_send boolean, __rs_first_seen timestamptz,
            __rs_attempts integer, __rs_last_error {text}, __rs_origin {text}, __rs_wpk {text},
            __rs_whash {text}""",
        "rejected_rows": f"""__rs_window {text}, __rs_pk {text}, reason {text},
            __rs_hash {text}, __rs_attempts integer, __rs_first_seen timestamptz,
            __rs_wpk {text}""",
        "delivery_log": f"""run_id {text}, window_key {text}, change_id bigint, pk {text},
            change {text}, message_id {text}, status {text}, error {text}, attempt integer,
            logged_at timestamptz""",
    }


SNAPSHOT_COLUMNS = (
    "__rs_pk, __rs_hash, __rs_version, __rs_deleted, __rs_user_id, __rs_anonymous_id, "
    "__rs_props, __rs_committed_at, __rs_wpk, __rs_whash"
)


class RowLockStore(abc.ABC):
    """A state store over a DB-API connection, locked by a row; engines fill in the rest (the
    abstract methods; an engine with its own `ingest` or `arrow` leaves their hooks out)."""

    dialect: ClassVar[str] = ""
    paramstyle: ClassVar[str] = "qmark"
    #: the engine's type for text of any length
    text_type: ClassVar[str] = "text"
    #: what the lock and denials name the engine's grantee ("user", "role")
    grantee: ClassVar[str] = "user"

    def __init__(self, warehouse: WarehouseResource, tables: Tables, sync_name: str) -> None:
        self.warehouse: Any = warehouse
        self.tables = tables
        self.sync_name = sync_name
        self.error_types = self._errors()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost_lock: str | None = None
        self._locked = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        try:
            self.conn = self._connect()
        except Exception as exc:  # noqa: BLE001 - every driver's connection errors
            raise self.error("cannot connect to the warehouse for its state", exc) from None
        self.cursor = self._cursor(self.conn)

    # -- what each engine provides ----------------------------------------------------------------
    @abc.abstractmethod
    def _connect(self) -> Any:
        raise NotImplementedError

    def _cursor(self, conn: Any) -> Any:
        return conn.cursor()

    @abc.abstractmethod
    def _errors(self) -> tuple[type[Exception], ...]:
        raise NotImplementedError

    @abc.abstractmethod
    def _secrets(self) -> list[str | None]:
        raise NotImplementedError

    def _message(self, exc: BaseException) -> str:
        return " ".join(str(exc).split())

    def _bind(self, value: Any) -> Any:
        return value

    def _fetch_table(self) -> pa.Table:
        """The last query's rows as Arrow, typed by the engine's column types (`arrow`'s hook)."""
        raise NotImplementedError

    def _insert_rows(self, target: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """Rows into ``target`` (`ingest`'s hook)."""
        raise NotImplementedError

    def _ingest_target(self, name: str) -> tuple[str, str]:
        """Where ``ingest`` puts a table, and the CREATE word for it (`ingest`'s hook)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _merge_source(self, select: str) -> str:
        """A relation MERGE can read ``select`` from."""
        raise NotImplementedError

    @abc.abstractmethod
    def denied(self, exc: BaseException) -> bool:
        raise NotImplementedError

    @abc.abstractmethod
    def grants(self) -> str:
        """The statements that give this connection's grantee what state_schema needs."""
        raise NotImplementedError

    def commit_snapshot(self, where: str) -> None:
        """One MERGE of the changes' snapshot rows (`snapshot_rows_sql`) into the snapshot."""
        snapshot = self.tables.snapshot
        source = self._merge_source(self.snapshot_rows_sql(where))
        columns = [c.strip() for c in SNAPSHOT_COLUMNS.split(",")]
        self.execute(
            f"merge into {snapshot} using {source} n "
            f"on {self.tables.bare('snapshot')}.__rs_pk = n.__rs_pk "
            "when matched then update set "
            + ", ".join(f"{c} = n.{c}" for c in columns[1:])
            + f" when not matched then insert ({SNAPSHOT_COLUMNS}) values ("
            + ", ".join(f"n.{c}" for c in columns)
            + ")"
        )

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        return []

    def is_timeout(self, exc: BaseException) -> bool:
        return "timeout" in str(exc).lower()

    def analyze(self, table: str) -> None:  # noqa: B027 - a default: nothing to do
        """No statistics to gather (the engine keeps them as it writes)."""

    # -- the protocol -----------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.warehouse.describe()} schema {self.tables.schema} ({self.tables.prefix}__*)"

    @property
    def now_sql(self) -> str:
        return f"cast('{datetime.now(UTC).isoformat()}' as timestamptz)"

    def error(self, what: str, exc: BaseException, fix: str = "") -> StateError:
        text = f"sync '{self.sync_name}': {what} ({self.where}): {self._message(exc)}"
        text += f". Fix: {fix}." if fix else ""
        return StateError(redact(text, self._secrets()))

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        query, args = qmark(sql, params)
        bound = [self._bind(v) for v in args] if args is not None else None
        self.cursor.execute(query, bound)
        count = getattr(self.cursor, "rowcount", -1)
        return int(count) if count is not None else -1

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        self.execute(sql, params)
        return [tuple(row) for row in self.cursor.fetchall()]

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        self.execute(sql, params)
        table = self._fetch_table()
        return table.rename_columns([name.lower() for name in table.column_names])

    @contextmanager
    def reader(
        self, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        with self.warehouse.read_on(self.conn, sql, params, read_only=read_only) as reader:
            yield _lower_state_columns(reader)

    def columns(self, table: str) -> list[str]:
        self.execute(f"select * from {table} limit 0")
        return [str(column[0]).lower() for column in self.cursor.description or ()]

    def ingest(self, name: str, table: pa.Table) -> str:
        target, create = self._ingest_target(name)
        columns = [_column(field.name) for field in table.schema]
        types = [self._sql_type(field.type) for field in table.schema]
        self.execute(f"drop table if exists {target}")
        self.execute(
            f"{create} {target} ("
            + ", ".join(f"{c} {t}" for c, t in zip(columns, types, strict=True))
            + ")"
        )
        if table.num_rows:
            self._insert_rows(target, columns, [tuple(r.values()) for r in table.to_pylist()])
        return target

    def _sql_type(self, kind: pa.DataType) -> str:
        if pa.types.is_boolean(kind):
            return "boolean"
        if pa.types.is_integer(kind):
            return "bigint"
        if pa.types.is_floating(kind):
            return "double precision"
        if pa.types.is_timestamp(kind):
            return "timestamptz"
        return self.text_type

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            with suppress(*self.error_types):
                self.conn.rollback()
            raise
        self.commit()

    def commit(self) -> None:
        if self.lost_lock:
            with suppress(*self.error_types):
                self.conn.rollback()
            raise StateError(
                f"sync '{self.sync_name}': lost its lock on {self.where}: {self.lost_lock}; "
                "this change was rolled back (what the run committed before stands). Fix: run "
                "again once the other run ended; renewals failed for the lock's lifetime, so "
                "check the connection to the warehouse."
            )
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def begin_read_only(self) -> None:  # noqa: B027 - a default: nothing to do
        """Nothing to set: the statements that follow share the transaction the driver opens
        (autocommit is off). Redshift's is serializable, so they see one snapshot; Snowflake's
        statements each see what was committed when they started."""

    def get_meta(self) -> dict[str, str]:
        return dict(self.rows(f"select key, value from {self.tables.meta}"))

    def set_meta(self, key: str, value: str) -> None:
        self.execute(f"delete from {self.tables.meta} where key = $1", [key])
        self.execute(f"insert into {self.tables.meta} (key, value) values ($1, $2)", [key, value])

    def refresh_snapshot_keys(self, fresh: str) -> None:
        self.execute(
            f"update {self.tables.snapshot} set __rs_wpk = f.__rs_wpk, __rs_whash = f.__rs_whash "
            f"from {fresh} f where {self.tables.bare('snapshot')}.__rs_pk = f.__rs_pk"
        )

    def snapshot_rows_sql(self, where: str) -> str:
        """The snapshot rows the pending changes chosen by ``where`` commit (a known warehouse key
        is kept when the change carries none)."""
        t = self.tables
        return f"""
            select p.__rs_pk, p.__rs_hash, p.__rs_version,
                   p.__rs_change = 'removed' as __rs_deleted, p.__rs_user_id,
                   p.__rs_anonymous_id, p.__rs_props,
                   {self.now_sql} as __rs_committed_at,
                   coalesce(p.__rs_wpk, s.__rs_wpk) as __rs_wpk,
                   case when p.__rs_change <> 'removed' then p.__rs_whash end as __rs_whash
            from {t.pending} p left join {t.snapshot} s on s.__rs_pk = p.__rs_pk
            where ({where.replace("__rs_change_id", "p.__rs_change_id")})
              and p.__rs_window is null
        """

    def ensure_tables(self) -> bool:
        names = {self.tables.name(role) for role in STATE_ROLES}
        try:
            found = set(self._schema_tables()) & names
            self.commit()
            if found == names:
                return True
            existed = self.tables.name("meta") in found
            self._create_schema()
            ddl = table_ddl(self.text_type)
            for role in STATE_ROLES:
                self.execute(
                    f"create table if not exists {getattr(self.tables, role)} ({ddl[role]})"
                )
            self.commit()
        except self.error_types as exc:
            self._refuse(exc, "cannot create its state tables")
            raise
        return existed

    def _schema_tables(self) -> list[str]:
        found = self.rows(
            "select table_name from information_schema.tables where table_schema = $1",
            [self.tables.schema],
        )
        return [str(name) for (name,) in found]

    def _schema_names(self) -> set[str]:
        return {
            str(name)
            for (name,) in self.rows("select schema_name from information_schema.schemata")
        }

    def _create_schema(self) -> None:
        if self.tables.schema not in self._schema_names():
            self.execute(f"create schema if not exists {quote_ident(self.tables.schema)}")

    def _refuse(self, exc: BaseException, what: str) -> None:
        """Raise the grants a denied statement lacks, or `what` failed."""
        with suppress(*self.error_types):
            self.conn.rollback()
        if self.denied(exc):
            raise self.error(
                "may not create its state schema or tables", exc, self.grants()
            ) from None
        raise self.error(what, exc) from None

    def exists(self, table: str) -> bool:
        match = _QUALIFIED.match(table)
        if match is None:
            raise ValueError(f"not a qualified table name: {table}")
        schema, name = (part.replace('""', '"') for part in match.groups())
        found = self.rows(
            "select count(*) from information_schema.tables "
            "where table_schema = $1 and table_name = $2",
            [schema, name],
        )
        return bool(found[0][0])

    def table_names(self, prefix: str) -> list[str]:
        return [name for name in self._schema_tables() if name.startswith(prefix)]

    # -- the lock row -----------------------------------------------------------------------------
    @property
    def lock_table(self) -> str:
        return self.tables.qualified(LOCK_TABLE)

    def lock(self, wait_seconds: float) -> None:
        try:
            self._create_schema()
            self.execute(
                f"create table if not exists {self.lock_table} (sync_key {self.text_type}, "
                f"owner {self.text_type}, acquired_at timestamptz, expires_at timestamptz)"
            )
            self.commit()
        except self.error_types as exc:
            self._refuse(exc, "cannot create its lock table")
            raise
        deadline = time.monotonic() + wait_seconds
        delay = 0.1
        while True:
            holder = self._try_lock()
            if holder is None:
                self._locked = True
                self._renewer = threading.Thread(
                    target=self._renew, name="rudder_sync-lock", daemon=True
                )
                self._renewer.start()
                return
            owner, since = holder
            if _dead_here(owner):
                self._take_over(owner)
                continue
            if time.monotonic() >= deadline:
                raise StateError(
                    f"sync '{self.sync_name}': another run of this sync holds its state in "
                    f"{self.where} (lock row {self.lock_table} sync_key "
                    f"'{self.tables.prefix}': owner {owner}, since {since}) after "
                    f"{wait_seconds:.0f}s. Fix: wait for that run to finish; runs of the same "
                    f"sync cannot overlap (a run that died leaves its row until it expires, "
                    f"{LOCK_TTL_SECONDS:.0f}s after its last renewal)."
                )
            # jittered: two takers that withdrew together do not retry in step
            time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    def _try_lock(self) -> tuple[str, str] | None:
        """Take the lock row; None when taken, else the holder (owner, since)."""
        now = datetime.now(UTC)
        key = self.tables.prefix
        try:
            self._take_row(key, now, now + timedelta(seconds=LOCK_TTL_SECONDS))
            self.conn.commit()
        except self.error_types:
            # Two takers at once: the engine let the other one commit; see who holds it.
            with suppress(*self.error_types):
                self.conn.rollback()
        held = self.rows(
            f"select owner, acquired_at from {self.lock_table} where sync_key = $1 "
            "order by acquired_at, owner",
            [key],
        )
        self.conn.commit()
        if [owner for owner, _ in held] == [self.owner]:
            return None
        if any(owner == self.owner for owner, _ in held):
            # Two rows: the takers were not serialised (Redshift under snapshot isolation, its
            # PostgreSQL stand-in). The other may have read back its row alone and hold the
            # lock already, whatever the order of `acquired_at` (each taker's clock, not the
            # order of the commits): withdraw, and try again after the wait.
            self._take_over(self.owner)
        others = [row for row in held if row[0] != self.owner]
        if not others:
            return ("(released meanwhile)", "")
        return str(others[0][0]), str(others[0][1])

    def _take_row(self, key: str, now: datetime, expires: datetime) -> None:
        """Delete the sync's expired row, then insert this run's if no row is left (one
        transaction, committed by the caller)."""
        self.execute(
            f"delete from {self.lock_table} where sync_key = $1 and expires_at < $2", [key, now]
        )
        self.execute(
            f"""
            insert into {self.lock_table} (sync_key, owner, acquired_at, expires_at)
            select s.sync_key, s.owner, s.acquired_at, s.expires_at
            from (select cast($1 as {self.text_type}) as sync_key,
                         cast($2 as {self.text_type}) as owner,
                         cast($3 as timestamptz) as acquired_at,
                         cast($4 as timestamptz) as expires_at) s
            where not exists (select 1 from {self.lock_table} l where l.sync_key = $1)
            """,
            [key, self.owner, now, expires],
        )

    def _take_over(self, owner: str) -> None:
        """Delete the row of a run that died on this host (its process is gone)."""
        self.execute(
            f"delete from {self.lock_table} where sync_key = $1 and owner = $2",
            [self.tables.prefix, owner],
        )
        self.conn.commit()

    def _renew(self) -> None:
        """Extend the lock while the state is open, on a connection of its own."""
        conn = None
        try:
            while not self._stop.wait(RENEW_SECONDS) and not self.lost_lock:
                try:
                    if conn is None:
                        conn = self._connect()
                    self.renew(conn)
                except Exception:  # noqa: BLE001, S112 - retried at the next renewal
                    continue
        finally:
            if conn is not None:
                with suppress(Exception):
                    conn.close()

    def renew(self, conn: Any) -> None:
        """Extend this run's lock row by `LOCK_TTL_SECONDS`; a row that is gone (another run
        took it over after it expired) marks the lock lost, so that nothing more commits."""
        cursor = self._cursor(conn)
        query, args = qmark(
            f"update {self.lock_table} set expires_at = $1 where sync_key = $2 and owner = $3",
            [
                datetime.now(UTC) + timedelta(seconds=LOCK_TTL_SECONDS),
                self.tables.prefix,
                self.owner,
            ],
        )
        cursor.execute(query, [self._bind(v) for v in args or ()])
        renewed = cursor.rowcount
        conn.commit()
        if renewed == 0:
            self.lost_lock = "its lock row expired and another run took it over"

    def alive(self) -> bool:
        try:
            self.conn.rollback()
            self.rows("select 1")
            self.conn.rollback()
        except self.error_types:
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        if self._locked:  # release: delete this run's row (a lost connection leaves it to expire)
            with suppress(Exception):
                self.conn.rollback()
            with suppress(Exception):
                self._take_over(self.owner)
        for step in (self.cursor.close, self.conn.rollback, self.conn.close):
            try:
                step()
            except Exception:  # noqa: BLE001, S112 - closing after a failure may fail too
                continue


# PostgreSQL's protocol (Redshift's) allows 32,767 parameters in one statement.
MAX_PARAMS = 30_000


def insert_values(
    cursor: Any,
    target: str,
    columns: Sequence[str],
    rows: list[tuple],
    bind: Callable[[Any], Any],
    max_rows: int = MAX_PARAMS,
) -> None:
    """Rows into ``target`` by multi-row INSERTs of bound values, as many rows each as the
    parameters allow."""
    per = max(1, min(max_rows, MAX_PARAMS // max(1, len(columns))))
    one = "(" + ", ".join("?" for _ in columns) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        cursor.execute(
            f"insert into {target} ({', '.join(columns)}) values " + ", ".join(one for _ in chunk),
            [bind(v) for row in chunk for v in row],
        )


def _column(name: str) -> str:
    """A column of an ingested table: bare when simple, so unquoted SQL finds it everywhere
    (Snowflake folds bare names to upper case, Redshift and PostgreSQL to lower case)."""
    return name if _SIMPLE.fullmatch(name) else quote_ident(name)


def _dead_here(owner: str) -> bool:
    """Whether a lock owner (`host:pid:token`) is a process of this host that is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lower_state_columns(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The `__rs_*` columns the fingerprint adds, lower-case whatever case the engine folds
    unquoted names to; the model's own columns as they are."""
    names = [n.lower() if n.lower().startswith("__rs_") else n for n in reader.schema.names]
    if names == reader.schema.names:
        return reader
    schema = pa.schema(
        [f.with_name(n) for f, n in zip(reader.schema, names, strict=True)],
        metadata=reader.schema.metadata,
    )
    batches = (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in reader)
    return pa.RecordBatchReader.from_batches(schema, batches)
