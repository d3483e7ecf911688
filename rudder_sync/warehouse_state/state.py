"""A sync's state kept in the warehouse (`state_schema`), worked on through a scratch DuckDB.

The warehouse tables are the state: the committed snapshot, pending changes, rejected rows, the
delivery log and meta (the messageId salt among them). A step opens them under the sync's lock
(`store.StateStore.lock`: PostgreSQL's advisory lock, elsewhere a lock row) and loads what it
works on (pending changes, rejected rows; for a diff, the changed rows and their snapshot rows)
into a scratch DuckDB file that is deleted when the step ends. The
local code (`diff`, `delivery`, `events`) runs unchanged on the scratch copy, so events are the
same as in local mode by construction, and every change it makes to the state is repeated in the
warehouse inside the same transaction (`SyncState._mirror_*`): the warehouse commits first, and a
failure there rolls the scratch copy back.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import StateError
from ..jsonvalues import quote_ident
from ..state import (
    _SCHEMA,
    LOCK_WAIT_SECONDS,
    PRUNE_DELIVERY_LOG_SQL,
    SALT_KEY,
    SCHEMA_VERSION,
    SyncState,
    _configure,
    _hash_probe,
    new_salt,
    run,
)
from ..warehouses.base import WarehouseResource
from ..warehouses.sql import bind
from .sql import Tables, append_cursor_ddl, kept_rows_read_sql, kept_rows_sql
from .store import StateStore, open_store

# Ranges of consecutive change IDs written into a statement; more go through a temp table.
MAX_LITERAL_RANGES = 200
PENDING_COLUMNS = (
    "__rs_window, __rs_change_id, __rs_pk, __rs_change, __rs_hash, __rs_version, "
    "__rs_message_id, __rs_timestamp, __rs_user_id, __rs_anonymous_id, __rs_props, __rs_send, "
    "__rs_first_seen, __rs_attempts, __rs_last_error, __rs_origin"
)
REJECTED_COLUMNS = "__rs_window, __rs_pk, reason, __rs_hash, __rs_attempts, __rs_first_seen"
SNAPSHOT_COLUMNS = (
    "__rs_pk, __rs_hash, __rs_version, __rs_deleted, __rs_user_id, __rs_anonymous_id, "
    "__rs_props, __rs_committed_at"
)
# The scratch table of an append sync's keys and their cursor (`append.CURSOR_TABLE`).
APPEND_CURSOR = "append_cursor"
# What an append sync's steps read of its snapshot (`load_append_keys`), and the keys as loaded.
APPEND_SNAPSHOT_COLUMNS = "__rs_pk, __rs_version, __rs_deleted, __rs_committed_at"
LOADED_KEYS = "__rs_loaded_keys"
# What dropping a sync's state tables costs, for the messages that mention it.
DROP_COST = (
    "its pending changes and what it delivered are lost; run once after that with the diff's run "
    "config resync: true (sends every row again, under new messageIds) or reset_baseline: true "
    "(records the current model as delivered: the changes since the last delivery are never sent)"
)


class WarehouseSyncState(SyncState):
    """`SyncState` on a scratch copy, every change repeated in the warehouse's tables."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, store: StateStore, primary_key: str
    ) -> None:
        super().__init__(conn, store.where, store.sync_name)
        self.store = store
        self.primary_key = primary_key

    @property
    def tables(self) -> Tables:
        return self.store.tables

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Copy meta, pending changes and rejected rows into the scratch state."""
        run(self.conn, _SCHEMA)
        for key, value in self.store.get_meta().items():
            run(self.conn, "insert or replace into meta values (?, ?)", [key, value])
        self.load_table("pending", f"select {PENDING_COLUMNS} from {self.tables.pending}")
        self.load_table(
            "rejected_rows", f"select {REJECTED_COLUMNS} from {self.tables.rejected_rows}"
        )

    def all_meta(self) -> dict[str, str]:
        """The meta of the scratch copy (as loaded, plus what this step set)."""
        return dict(run(self.conn, "select key, value from meta"))

    def load_table(self, table: str, warehouse_sql: str) -> int:
        """Replace a scratch table with a warehouse query's rows (hashes stored there as text)."""
        rows = self.store.arrow(warehouse_sql)
        self.conn.register("__rs_loaded", rows)
        try:
            run(self.conn, f"delete from {table}")
            hashed = ""
            if "__rs_hash" in rows.schema.names:
                hashed = " replace (__rs_hash::ubigint as __rs_hash)"
            run(self.conn, f"insert into {table} by name select *{hashed} from __rs_loaded")
        finally:
            self.conn.unregister("__rs_loaded")
        return rows.num_rows

    # -- an append sync's state: few rows, loaded and written whole (`append.py`) ----------------
    def load_append_keys(self, cursor_type: str | None) -> int:
        """Load the keys an append sync keeps (its snapshot: the keys delivered within the
        lookback; `append_cursor`: those and the pending ones, with their cursor, cast from the
        warehouse's text to ``cursor_type``, the model's). Few rows: read once a step that
        needs them, the snapshot's keys only: no step rewrites a delivered key's row (the diff
        forgets keys, `push_append_state`), so the rest of it (the events' properties) stays in
        the warehouse. How many keys."""
        loaded = self.load_table(
            "snapshot",
            f"select {APPEND_SNAPSHOT_COLUMNS} from {self.tables.snapshot}",
        )
        run(self.conn, f"create or replace table {LOADED_KEYS} as select __rs_pk from snapshot")
        if cursor_type is None:  # no diff recorded a cursor yet
            return loaded
        self.ensure_append_cursor()
        rows = self.store.arrow(f"select __rs_pk, __rs_cursor from {self.tables.append_cursor}")
        self._load_append_cursor(rows, cursor_type)
        return loaded

    def load_append_cursors(self, cursor_type: str | None) -> int:
        """For a step that reads an append sync's kept keys and writes none back (its snapshot
        step: the stored cursor, the band's count): `append_cursor` (cast as in
        `load_append_keys`) and, in the same read, which of its keys were delivered, as the keys
        of the scratch `snapshot` (their rows stay in the warehouse). One read instead of
        `load_append_keys`' two, and none of the snapshot's other columns. How many keys."""
        t = self.tables
        if cursor_type is None or not self.store.exists(t.append_cursor):
            return 0  # no diff recorded a cursor yet: no key is kept
        rows = self.store.arrow(
            f"select a.__rs_pk, a.__rs_cursor, "
            f"case when s.__rs_pk is null then 0 else 1 end as __rs_delivered "
            f"from {t.append_cursor} a left join {t.snapshot} s on s.__rs_pk = a.__rs_pk"
        )
        self._load_append_cursor(rows, cursor_type)
        self.conn.register("__rs_loaded", rows)
        try:
            run(self.conn, "delete from snapshot")
            run(
                self.conn,
                "insert into snapshot (__rs_pk, __rs_version, __rs_deleted, __rs_committed_at) "
                "select __rs_pk, 0, false, now() from __rs_loaded where __rs_delivered = 1",
            )
        finally:
            self.conn.unregister("__rs_loaded")
        return rows.num_rows

    def _load_append_cursor(self, rows: pa.Table, cursor_type: str) -> None:
        """The scratch `append_cursor` from the warehouse's ``rows`` (`__rs_pk`, `__rs_cursor`
        as text), the cursor cast to ``cursor_type``."""
        self.conn.register("__rs_loaded", rows)
        try:
            run(
                self.conn,
                f"create or replace table {APPEND_CURSOR} "
                f"(__rs_pk varchar, __rs_cursor {cursor_type})",
            )
            run(
                self.conn,
                f"insert into {APPEND_CURSOR} select __rs_pk, __rs_cursor::{cursor_type} "
                "from __rs_loaded",
            )
        finally:
            self.conn.unregister("__rs_loaded")

    def ensure_append_cursor(self) -> None:
        """Create the warehouse's `append_cursor` table if missing (its own commit: DDL)."""
        if not self.store.exists(self.tables.append_cursor):
            with self.store.transaction():
                self.store.execute(append_cursor_ddl(self.tables, self.store.dialect))

    def push_append_state(self) -> None:
        """Make the warehouse's pending changes, rejected rows and `append_cursor` the scratch
        copy's, whole (an append sync's are small: the rows past the cursor and the keys within
        the lookback), and delete the snapshot's keys the scratch copy forgot (its rows are
        never rewritten: `load_append_keys` loads its keys only). Called inside `transaction()`
        before any other write in it, so that they commit with the meta the diff records, or
        not at all."""
        hashed = "select * replace (__rs_hash::varchar as __rs_hash) from (select {} from {})"
        queries = {
            "pending": hashed.format(PENDING_COLUMNS, "pending"),
            "rejected_rows": hashed.format(REJECTED_COLUMNS, "rejected_rows"),
        }
        if self.has_table(APPEND_CURSOR):
            self.ensure_append_cursor()
            queries["append_cursor"] = (
                f"select __rs_pk, __rs_cursor::varchar as __rs_cursor from {APPEND_CURSOR}"
            )
        forgotten = None
        if self.has_table(LOADED_KEYS):
            added = run(
                self.conn,
                f"select count(*) from (select __rs_pk from snapshot except "
                f"select __rs_pk from {LOADED_KEYS})",
            )[0][0]
            if added:  # a bug: the scratch snapshot holds keys only, it cannot write rows
                raise StateError(
                    f"sync '{self.sync_name}': {added} key(s) joined an append sync's snapshot "
                    "in a step that may only forget keys; nothing was written"
                )
            forgotten = self.conn.sql(
                f"select __rs_pk from {LOADED_KEYS} except select __rs_pk from snapshot"
            ).to_arrow_table()
        self.replace_tables(queries, forgotten)

    def replace_tables(self, queries: dict[str, str], forgotten: pa.Table | None = None) -> None:
        """Replace whole warehouse tables (by role) with scratch queries' rows, and delete the
        ``forgotten`` keys (`__rs_pk`) from the snapshot, in the open transaction: every table
        is loaded first (`ingest` must precede the transaction's first write), then emptied
        and filled."""
        loaded = {
            role: self.store.ingest(f"__rs_push_{role}", self.conn.sql(sql).to_arrow_table())
            for role, sql in queries.items()
        }
        statements = []
        if forgotten is not None and forgotten.num_rows:
            gone = self.store.ingest("__rs_push_forgotten", forgotten)
            statements.append(
                f"delete from {self.tables.snapshot} where __rs_pk in (select __rs_pk from {gone})"
            )
        # Every column of the warehouse table, NULL where the scratch copy has none (its
        # warehouse key and hash): Spark takes no INSERT that leaves a column out.
        for role, source in loaded.items():
            target = getattr(self.tables, role)
            have, want = set(self.store.columns(source)), self.store.columns(target)
            values = ", ".join(c if c in have else f"null as {c}" for c in want)
            statements += [
                f"delete from {target}",
                f"insert into {target} ({', '.join(want)}) select {values} from {source}",
            ]
        for statement in statements:
            self.store.execute(statement)

    def keep_rows(
        self, target: str, sql: str, params: dict[str, Any], timeout_seconds: float | None
    ) -> int:
        """`create table <target> as` a query (the model with bound parameters), in the
        warehouse, in one transaction: rows an append sync read, kept there between its
        snapshot and diff steps (none leaves here). How many rows."""
        store = self.store
        query, args = bind(sql, params, store.paramstyle)  # type: ignore[arg-type]
        create = kept_rows_sql(target, store.dialect, query)
        try:
            with store.transaction():
                for setting in store.model_settings(timeout_seconds):
                    store.execute(setting)
                store.execute(f"drop table if exists {target}")
                store.execute(create, args or None)  # type: ignore[arg-type]
        except store.error_types as exc:
            fix = "correct the model; it runs in the warehouse's own SQL"
            if store.is_timeout(exc):
                fix = "raise the warehouse's statement_timeout_seconds, or make the model faster"
            raise store.error("the model failed", exc, fix) from None
        return int(store.rows(f"select count(*) from {target}")[0][0])

    def fetch_rows(self, target: str, table: str) -> int | None:
        """Read a warehouse table kept by `keep_rows` into scratch ``table``; its rows (None:
        no such table)."""
        if not self.store.exists(target):
            return None
        with self.store.reader(kept_rows_read_sql(target, self.store.dialect)) as reader:
            return self.replace_table(table, reader)

    def ever_accepted(self) -> bool:
        rows = self.store.rows(
            f"select 1 from {self.tables.delivery_log} where status = 'delivered' limit 1"
        )
        return bool(rows)

    # -- mirroring (see SyncState.transaction) ----------------------------------------------------
    def _mirror_meta(self, key: str, value: str) -> None:
        self.store.set_meta(key, value)

    def _mirror_update(self, table: str, assignment: str, where: str) -> None:
        self.store.execute(f"update {getattr(self.tables, table)} set {assignment} where {where}")

    def _mirror_commit(self, run_id: str, status: str) -> None:
        where = self._change_filter("__rs_commit")
        t = self.tables
        self.store.commit_snapshot(where)
        if status != "committed":
            self.store.execute(
                f"""
                insert into {t.delivery_log}
                select $1, __rs_window, __rs_change_id, __rs_pk, __rs_change, __rs_message_id,
                       $2, null, __rs_attempts + 1, {self.store.now_sql}
                from {t.pending} where {where}
                """,
                [run_id, status],
            )
        self.store.execute(f"delete from {t.pending} where {where}")

    def _mirror_failures(self, run_id: str) -> None:
        # the attempt count as the scratch copy has it now, written rather than incremented:
        # a store that replays a commit (Databricks) counts the attempt once
        failed = self.store.ingest(
            "__rs_failed",
            self.conn.sql(
                "select f.change_id, f.error, p.__rs_attempts as attempts from __rs_failed f "
                "join pending p on p.__rs_change_id = f.change_id"
            ).to_arrow_table(),
        )
        t = self.tables
        self.store.execute(
            f"""
            update {t.pending} set __rs_attempts = f.attempts, __rs_last_error = f.error
            from {failed} f where {t.bare("pending")}.__rs_change_id = f.change_id
            """
        )
        self.store.execute(
            f"""
            insert into {t.delivery_log}
            select $1, p.__rs_window, p.__rs_change_id, p.__rs_pk, p.__rs_change,
                   p.__rs_message_id, 'rejected', f.error, p.__rs_attempts, {self.store.now_sql}
            from {t.pending} p join {failed} f on p.__rs_change_id = f.change_id
            """,
            [run_id],
        )

    def _mirror_prune(self, cutoff: datetime) -> int | None:
        t = self.tables
        sql = PRUNE_DELIVERY_LOG_SQL.format(
            log=t.delivery_log, pending=t.pending, rejected_rows=t.rejected_rows, cutoff="$1"
        )
        count = self.store.execute(sql, [cutoff])
        # Unknown where the commit is one later job (BigQuery: -1); the scratch copy's count is
        # reported then (0: it holds no delivery log).
        return count if count >= 0 else None

    def _mirror_end(self, commit: bool) -> None:
        if commit:
            self.store.commit()
            return
        # A connection that is gone cannot roll back (the server already did); its error
        # must not hide the one that ended the transaction.
        with suppress(*self.store.error_types):
            self.store.rollback()

    def _change_filter(self, relation: str) -> str:
        """SQL choosing, in the warehouse, the pending changes whose IDs ``relation`` holds:
        literal ranges of consecutive IDs where they are few, else a temp table."""
        ranges = run(
            self.conn,
            f"""
            select min(id), max(id) from (
                select __rs_change_id as id,
                       __rs_change_id - row_number() over (order by __rs_change_id) as run
                from {relation})
            group by run order by 1
            """,
        )
        if len(ranges) <= MAX_LITERAL_RANGES:
            parts = [f"__rs_change_id between {int(lo)} and {int(hi)}" for lo, hi in ranges]
            return "(" + (" or ".join(parts) or "false") + ")"
        ids = self.conn.sql(f"select __rs_change_id as id from {relation}").to_arrow_table()
        table = self.store.ingest("__rs_ids", ids)
        return f"__rs_change_id in (select id from {table})"

    # -- the diff's results ------------------------------------------------------------------------
    def push_diff(self) -> None:
        """Replace the warehouse's pending changes and rejected rows with the scratch diff's, and
        record the warehouse key and hash of the rows that left unchanged (one transaction).

        Keys and hashes come from the rows that left (`model_rows` keeps `__rs_wpk` and
        `__rs_whash`); a removed change keeps its snapshot row's key.
        """
        t = self.tables
        keys = (
            "(select __rs_pk, any_value(__rs_wpk) as __rs_wpk, any_value(__rs_whash) as __rs_whash "
            "from __rs_left group by all)"
        )
        run(self.conn, f"create or replace temp table __rs_left as {self._left_rows_sql()}")
        pending = self.store.ingest(
            "__rs_new_pending",
            self.conn.sql(
                f"select p.* replace (p.__rs_hash::varchar as __rs_hash), k.__rs_wpk, k.__rs_whash "
                f"from pending p left join {keys} k using (__rs_pk)"
            ).to_arrow_table(),
        )
        rejected = self.store.ingest(
            "__rs_new_rejected",
            self.conn.sql(
                f"select r.* replace (r.__rs_hash::varchar as __rs_hash), k.__rs_wpk "
                f"from rejected_rows r left join {keys} k using (__rs_pk)"
            ).to_arrow_table(),
        )
        fresh = self.store.ingest(
            "__rs_fresh",
            self.conn.sql(
                f"""
                select k.* from {keys} k join snapshot s using (__rs_pk)
                where not s.__rs_deleted
                  and __rs_pk not in (select __rs_pk from pending)
                  and __rs_pk not in (select __rs_pk from rejected_rows)
                """
            ).to_arrow_table(),
        )
        with self.store.transaction():
            self.store.execute(f"delete from {t.pending}")
            self.store.execute(
                f"""
                insert into {t.pending}
                select {_prefixed("n", PENDING_COLUMNS)},
                       coalesce(n.__rs_wpk, s.__rs_wpk), n.__rs_whash
                from {pending} n left join {t.snapshot} s on s.__rs_pk = n.__rs_pk
                """
            )
            self.store.execute(f"delete from {t.rejected_rows}")
            self.store.execute(
                f"insert into {t.rejected_rows} select {REJECTED_COLUMNS}, __rs_wpk from {rejected}"
            )
            self.store.refresh_snapshot_keys(fresh)
        run(self.conn, "drop table __rs_left")

    def _left_rows_sql(self) -> str:
        """The rows that left the warehouse: the key as the local diff renders it, and the
        warehouse's key and hash (none for time windows: they keep no snapshot)."""
        if not self.has_table("model_rows"):
            return (
                "select ''::varchar as __rs_pk, ''::varchar as __rs_wpk, "
                "''::varchar as __rs_whash where false"
            )
        pk = quote_ident(self.primary_key)
        return (
            f"select coalesce(cast({pk} as varchar), '(null)') as __rs_pk, __rs_wpk, __rs_whash "
            "from model_rows"
        )


@contextmanager
def open_warehouse_state(
    warehouse: WarehouseResource,
    sync_name: str,
    primary_key: str,
    dry_run: bool,
    lock_wait_seconds: float | None = None,
) -> Iterator[WarehouseSyncState]:
    """Lock the sync's state in the warehouse, create it if new, and load a scratch copy.

    A local state to move in is the backend's business (`backend`, `move.settle_local_state`),
    inside this context, so that a lost connection there is named as here."""
    schema = getattr(warehouse, "state_schema", None)
    assert schema is not None
    tables = Tables(schema, f"{sync_name}__dry_run" if dry_run else sync_name)
    store = open_store(warehouse, tables, sync_name)
    scratch = Path(tempfile.mkdtemp(prefix=f"rudder_sync-{sync_name}-"))
    conn: duckdb.DuckDBPyConnection | None = None
    try:
        store.lock(LOCK_WAIT_SECONDS if lock_wait_seconds is None else lock_wait_seconds)
        store.ensure_tables()
        conn = duckdb.connect(str(scratch / "scratch.duckdb"))
        _configure(conn)
        run(conn, f"set temp_directory = '{scratch / 'spill'}'")
        state = WarehouseSyncState(conn, store, primary_key)
        state.load()
        _ensure_meta(state)
        yield state
    except store.error_types as exc:
        if store.alive():
            raise  # a statement of ours failed: a bug, with its traceback
        raise store.error(
            "lost its connection to the warehouse that holds its state",
            exc,
            "run again once the warehouse is reachable; nothing is lost: the warehouse rolled "
            "back the unfinished transaction, and the changes it did not commit stay pending "
            "and are sent again under the same messageIds",
        ) from None
    finally:
        if conn is not None:
            conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
        store.close()


def _ensure_meta(state: WarehouseSyncState) -> None:
    """A new state gets its version, hash probe and messageId salt; an old one is checked."""
    meta = state.all_meta()
    probe = _hash_probe(state.conn)
    if not meta:
        with state.transaction():
            state.set_meta("schema_version", str(SCHEMA_VERSION))
            state.set_meta("hash_probe", probe)
            state.set_meta(SALT_KEY, new_salt())
        return
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise StateError(
            f"sync '{state.sync_name}': state in {state.path} has schema version "
            f"{meta.get('schema_version')}, this rudder_sync reads version {SCHEMA_VERSION}. "
            "Fix: use the rudder_sync version that wrote it."
        )
    if meta.get("hash_probe") != probe:
        raise StateError(
            f"sync '{state.sync_name}': state in {state.path} was written by a DuckDB whose row "
            f"hash differs from this one ({duckdb.__version__}). Fix: use the DuckDB version "
            f"that wrote it; dropping the sync's tables instead means starting over: {DROP_COST}."
        )


def _prefixed(alias: str, columns: str) -> str:
    """`a, b` as `alias.a, alias.b`."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))
