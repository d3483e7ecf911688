"""Databricks' store (`store.StateStore`): a sync's state in `<catalog>.<state_schema>`.

Through databricks-sql-connector on the warehouse's own session (`DatabricksWarehouse.connect`:
catalog, schema, UTC, the statement timeout). Databricks keeps its tables in Delta: every
statement commits on its own (`MERGE`, `UPDATE`, `DELETE`, `INSERT` each atomically), and there
is no multi-statement transaction. So this store, like BigQuery's, is a DB-API-like connection
whose `execute` collects the statements of a transaction and whose `commit` runs them, and a
commit of two or more writes is made safe at every statement boundary by a redo journal:

1. one `INSERT` writes the commit's statements, in order, into `<sync>__in__rs_journal`, on the
   condition that the lock row still names this run (the fence);
2. the statements run, one by one;
3. one `DELETE` empties the journal.

Opening the state (`ensure_tables`, under the lock) runs a journal it finds again, from its first
statement, then empties it: a crash after (1) is finished by the next run. That is correct because
every statement, run again after any prefix of its commit ran, leaves what one run leaves: the
statements are written with literal values (the journal holds them whole), meta is written by one
`MERGE` per key, an `UPDATE ... FROM` (which Databricks lacks) becomes a `MERGE` whose values come
from its source (the attempt count is written as a number, not incremented:
`state._mirror_failures`), and an `INSERT` into the delivery log skips the rows it holds already
(same run, change, status and attempt). docs/large-models.md ("Databricks") goes through each
transaction. Commits of DDL (the model, the delta, window tables, the state's tables created if
missing) run statement by statement without a journal: each of those tables is derived or
created if missing, so a script that stops half-way is rebuilt by the next run.

Loaded tables (`ingest`) are tables of the sync, `<sync>__in__rs_<name>`, replaced at each use
(a journal may name them, so they must outlive a crash: a temporary view would not). The lock is
a row taken by one conditional `MERGE` (`rowlock_store`; of two concurrent `MERGE`s into one Delta
table one fails and tries again). Spark's catalogs have no `information_schema`: `SHOW TABLES IN`.

The state's SQL is PostgreSQL's (transpiled here by sqlglot); the diff's statements arrive in
Databricks' already (`sql.render`; their quoted names are in backticks, which PostgreSQL's never
have).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa

from ..errors import StateError
from ..warehouses.vendor import first_line, utc_datetime
from . import rowlock_store
from .rowlock_store import _QUALIFIED, LOCK_TABLE, RowLockStore
from .sql import LOADED_INFIX
from .store import qmark

JOURNAL = "journal"
# a lock row's DELETE tried this often (two writes of one Delta table at once: one fails)
RELEASE_TRIES = 5
# Loading a table: rows of VALUES per INSERT, and the SQL text an INSERT may grow to. Each INSERT
# is one commit of the table (Delta's, or Iceberg's on the stand-in), so fewer are faster: 5,000
# rows an INSERT loaded 2.7x the rows a second of 500 on the stand-in. Databricks SQL takes
# statements of up to 16 MiB; wide rows stop an INSERT well before that.
INGEST_ROWS = 5_000
INGEST_BYTES = 2 * 1024 * 1024
# what hides a `?` from the scanner in Databricks SQL: strings (with backslash escapes), quoted
# names, comments
_SKIP = r"'(?:[^'\\]|\\.)*'" r'|"(?:[^"\\]|\\.)*"' r"|`[^`]*`" r"|--[^\n]*|/\*.*?\*/"
_PLACEHOLDER = re.compile(rf"(?P<skip>{_SKIP})|\?", re.DOTALL)
_SHOW = re.compile(r"^\s*show\b", re.IGNORECASE)
_DDL = re.compile(r"^\s*(create|drop|alter)\b", re.IGNORECASE)
_SIMPLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Databricks' words for a statement denied for missing privileges
_DENIED = ("PERMISSION_DENIED", "INSUFFICIENT_PERMISSIONS")
# the delivery log's columns that make a row unique: a replayed insert skips rows it has
_LOG_KEY = ("run_id", "change_id", "status", "attempt")
_LOG_COLUMNS = (
    "run_id, window_key, change_id, pk, change, message_id, status, error, attempt, logged_at"
)


class _Unfinished(StateError):
    """A commit stopped after its journal was written: the next open finishes it."""


class _Session:
    """The connection as `RowLockStore` drives it: `commit` runs the collected statements,
    `rollback` drops them; `cursor` is the connector's."""

    def __init__(self, conn: Any, store: Store | None = None) -> None:
        self.raw = conn
        self._store = store

    def cursor(self) -> Any:
        return self.raw.cursor()

    def commit(self) -> None:
        if self._store is not None:
            self._store._flush()  # noqa: SLF001 - the store's own session

    def rollback(self) -> None:
        if self._store is not None:
            self._store._drop()  # noqa: SLF001

    def close(self) -> None:
        self.raw.close()


class Store(RowLockStore):
    """A sync's state tables in a Databricks schema, locked by a row; commits journaled."""

    dialect: ClassVar[str] = "databricks"
    paramstyle: ClassVar[str] = "qmark"
    text_type: ClassVar[str] = "text"  # STRING, once transpiled
    grantee: ClassVar[str] = "principal"

    def __init__(self, warehouse: Any, tables: Any, sync_name: str) -> None:
        self._script: list[str] = []
        self._unfinished: str | None = None
        super().__init__(warehouse, tables, sync_name)
        self.conn = _Session(self.conn.raw, self)

    # -- the connection ---------------------------------------------------------------------------
    def _connect(self) -> _Session:
        return _Session(self.warehouse.connect())

    def _errors(self) -> tuple[type[Exception], ...]:
        from databricks.sql.exc import Error

        return (Error,)

    def _secrets(self) -> list[str | None]:
        return [self.warehouse.access_token]

    def _message(self, exc: BaseException) -> str:
        return first_line(str(exc))

    @property
    def journal(self) -> str:
        return self.tables.qualified(f"{self.tables.prefix}{LOADED_INFIX}{JOURNAL}")

    # -- statements -------------------------------------------------------------------------------
    def databricks_sql(self, sql: str, params: Sequence[Any] | None = None) -> str:
        """``sql`` in Databricks' dialect with its parameters as literals: PostgreSQL's SQL (with
        `$n`) transpiled and rewritten where Databricks lacks a form; Databricks' own (the
        diff's, with `?`) as it is."""
        query, values = qmark(sql, params)
        text = query if "`" in query or _SHOW.match(query) else self._transpile(query)
        if values:
            text = inline(text, values)
        return text

    def _transpile(self, sql: str) -> str:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="postgres")
        where = tree.args.get("where")
        if isinstance(tree, exp.Delete | exp.Update) and where is not None:
            # Spark reads `DELETE FROM t WHERE (x)` as `t` aliased `WHERE` with column aliases
            while isinstance(where.this, exp.Paren):
                where.set("this", where.this.this)
        if isinstance(tree, exp.Update) and tree.args.get("from_") is not None:
            return self._update_as_merge(tree)
        text = tree.sql(dialect="databricks")
        if isinstance(tree, exp.Insert) and self._target(tree) == self.tables.delivery_log:
            return self._insert_once(tree)
        return text

    def _target(self, tree: Any) -> str:
        """The qualified name (PostgreSQL's quoting) of a statement's target table."""
        from sqlglot import exp

        table = tree.this
        if isinstance(table, exp.Schema):
            table = table.this
        return f'"{table.db}"."{table.name}"'

    def _update_as_merge(self, tree: Any) -> str:
        """`UPDATE t SET ... FROM s WHERE <match>` as `MERGE INTO t USING s ON <match> WHEN
        MATCHED THEN UPDATE SET ...` (Databricks has no `UPDATE ... FROM`); a row of ``t``
        must match one source row at most, as in PostgreSQL's."""
        target = tree.this
        alias = target.name
        source = tree.args["from_"].this
        sets = ", ".join(e.sql(dialect="databricks") for e in tree.expressions)
        where = tree.args["where"].this.sql(dialect="databricks")
        return (
            f"MERGE INTO {target.sql(dialect='databricks')} AS `{alias}` "
            f"USING {source.sql(dialect='databricks')} ON {where} "
            f"WHEN MATCHED THEN UPDATE SET {sets}"
        )

    def _insert_once(self, tree: Any) -> str:
        """An `INSERT` into the delivery log that skips the rows the log holds already (same
        run, change, status and attempt): run twice, it logs once."""
        from sqlglot import exp

        target = tree.this
        columns = _LOG_COLUMNS
        if isinstance(target, exp.Schema):
            columns = ", ".join(c.name for c in target.expressions)
            target = target.this
        select = tree.expression.sql(dialect="databricks")
        name = target.sql(dialect="databricks")
        match = " AND ".join(f"l.{c} <=> n.{c}" for c in _LOG_KEY)
        return (
            f"INSERT INTO {name} ({columns}) SELECT * FROM ({select}) AS n({columns}) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {name} AS l WHERE {match})"
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Add a statement to the commit; its row count is not known yet (-1)."""
        self._script.append(self.databricks_sql(sql, params))
        return -1

    def _run(self, statement: str) -> int:
        """Run one statement now; the rows it changed (-1: not said)."""
        self.cursor.execute(statement)
        count = getattr(self.cursor, "rowcount", -1)
        return int(count) if count is not None else -1

    def _reading(self) -> None:
        if self._script:
            raise RuntimeError(
                f"sync '{self.sync_name}': a read while {len(self._script)} statement(s) wait "
                "to be committed on Databricks: the read would not see them. This is a bug in "
                "rudder_sync: read before the first write, or after the commit."
            )

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        self._reading()
        self._run(self.databricks_sql(sql, params))
        return [tuple(row) for row in self.cursor.fetchall()]

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        self._reading()
        self._run(self.databricks_sql(sql, params))
        table = self._fetch_table()
        return table.rename_columns([name.lower() for name in table.column_names])

    def _fetch_table(self) -> pa.Table:
        from ..warehouses.databricks import normalised_schema

        table = self.cursor.fetchall_arrow()
        schema = normalised_schema(table.schema, self.cursor.description or [])
        return table.cast(schema)

    @contextmanager
    def reader(
        self, sql: str, params: Mapping[str, Any] | None = None, read_only: bool = False
    ) -> Iterator[pa.RecordBatchReader]:
        self._reading()
        with super().reader(sql, params, read_only) as reader:
            yield reader

    def columns(self, table: str) -> list[str]:
        """A table's columns (a loaded table's, inside a transaction: no write changes them)."""
        self._run(f"SELECT * FROM {_backticks(table)} LIMIT 0")
        return [str(column[0]).lower() for column in self.cursor.description or ()]

    def ingest(self, name: str, table: pa.Table) -> str:
        """Rows into `<sync>__in__rs_<name>` of the state schema, replaced: multi-row INSERTs of
        literals (the connector has no bulk load without a volume)."""
        self._check_finished()
        bare = f"{self.tables.prefix}{LOADED_INFIX}{name.removeprefix('__rs_')}"
        if any(f"`{bare}`" in statement for statement in self._script):
            raise RuntimeError(
                f"sync '{self.sync_name}': {bare} is loaded again while a statement that reads "
                "it waits to be committed (a bug in rudder_sync)."
            )
        target = self.tables.qualified(bare)
        spark_target = _backticks(target)
        columns = [_column(field.name) for field in table.schema]
        types = [_spark_type(field.type) for field in table.schema]
        self._run(f"DROP TABLE IF EXISTS {spark_target}")
        self._run(
            f"CREATE TABLE {spark_target} ("
            + ", ".join(f"{c} {t}" for c, t in zip(columns, types, strict=True))
            + ")"
        )
        for statement in insert_statements(spark_target, columns, table):
            self._run(statement)
        return target

    # -- commits ----------------------------------------------------------------------------------
    def _drop(self) -> None:
        self._script = []

    def _check_finished(self) -> None:
        if self._unfinished:
            raise _Unfinished(
                f"sync '{self.sync_name}': a commit of its state in {self.where} stopped after "
                f"its journal was written ({self._unfinished}); nothing more is written by this "
                "run. Fix: run again: opening the state finishes that commit first."
            )

    def _flush(self) -> None:
        """Run what waits: DDL statement by statement; two or more writes through the journal
        (fenced while the run holds the lock); one write as it is."""
        statements = self._script
        self._drop()
        if not statements:
            return
        ddl = [bool(_DDL.match(s)) for s in statements]
        if all(ddl) or len(statements) == 1:
            if not all(ddl):
                self._check_finished()
            for statement in statements:
                self._run(statement)
            return
        if any(ddl):
            raise RuntimeError(
                f"sync '{self.sync_name}': a Databricks commit may hold DDL or writes, not both "
                "(DDL is not journaled): a bug in rudder_sync."
            )
        self._check_finished()
        self._write_journal(statements)
        try:
            for statement in statements:
                self._run(statement)
            self._run(f"DELETE FROM {_backticks(self.journal)}")
        except BaseException as exc:
            self._unfinished = first_line(str(exc))[:200]
            raise

    def _write_journal(self, statements: list[str]) -> None:
        """One INSERT of the commit's statements, only while the lock row names this run."""
        values = ", ".join(f"({i}, {literal(s)})" for i, s in enumerate(statements, start=1))
        fence = ""
        if self._locked:
            lock = _backticks(self.lock_table)
            fence = (
                f" WHERE EXISTS (SELECT 1 FROM {lock} WHERE sync_key = "
                f"{literal(self.tables.prefix)} AND owner = {literal(self.owner)})"
            )
        journal = _backticks(self.journal)
        written = self._run(
            f"INSERT INTO {journal} (seq, statement) "
            f"SELECT seq, statement FROM VALUES {values} AS j(seq, statement){fence}"
        )
        if written < 0:  # the engine did not say: count
            self._run(f"SELECT count(*) FROM {journal}")
            written = int(self.cursor.fetchall()[0][0])
        if written == 0:
            self.lost_lock = "its lock row names another run, which took it over"
            super().commit()  # raises the lost lock's error

    def finish_journal(self) -> int:
        """Run a commit's journal left by a run that stopped after writing it (each statement
        again, from the first), then empty it; how many statements ran."""
        journal = _backticks(self.journal)
        self._run(f"SELECT statement FROM {journal} ORDER BY seq")
        statements = [str(row[0]) for row in self.cursor.fetchall()]
        for statement in statements:
            self._run(statement)
        if statements:
            self._run(f"DELETE FROM {journal}")
        return len(statements)

    def set_meta(self, key: str, value: str) -> None:
        """One MERGE: run again, it writes the same row."""
        self.execute(
            f"""
            merge into {self.tables.meta} using (select cast($1 as text) as key,
                                                        cast($2 as text) as value) s
            on {self.tables.bare("meta")}.key = s.key
            when matched then update set value = s.value
            when not matched then insert (key, value) values (s.key, s.value)
            """,
            [key, value],
        )

    def refresh_snapshot_keys(self, fresh: str) -> None:
        self.execute(
            f"update {self.tables.snapshot} set __rs_wpk = f.__rs_wpk, __rs_whash = f.__rs_whash "
            f"from {fresh} f where {self.tables.bare('snapshot')}.__rs_pk = f.__rs_pk"
        )

    def _merge_source(self, select: str) -> str:
        return f"({select})"

    def model_settings(self, statement_timeout_seconds: float | None) -> list[str]:
        """None: the session's STATEMENT_TIMEOUT (`DatabricksWarehouse.connect`) holds it."""
        return []

    def is_timeout(self, exc: BaseException) -> bool:
        message = self._message(exc).upper()
        return "TIMEOUT" in message or "TIMED OUT" in message

    # -- the schema -------------------------------------------------------------------------------
    def ensure_tables(self) -> bool:
        """The state's tables and the journal; a journal left by a commit that stopped is run
        to its end before anything reads the state."""
        existed = super().ensure_tables()
        try:
            self._run(
                f"CREATE TABLE IF NOT EXISTS {_backticks(self.journal)} (seq INT, statement STRING)"
            )
            self.finish_journal()
        except self.error_types as exc:
            self._refuse(exc, "cannot finish the last commit of its state")
            raise
        return existed

    def _schema_tables(self) -> list[str]:
        if self.tables.schema not in self._schema_names():
            return []
        found = self.rows(f"SHOW TABLES IN `{self.tables.schema}`")
        return [str(row[1]) for row in found if not row[2]]

    def _schema_names(self) -> set[str]:
        return {str(row[0]) for row in self.rows("SHOW SCHEMAS")}

    def exists(self, table: str) -> bool:
        match = _QUALIFIED.match(table)
        if match is None:
            raise ValueError(f"not a qualified table name: {table}")
        schema, name = (part.replace('""', '"') for part in match.groups())
        if schema not in self._schema_names():
            return False
        found = self.rows(f"SHOW TABLES IN `{schema}`")
        return any(str(row[1]) == name for row in found)

    # -- grants -----------------------------------------------------------------------------------
    def denied(self, exc: BaseException) -> bool:
        return any(words in self._message(exc) for words in _DENIED)

    def grants(self) -> str:
        """Unity Catalog's statements for this connection's principal."""
        principal, catalog = self.rows("SELECT current_user(), current_catalog()")[0]
        p, c = f"`{principal}`", f"`{catalog}`"
        s = f"{c}.`{self.tables.schema}`"
        return (
            f"either let rudder_sync create the schema: GRANT USE CATALOG, CREATE SCHEMA ON "
            f"CATALOG {c} TO {p}; or create it for that principal: CREATE SCHEMA {s}; ALTER "
            f"SCHEMA {s} OWNER TO {p}; or, in a schema another principal owns: GRANT USE CATALOG "
            f"ON CATALOG {c} TO {p}; GRANT USE SCHEMA, CREATE TABLE, MODIFY, SELECT ON SCHEMA {s} "
            f"TO {p}; (and SELECT on the tables the models read)"
        )

    # -- the lock row -----------------------------------------------------------------------------
    def _take_row(self, key: str, now: datetime, expires: datetime) -> None:
        """One MERGE: insert this run's row, or take over the sync's expired one (of two
        concurrent MERGEs one fails: `_try_lock` reads who holds the row). A row held and not
        expired is only read: a MERGE that changes nothing still commits a new version of the
        table, which would conflict with the holder's renewal and release."""
        lock = self.lock_table
        held = self.rows(
            f"select count(*) from {lock} where sync_key = $1 and expires_at >= $2", [key, now]
        )
        if int(held[0][0]):
            return
        self.execute(
            f"""
            merge into {lock} using (
                select cast($1 as text) as sync_key, cast($2 as text) as owner,
                       cast($3 as timestamptz) as acquired_at,
                       cast($4 as timestamptz) as expires_at
            ) s on "{LOCK_TABLE}".sync_key = s.sync_key
            when matched and "{LOCK_TABLE}".expires_at < s.acquired_at then update set
                owner = s.owner, acquired_at = s.acquired_at, expires_at = s.expires_at
            when not matched then insert (sync_key, owner, acquired_at, expires_at)
                values (s.sync_key, s.owner, s.acquired_at, s.expires_at)
            """,
            [key, self.owner, now, expires],
        )

    def _take_over(self, owner: str) -> None:
        """Delete a lock row now (not collected: a release must not wait on a commit), tried
        again after a concurrent write to the lock table failed it."""
        statement = self.databricks_sql(
            f"delete from {self.lock_table} where sync_key = $1 and owner = $2",
            [self.tables.prefix, owner],
        )
        for attempt in range(RELEASE_TRIES):
            try:
                self._run(statement)
                return
            except self.error_types:
                if attempt == RELEASE_TRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def renew(self, conn: Any) -> None:
        """Extend this run's lock row, on the renewal's own connection; a row that is gone
        marks the lock lost (counted when the engine does not say how many rows changed)."""
        cursor = conn.cursor()
        key, lock = self.tables.prefix, self.lock_table
        cursor.execute(
            self.databricks_sql(
                f"update {lock} set expires_at = $1 where sync_key = $2 and owner = $3",
                [
                    datetime.now(UTC) + timedelta(seconds=rowlock_store.LOCK_TTL_SECONDS),
                    key,
                    self.owner,
                ],
            )
        )
        renewed = cursor.rowcount if cursor.rowcount is not None else -1
        if renewed < 0:
            cursor.execute(
                self.databricks_sql(
                    f"select count(*) from {lock} where sync_key = $1 and owner = $2",
                    [key, self.owner],
                )
            )
            renewed = int(cursor.fetchall()[0][0])
        if renewed == 0:
            self.lost_lock = "its lock row expired and another run took it over"


# -- SQL ------------------------------------------------------------------------------------------
def insert_statements(target: str, columns: Sequence[str], table: pa.Table) -> Iterator[str]:
    """``table``'s rows as multi-row INSERTs of literals into ``target``: up to `INGEST_ROWS`
    rows and `INGEST_BYTES` of text each (a row longer than that alone), one batch of rows in
    Python at a time."""
    head = f"INSERT INTO {target} ({', '.join(columns)}) VALUES "
    values: list[str] = []
    size = len(head.encode())
    for batch in table.to_batches(max_chunksize=INGEST_ROWS):
        for row in batch.to_pylist():
            text = "(" + ", ".join(literal(v) for v in row.values()) + ")"
            length = len(text.encode()) + 2
            if values and (len(values) >= INGEST_ROWS or size + length > INGEST_BYTES):
                yield head + ", ".join(values)
                values, size = [], len(head.encode())
            values.append(text)
            size += length
    if values:
        yield head + ", ".join(values)


def inline(sql: str, values: Sequence[Any]) -> str:
    """``sql``'s `?` placeholders (outside strings, names and comments) as literals."""
    remaining = list(values)

    def one(match: re.Match[str]) -> str:
        if match.group("skip") is not None:
            return match.group(0)
        if not remaining:
            raise ValueError(f"more placeholders than values in: {sql[:200]}")
        return literal(remaining.pop(0))

    text = _PLACEHOLDER.sub(one, sql)
    if remaining:
        raise ValueError(f"{len(remaining)} values left over for: {sql[:200]}")
    return text


def literal(value: Any) -> str:
    """A value as a Databricks SQL literal (times in UTC, the session's zone)."""
    value = utc_datetime(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"CAST('{value}' AS DOUBLE)"
    if isinstance(value, Decimal):
        scale = max(0, -int(value.as_tuple().exponent))
        return f"CAST('{value}' AS DECIMAL(38, {min(scale, 38)}))"
    if isinstance(value, datetime):  # zone-aware: in UTC by now; naive: the session's, UTC
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _backticks(qualified: str) -> str:
    """`"schema"."table"` as Databricks names it."""
    match = _QUALIFIED.match(qualified)
    if match is None:
        return qualified
    return ".".join(f"`{part.replace('``', '`')}`" for part in match.groups())


def _column(name: str) -> str:
    return name if _SIMPLE.fullmatch(name) else "`" + name.replace("`", "``") + "`"


def _spark_type(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_floating(kind):
        return "DOUBLE"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    return "STRING"
