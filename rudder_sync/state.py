"""Per-sync state in its own DuckDB file: the committed snapshot, pending changes, delivery log.

The state is the only memory a sync has between runs (a `dagster job execute` without DAGSTER_HOME
forgets everything else), so it lives in `<state folder>/<sync>.duckdb`, one file per sync so that
syncs run in parallel. A dry run keeps its own `<sync>.dry_run.duckdb`: what a dry run "delivered"
never counts as delivered to a real destination.

Tables (system columns start with `__rs_`):
- `snapshot`: one row per primary key ever committed: hash of the event content, a version that
  grows with each committed change, a tombstone flag for removed keys (so a key that comes back gets
  a new messageId), and the rendered IDs/properties that a `removed` event needs.
- `model_rows`: the latest model result (the `<sync>/snapshot` asset).
- `pending`: the changes of the latest diff that are not committed yet, each with a fixed
  messageId and timestamp so a re-send is the same event, its failed attempts (a change that
  failed `max_attempts` times is quarantined) and its origin ('resync' when a resync asked for
  it, 'resync_started' once its delivery began, so a later run finishes it).
- `rejected_rows`: rows of the latest diff that cannot be sent (null/duplicate key, no ID), with
  how many diffs in a row found them so, for the same content.
  Every statement on `pending` and `rejected_rows` is a `SyncState` method (one window's rows
  chosen by `in_window`): the diff rebuilds them, delivery reads, commits or fails them.
- `delivery_log`: one row per event per attempt.
- `committed_ranges`: ranges of change IDs that the events step committed while it sent
  (`commit_changes(defer=True)`): their events are delivered and logged, and the snapshot takes
  them, pending drops them, in one statement each at `settle_commits` (the end of the delivery,
  or the next open of the state after a crash). Empty between runs.
- `meta`: schema version, initialised flag, destination (the data plane URL, recorded with the
  first accepted commit, so that a URL which never accepted anything binds nothing), and
  `message_id_salt`: a random value created with the state that every deterministic messageId
  of an unpartitioned sync includes, so that two deployments of one sync, or a state deleted and
  rebuilt, never reuse an ID that RudderStack has seen (it drops repeats for days);
  `sync_name` and `sync_shape` (a hash of what determines its events: type, key, IDs, mapping),
  so that the state of another sync is refused rather than diffed against (`check_identity`).

Commits are DuckDB transactions, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from .errors import StateError
from .jsonvalues import quote_ident, quote_literal

# 2: the snapshot's row hash is DuckDB's hash() as UBIGINT (1 was an md5 as UHUGEINT).
# 3: meta message_id_salt; pending.__rs_origin; rejected_rows' hash, attempts and first sighting.
SCHEMA_VERSION = 3
LOCK_WAIT_SECONDS = 30.0
SALT_KEY = "message_id_salt"
# A silent first run's baseline rows, staged between the diff and the events step
# (`SyncState.stage_baseline`).
BASELINE_TABLE = "baseline_rows"
MOVED_KEY = "moved_to"  # meta of a state moved to (or from) the warehouse: where it went
SYNC_NAME_KEY = "sync_name"  # meta: the sync this state belongs to
SYNC_SHAPE_KEY = "sync_shape"  # meta: a hash of that sync's type, key, IDs and mapping
MEMORY_LIMIT_ENV_VAR = "RUDDER_SYNC_DUCKDB_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "1GB"
# What delivery reads of a pending change to build its event.
# What `events.build_event` needs of a change besides its messageId, selected only for the rows
# whose event DuckDB leaves to Python (`events.body_sql` is NULL for them).
EVENT_FALLBACK_COLUMNS = (
    "__rs_change",
    "__rs_timestamp",
    "__rs_user_id",
    "__rs_anonymous_id",
    "__rs_props",
)
_EVENT_COLUMNS = (
    "__rs_change_id, __rs_change, __rs_message_id, __rs_timestamp, "
    "__rs_user_id, __rs_anonymous_id, __rs_props"
)
_HASH_PROBE_SQL = (
    "select hash(42::integer, 'rudder_sync', 1.5::double, date '2024-01-01', "
    "timestamptz '2024-01-01 00:00:00+00', null::varchar, [1, 2], {'a': true})"
)

_SNAPSHOT_COLUMNS = """(
    __rs_pk varchar not null,
    __rs_hash ubigint,
    __rs_version bigint not null,
    __rs_deleted boolean not null,
    __rs_user_id varchar,
    __rs_anonymous_id varchar,
    __rs_props varchar,
    __rs_committed_at timestamptz not null
)"""
_SCHEMA = f"""
create table if not exists meta (key varchar primary key, value varchar);
create table if not exists snapshot {_SNAPSHOT_COLUMNS};
create table if not exists pending (
    __rs_window varchar,
    __rs_change_id bigint,
    __rs_pk varchar,
    __rs_change varchar,
    __rs_hash ubigint,
    __rs_version bigint,
    __rs_message_id varchar,
    __rs_timestamp varchar,
    __rs_user_id varchar,
    __rs_anonymous_id varchar,
    __rs_props varchar,
    __rs_send boolean,
    __rs_first_seen timestamptz,
    __rs_attempts integer,
    __rs_last_error varchar,
    __rs_origin varchar
);
create table if not exists rejected_rows (
    __rs_window varchar,
    __rs_pk varchar,
    reason varchar,
    __rs_hash ubigint,
    __rs_attempts integer,
    __rs_first_seen timestamptz
);
create table if not exists delivery_log (
    run_id varchar,
    window_key varchar,
    change_id bigint,
    pk varchar,
    change varchar,
    message_id varchar,
    status varchar,
    error varchar,
    attempt integer,
    logged_at timestamptz
);
create table if not exists committed_ranges (
    first_change_id bigint not null,
    last_change_id bigint not null
);
"""
_COMMITTED_RANGES_SCHEMA = _SCHEMA[_SCHEMA.index("create table if not exists committed_ranges") :]


def run(conn: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> list[tuple]:
    """Execute a statement and drain its result.

    DuckDB refuses the next statement, or silently aborts the transaction at it, while a result is
    left unfinished on the connection.
    """
    result = conn.execute(sql, params) if params is not None else conn.execute(sql)
    return result.fetchall()


class SyncState:
    """An open connection to one sync's state file."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: Path | str, sync_name: str) -> None:
        self.conn = conn
        self.path = path
        self.sync_name = sync_name
        self.catalog: str = run(conn, "select current_database()")[0][0]
        # What opening did that the run should log (a local state moved into the warehouse).
        self.notice: str | None = None

    # -- meta -----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = run(self.conn, "select value from meta where key = ?", [key])
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        run(self.conn, "insert or replace into meta values (?, ?)", [key, value])
        self._mirror_meta(key, value)

    @property
    def initialized(self) -> bool:
        """Whether a first run has committed its baseline."""
        return self.get_meta("initialized") == "true"

    @property
    def mirrors_commits(self) -> bool:
        """Whether commits are repeated elsewhere (`_mirror_commit`: the warehouse's state)."""
        return type(self)._mirror_commit is not SyncState._mirror_commit

    def stage_baseline(self, rows_sql: str) -> int:
        """A first run's silent baseline rows, staged in `BASELINE_TABLE` for the events step's
        `commit_silent_changes` (in its transaction, which marks the state initialised); how many.

        ``rows_sql``: `__rs_pk`, `__rs_hash`, `__rs_version`, `__rs_user_id`,
        `__rs_anonymous_id`, `__rs_props`. Unlike pending rows, these are not numbered (no sort
        of the whole model, which spilled tens of GB at 100M rows) and carry no messageId; the
        table has the snapshot's columns, so that the commit can take it as the snapshot
        instead of copying it (its `__rs_committed_at` is then when the diff staged it)."""
        # Qualified: the model's names may resolve in an attached warehouse meanwhile.
        table = f"{quote_ident(self.catalog)}.main.{BASELINE_TABLE}"
        run(self.conn, f"create or replace table {table} {_SNAPSHOT_COLUMNS}")
        inserted = run(
            self.conn,
            f"""
            insert into {table}
            select __rs_pk, __rs_hash, __rs_version, false, __rs_user_id, __rs_anonymous_id,
                   __rs_props, now()
            from ({rows_sql})
            """,
        )
        return int(inserted[0][0])

    def drop_staged_baseline(self) -> None:
        """A diff that is not a silent first run leaves no staged baseline behind (one from a
        first run that stopped before its events step, say, with the config changed since)."""
        run(self.conn, f"drop table if exists {BASELINE_TABLE}")

    def baseline_rows(self) -> int:
        """Rows of a staged baseline (see `stage_baseline`) not yet committed."""
        return self.count(BASELINE_TABLE) if self.has_table(BASELINE_TABLE) else 0

    def check_destination(self, destination: str) -> None:
        """Refuse to mix deliveries to two destinations in one state (that would skip rows).

        Only a destination that accepted something binds the state (it is recorded with the
        first accepted commit), so a mistyped URL that never took a request cannot lock it.
        """
        recorded = self.get_meta("destination")
        if recorded is None or recorded == destination or not self.ever_accepted():
            return
        raise StateError(
            f"sync '{self.sync_name}': the state in {self.path} was delivered to {recorded}, "
            f"but this run sends to {destination}. Fix: if both URLs reach the same data plane "
            "(a custom domain, a proxy), run once with the run config ops: "
            f"{{{self.sync_name}__events: {{config: {{move_destination: true}}}}}} to record "
            "the new URL without resending; to resend everything to a new data plane, delete "
            "that state file (or point 'state' at a new folder); to keep syncing to the old "
            "one, restore RUDDERSTACK_DATA_PLANE_URL."
        )

    def ever_accepted(self) -> bool:
        """Whether the gateway ever accepted an event of this state (its delivery log says)."""
        rows = run(self.conn, "select 1 from delivery_log where status = 'delivered' limit 1")
        return bool(rows)

    def move_destination(self, destination: str) -> str | None:
        """Record ``destination`` as where this state is delivered; the one it replaces."""
        recorded = self.get_meta("destination")
        with self.transaction():
            self.set_meta("destination", destination)
        return recorded

    def check_identity(self, shape: str, adopt_from: str | None = None) -> str | None:
        """Refuse the state of another sync (a file copied or moved over this one's); record this
        sync's name and ``shape`` when the state has none yet (a new one, or one written before
        they were recorded). ``adopt_from``: run config adopt_state_of, a sync this one was
        renamed from, whose state it takes over. Returns what was done, for the log.

        A shape that changed under the same name is a config edit of this sync (its content
        hash makes the rows changes, which the change guard weighs): it is recorded, not refused.
        """
        name, recorded_shape = self.get_meta(SYNC_NAME_KEY), self.get_meta(SYNC_SHAPE_KEY)
        if name not in (None, self.sync_name, adopt_from):
            kin = "the same" if recorded_shape == shape else "another"
            raise StateError(
                f"sync '{self.sync_name}': the state in {self.path} belongs to sync '{name}' "
                f"({kin} type, key and mapping), not to '{self.sync_name}': diffing against it "
                f"would send wrong events. Fix: if '{self.sync_name}' is '{name}' renamed, run "
                f"once with the run config ops: {{{self.sync_name}__diff: {{config: "
                f"{{adopt_state_of: {name}}}}}}}; otherwise put back the state of "
                f"'{self.sync_name}' (or move this one away and run with resync or "
                "reset_baseline)."
            )
        if adopt_from is not None and name is None and not self.initialized:
            raise StateError(
                f"sync '{self.sync_name}': run config adopt_state_of is '{adopt_from}', but "
                f"{self.path} holds a new state, not that of '{adopt_from}'. Fix: move the state "
                f"of '{adopt_from}' there first (local: the file <state>/{adopt_from}.duckdb; "
                f"state_schema: its tables {adopt_from}__*), then run again."
            )
        if name == self.sync_name and recorded_shape == shape:
            return None
        with self.transaction():
            self.set_meta(SYNC_NAME_KEY, self.sync_name)
            self.set_meta(SYNC_SHAPE_KEY, shape)
        if name is not None and name != self.sync_name:
            return f"adopted the state of sync '{name}' (run config adopt_state_of)"
        return None

    def unfinished_resync(self, max_attempts: int | None) -> int:
        """How many changes of a resync whose delivery began are still to be delivered.

        A new resync must wait for them: it would send the rows the earlier one already
        delivered again, under new messageIds that RudderStack cannot deduplicate. Quarantined
        ones do not hold it up (they were never accepted)."""
        return self.count(
            "pending",
            f"__rs_origin = 'resync_started' and {in_window(None)} "
            f"and not {_quarantined_sql(max_attempts)}",
        )

    # -- model rows -----------------------------------------------------------------------------
    def replace_model_rows(self, reader: pa.RecordBatchReader) -> int:
        """Store the model's result, streamed from the warehouse, as `model_rows`."""
        return self.replace_table("model_rows", reader)

    def replace_table(self, table: str, reader: pa.RecordBatchReader) -> int:
        """Store a model result streamed from the warehouse (Arrow batches, never all in memory).

        Written uncompressed: the copy lives until the next run, and DuckDB's compression cost
        more CPU than reading the rows from the warehouse (bench/RESULTS.md, "warehouse")."""
        self.conn.register("__rs_model_reader", reader)
        run(self.conn, "set force_compression = 'uncompressed'")
        try:
            with self.transaction():
                run(
                    self.conn,
                    f'create or replace table "{table}" as select * from __rs_model_reader',
                )
        finally:
            run(self.conn, "reset force_compression")
            self.conn.unregister("__rs_model_reader")
        return self.count(f'"{table}"')

    def count(self, table: str, where: str = "true") -> int:
        rows = run(self.conn, f"select count(*) from {table} where {where}")
        return int(rows[0][0])

    def has_table(self, table: str) -> bool:
        rows = run(
            self.conn,
            "select count(*) from duckdb_tables() where table_name = ? and database_name = "
            "current_database()",
            [table],
        )
        return bool(rows[0][0])

    # -- commits --------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements inside (and their mirror, see below) commit together or not at all."""
        run(self.conn, "begin transaction")
        try:
            yield
            self._mirror_end(commit=True)
        except BaseException:
            # A failed rollback (a write that failed for a full disk may have ended the
            # transaction) must not hide the error that caused it.
            with suppress(duckdb.Error):
                run(self.conn, "rollback")
            self._mirror_end(commit=False)
            raise
        run(self.conn, "commit")

    # -- a state kept elsewhere (`warehouse_state`) repeats each change there --------------------
    # Called inside `transaction()`; the mirror commits just before this state does, so a failure
    # to record a change there rolls it back here too.
    def _mirror_meta(self, key: str, value: str) -> None:
        """`meta` took ``key`` = ``value``."""

    def _mirror_update(self, table: str, assignment: str, where: str) -> None:
        """`update <table> set <assignment> where <where>` ran (pending or rejected_rows)."""

    def _mirror_commit(self, run_id: str, status: str) -> None:
        """The changes in temp table `__rs_commit` are being committed as ``status``."""

    def _mirror_failures(self, run_id: str) -> None:
        """The changes in temp table `__rs_failed` (change_id, error) failed an attempt."""

    def _mirror_end(self, commit: bool) -> None:
        """The transaction ends: commit (or roll back) what was mirrored."""

    def _mirror_prune(self, cutoff: datetime) -> int | None:
        """`prune_delivery_log` ran with ``cutoff``; the rows it removed there (None: no mirror)."""
        return None

    def prune_delivery_log(self, retention: timedelta | None, now: datetime | None = None) -> int:
        """Delete the delivery log's rows older than ``retention`` (None keeps them all), except
        those of a key that still has a pending (rejected, quarantined) change or a rejected row:
        their history stays while they exist. How many rows went.

        One DELETE on `logged_at`: rows are appended in time order, so the old ones fill whole
        row groups that DuckDB's min/max skip (and reclaims); the key checks are anti-joins
        against the small pending and rejected tables.
        """
        if retention is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - retention
        with self.transaction():
            deleted = run(self.conn, PRUNE_SQL, [cutoff])
            mirrored = self._mirror_prune(cutoff)
        return int(deleted[0][0]) if mirrored is None else mirrored

    def commit_changes(
        self,
        change_ids: Sequence[int] | np.ndarray,
        run_id: str,
        status: str,
        destination: str | None = None,
        defer: bool = False,
    ) -> int:
        """Move accepted changes from `pending` into `snapshot`, logging them as `status`.

        ``destination``, where they were accepted, becomes the state's destination in the same
        transaction.

        ``defer`` (the events step, which commits every few thousand events while it sends): the
        transaction logs the changes and records their IDs in `committed_ranges`, and leaves the
        rows where they are; `settle_commits` moves them all into the snapshot at the end. Each
        commit then writes only its log rows, instead of rewriting snapshot and pending rows
        (and DuckDB's checkpoints of them) every group: a first run of 200,000 events spent more
        time in its commits than in sending (bench/RESULTS.md, "Initial sync"). A state that
        repeats its commits elsewhere (`_mirror_commit`: in the warehouse) commits at once.
        """
        if not len(change_ids):
            return 0
        if defer and not self.mirrors_commits:
            return self._commit_ranges(change_ids, run_id, status, destination)
        where, params = _change_ids_filter(change_ids)
        return self._commit(where, params, run_id, status, destination=destination)

    def _commit_ranges(
        self,
        change_ids: Sequence[int] | np.ndarray,
        run_id: str,
        status: str,
        destination: str | None,
    ) -> int:
        """One transaction: the delivery log records the changes, `committed_ranges` their IDs."""
        firsts, lasts = _id_runs(change_ids)
        where, params = _change_ids_filter(change_ids)
        with self.transaction():
            logged = run(
                self.conn,
                f"""
                insert into delivery_log
                select ?, __rs_window, __rs_change_id, __rs_pk, __rs_change, __rs_message_id, ?,
                       null, __rs_attempts + 1, now()
                from pending where {where}
                """,
                [run_id, status, *params],
            )
            run(
                self.conn,
                "insert into committed_ranges select unnest(?::bigint[]), unnest(?::bigint[])",
                [firsts.tolist(), lasts.tolist()],
            )
            count = int(logged[0][0])
            if destination is not None and count:
                self.set_meta("destination", destination)
        return count

    def settle_commits(self) -> int:
        """Move the changes of `committed_ranges` (see `commit_changes`) into the snapshot and out
        of pending, in one transaction; how many. A no-op when there are none.

        Run at the end of a delivery and whenever the state is opened, so that a run killed
        before it settles nothing but a diff, a lookup of pending changes or a resync check
        never sees a committed change as pending: the next run settles it first."""
        ranges = run(
            self.conn,
            "select first_change_id, last_change_id from committed_ranges order by 1",
        )
        if not ranges:
            return 0
        if len(ranges) <= MAX_COMMIT_RANGES:
            where = "(" + " or ".join("__rs_change_id between ? and ?" for _ in ranges) + ")"
            params: list[object] = [int(bound) for pair in ranges for bound in pair]
        else:
            where = (
                "__rs_change_id in (select p.__rs_change_id from pending p join committed_ranges "
                "r on p.__rs_change_id between r.first_change_id and r.last_change_id)"
            )
            params = []
        return self._commit(where, params, run_id="", status="committed", settles_ranges=True)

    def commit_silent_changes(self, window: str | None = None) -> int:
        """Commit the changes that send no event (a first-run baseline, an unsent change type).

        The same transaction marks the state initialised, so a crash can never turn an unsent
        baseline into `added` events at the next run (and a baseline reset is recorded whole or
        not at all).
        """
        return self._commit(
            f"not __rs_send and {in_window(window)}",
            [],
            run_id="",
            status="committed",
            initialize=window is None,
        )

    def _commit(
        self,
        where: str,
        params: list[object],
        run_id: str,
        status: str,
        initialize: bool = False,
        destination: str | None = None,
        settles_ranges: bool = False,
    ) -> int:
        """One transaction: the snapshot takes the changes, pending drops them, the log records.

        Changes of a time window never touch the snapshot: windows diff against each other.
        ``settles_ranges``: they are those of `committed_ranges` (logged already), emptied too.
        """
        with self.transaction():
            staged = self._commit_staged_baseline() if initialize else 0
            # Only the IDs and keys are copied: the rows themselves are read where they are.
            run(
                self.conn,
                "create or replace temp table __rs_commit as "
                f"select __rs_change_id, __rs_pk, __rs_window from pending where {where}",
                params,
            )
            if where == _ID_LIST_FILTER or settles_ranges:  # matched once, not again
                where, params = "__rs_change_id in (select __rs_change_id from __rs_commit)", []
            run(
                self.conn,
                "delete from snapshot where __rs_pk in "
                "(select __rs_pk from __rs_commit where __rs_window is null)",
            )
            run(
                self.conn,
                f"""
                insert into snapshot
                select __rs_pk, __rs_hash, __rs_version, __rs_change = 'removed',
                       __rs_user_id, __rs_anonymous_id, __rs_props, now()
                from pending where ({where}) and __rs_window is null
                """,
                params,
            )
            if status != "committed":
                run(
                    self.conn,
                    f"""
                    insert into delivery_log
                    select ?, __rs_window, __rs_change_id, __rs_pk, __rs_change,
                           __rs_message_id, ?, null,
                           __rs_attempts + 1, now()
                    from pending where {where}
                    """,
                    [run_id, status, *params],
                )
            run(self.conn, f"delete from pending where {where}", params)
            if settles_ranges:
                run(self.conn, "delete from committed_ranges")
            self._mirror_commit(run_id, status)
            count = self.count("__rs_commit")
            run(self.conn, "drop table __rs_commit")
            count += staged
            if initialize:
                self.set_meta("initialized", "true")
            if destination is not None and count:
                self.set_meta("destination", destination)
        return count

    def _commit_staged_baseline(self) -> int:
        """Inside the transaction that initialises the state, before its pending rows move: the
        staged baseline (see `stage_baseline`) becomes the snapshot; how many rows it held.

        The snapshot is empty until a first commit, so the staged table is renamed into its
        place (2M rows: 2.5 s of copying saved); a snapshot with rows, which no run leaves,
        takes the staged rows by key all the same."""
        staged = self.baseline_rows()
        if not staged:
            self.drop_staged_baseline()
            return 0
        if self.count("snapshot"):
            run(
                self.conn,
                f"""
                delete from snapshot where __rs_pk in (select __rs_pk from {BASELINE_TABLE});
                insert into snapshot select * from {BASELINE_TABLE};
                drop table {BASELINE_TABLE}
                """,
            )
        else:
            run(self.conn, f"drop table snapshot; alter table {BASELINE_TABLE} rename to snapshot")
        return staged

    def start_resync(self, window: str | None = None) -> None:
        """Mark a resync's pending rows as started: from now on, later diffs finish them, and a
        new resync waits until they are delivered (`unfinished_resync`)."""
        with self.transaction():
            self._update(
                "pending",
                "__rs_origin = 'resync_started'",
                f"__rs_origin = 'resync' and {in_window(window)}",
            )

    # -- quarantine -----------------------------------------------------------------------------
    def quarantined(self, max_attempts: int | None, limit: int) -> tuple[int, list[dict]]:
        """Changes and rows that failed ``max_attempts`` times: how many, and the first ``limit``.

        Gateway rejections are pending changes that are no longer sent; rows that failed
        validation that often are listed too (they were never sendable).
        """
        if max_attempts is None:
            return 0, []
        query = f"""
            select __rs_window, __rs_pk, __rs_change, coalesce(__rs_last_error, ''),
                   __rs_attempts, __rs_first_seen, 'gateway' as source
            from pending where {_quarantined_sql(max_attempts)}
            union all
            select __rs_window, __rs_pk, null, reason, __rs_attempts, __rs_first_seen,
                   'validation'
            from rejected_rows where __rs_attempts >= {int(max_attempts)}
        """
        count = int(run(self.conn, f"select count(*) from ({query})")[0][0])
        rows = run(self.conn, f"{query} order by 6, 1, 2 limit {int(limit)}")
        sample = [
            {
                **({"window": window} if window else {}),
                "key": pk,
                **({"change_type": change} if change else {}),
                "reason": reason,
                "attempts": attempts,
                "first_seen": first_seen.isoformat() if first_seen else None,
                "source": source,
            }
            for window, pk, change, reason, attempts, first_seen, source in rows
        ]
        return count, sample

    def readmit_quarantined(self, max_attempts: int | None) -> int:
        """Give quarantined changes ``max_attempts`` new attempts (run config retry_quarantined)."""
        if max_attempts is None:
            return 0
        with self.transaction():
            count = self.count("pending", _quarantined_sql(max_attempts))
            self._update("pending", "__rs_attempts = 0", _quarantined_sql(max_attempts))
            count += self.count("rejected_rows", f"__rs_attempts >= {int(max_attempts)}")
            self._update(
                "rejected_rows", "__rs_attempts = 0", f"__rs_attempts >= {int(max_attempts)}"
            )
        return count

    def _update(self, table: str, assignment: str, where: str) -> None:
        """One `update` of pending or rejected_rows, here and mirrored (inside a transaction)."""
        run(self.conn, f"update {table} set {assignment} where {where}")
        self._mirror_update(table, assignment, where)

    def record_failures(self, failures: Sequence[tuple[int, str]], run_id: str) -> None:
        """Keep failed changes pending, counting the attempt and remembering the error."""
        if not failures:
            return
        ids = [change_id for change_id, _ in failures]
        errors = [error for _, error in failures]
        with self.transaction():
            run(
                self.conn,
                "create or replace temp table __rs_failed as "
                "select unnest(?::bigint[]) as change_id, unnest(?::varchar[]) as error",
                [ids, errors],
            )
            run(
                self.conn,
                """
                update pending set __rs_attempts = __rs_attempts + 1, __rs_last_error = f.error
                from __rs_failed f where pending.__rs_change_id = f.change_id
                """,
            )
            run(
                self.conn,
                """
                insert into delivery_log
                select ?, p.__rs_window, p.__rs_change_id, p.__rs_pk, p.__rs_change,
                       p.__rs_message_id,
                       'rejected', f.error, p.__rs_attempts, now()
                from pending p join __rs_failed f on p.__rs_change_id = f.change_id
                """,
                [run_id],
            )
            self._mirror_failures(run_id)
            run(self.conn, "drop table __rs_failed")

    # -- a diff rebuilds one window's pending changes and rejected rows --------------------------
    # Called inside the diff's transaction: the two tables change together or not at all.
    def replace_rejected_rows(self, window: str | None, rows_sql: str, now: datetime) -> None:
        """One window's rejected rows become ``rows_sql``'s (`__rs_pk`, `__rs_hash`, `reason`).

        A row that fails validation again, unchanged, counts one more attempt (quarantine).
        """
        scope = in_window(window)
        run(
            self.conn,
            f"""
            create or replace temp table __rs_rejected as
            select ?::varchar as __rs_window, n.*, coalesce(o.attempts, 0) + 1 as __rs_attempts,
                   coalesce(o.first_seen, ?::timestamptz) as __rs_first_seen
            from ({rows_sql}) n
            left join (
                select __rs_pk, __rs_hash, reason, max(__rs_attempts) as attempts,
                       min(__rs_first_seen) as first_seen
                from rejected_rows where {scope} group by all
            ) o on o.__rs_pk = n.__rs_pk and o.reason = n.reason
               and o.__rs_hash is not distinct from n.__rs_hash
            """,
            [window, now],
        )
        run(self.conn, f"delete from rejected_rows where {scope}")
        run(self.conn, "insert into rejected_rows by name select * from __rs_rejected")
        run(self.conn, "drop table __rs_rejected")

    def replace_pending(
        self,
        window: str | None,
        changes_sql: str,
        now: datetime,
        keep_started_resync_of: str | None = None,
    ) -> None:
        """One window's pending changes become ``changes_sql``'s.

        Its columns: `__rs_pk`, `__rs_change`, `__rs_hash`, `__rs_version`, `__rs_send`, a new
        change's `__rs_message_id` and `__rs_timestamp`, `__rs_user_id`, `__rs_anonymous_id`,
        `__rs_props`, `__rs_origin`. A change still pending from an earlier diff (same key, change
        type, hash and version) keeps its messageId, timestamp, first sighting, attempts and last
        error, so a re-send is the same event. Change IDs continue after other windows'.

        ``keep_started_resync_of``: a relation of the current valid rows (`__rs_pk`,
        `__rs_hash`); the undelivered changes of a resync whose delivery began are kept while
        their row is among them unchanged (see `_keep_started_resync`).
        """
        scope = in_window(window)
        new_pending = f"""
            select ?::varchar as __rs_window,
                   (select coalesce(max(__rs_change_id), 0) from pending where not ({scope}))
                   + row_number() over (order by c.__rs_change, c.__rs_pk) as __rs_change_id,
                   c.__rs_pk, c.__rs_change, c.__rs_hash, c.__rs_version,
                   case when c.__rs_send then coalesce(o.__rs_message_id, c.__rs_message_id) end
                       as __rs_message_id,
                   case when c.__rs_send then coalesce(o.__rs_timestamp, c.__rs_timestamp) end
                       as __rs_timestamp,
                   c.__rs_user_id, c.__rs_anonymous_id, c.__rs_props, c.__rs_send,
                   coalesce(o.__rs_first_seen, ?::timestamptz) as __rs_first_seen,
                   coalesce(o.__rs_attempts, 0) as __rs_attempts,
                   o.__rs_last_error, c.__rs_origin
            from ({changes_sql}) c
            left join (select * from pending where {scope}) o
              on o.__rs_pk = c.__rs_pk and o.__rs_change = c.__rs_change
             and o.__rs_hash is not distinct from c.__rs_hash
             and o.__rs_version = c.__rs_version
        """
        if not run(self.conn, f"select exists (select 1 from pending where {scope})")[0][0]:
            # Nothing pending here (a first run, or the last run delivered all): no messageId to
            # keep, nothing to delete or carry on, so the rows are written once, not staged.
            run(self.conn, f"insert into pending by name {new_pending}", [window, now])
            return
        run(
            self.conn,
            f"create or replace temp table __rs_new_pending as {new_pending}",
            [window, now],
        )
        if keep_started_resync_of is not None:
            self._keep_started_resync(keep_started_resync_of)
        run(self.conn, f"delete from pending where {scope}")
        run(self.conn, "insert into pending by name select * from __rs_new_pending")
        run(self.conn, "drop table __rs_new_pending")

    def _keep_started_resync(self, current_rows: str) -> None:
        """Keep the undelivered rows of a resync whose delivery began, while their row is unchanged.

        A normal diff sees no change in them (their content equals the snapshot's), so without
        this a resync cut short by a failure would silently never finish. A row that changed since
        gets its own, newer change instead; a row gone or now unsendable is dropped.
        """
        run(
            self.conn,
            f"""
            insert into __rs_new_pending by name
            select o.* replace (
                (select coalesce(max(__rs_change_id), 0) from __rs_new_pending)
                + row_number() over (order by o.__rs_change_id) as __rs_change_id)
            from pending o
            join {current_rows} c on c.__rs_pk = o.__rs_pk and c.__rs_hash = o.__rs_hash
            where o.__rs_window is null and o.__rs_origin = 'resync_started'
              and o.__rs_pk not in (select __rs_pk from __rs_new_pending)
            """,
        )

    # -- reading pending changes and rejected rows ----------------------------------------------
    def change_counts(
        self,
        window: str | None,
        max_attempts: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """One window's pending changes (of these primary ``keys`` only, if given) by change
        type: (all, to send); quarantined ones (failed ``max_attempts`` times) are not sent."""
        sending = f"__rs_send and not {_quarantined_sql(max_attempts)}"
        rows = run(
            self.conn,
            f"select __rs_change, count(*), count(*) filter (where {sending}) from pending "
            f"where {in_window(window)} and {_keys_sql(keys)} group by 1",
        )
        return {change: (int(total), int(sent)) for change, total, sent in rows}

    def rejected(self, window: str | None, limit: int) -> tuple[int, list[tuple[str, str]]]:
        """One window's rejected rows: how many, and the first ``limit`` (key, reason) by key."""
        scope = in_window(window)
        count = self.count("rejected_rows", scope)
        sample = run(
            self.conn,
            f"select __rs_pk, reason from rejected_rows where {scope} order by 1 "
            f"limit {int(limit)}",
        )
        return count, [(str(pk), str(reason)) for pk, reason in sample]

    @contextmanager
    def sendable_changes(
        self,
        window: str | None,
        max_attempts: int | None,
        batch_rows: int,
        body_sql: str,
        fallback: bool = False,
        keys: Sequence[str] | None = None,
    ) -> Iterator[Iterator[pa.RecordBatch]]:
        """The changes of one window that send an event, in change order, in Arrow batches of
        ID, messageId, ``body_sql`` as `__rs_body` and (``fallback``) `EVENT_FALLBACK_COLUMNS`
        where it is NULL. Quarantined ones are left out; with ``keys``, those of other rows too.

        Read in chunks of SENDABLE_CHUNK_ROWS consecutive changes (the first one batch long),
        each sorted on its own, so DuckDB sorts one chunk of rendered events at a time and the
        first events leave before the last are rendered: one ORDER BY over 10M events took 14 s
        before its first batch and twice the CPU (1M: 0.76 s against 0.27 s, the same CPU). On a
        cursor of its own, so the caller can commit on the state's connection while it reads.
        """
        sendable = _sendable_sql(window, max_attempts, keys)
        columns = "".join(
            f", case when __rs_body is null then {c} end as {c}"
            for c in (EVENT_FALLBACK_COLUMNS if fallback else ())
        )

        def chunk_sql(first: int, last: int) -> str:
            chunk = f"__rs_change_id between {first} and {last}"
            rows = f"select * from pending where {sendable} and {chunk}"
            return (
                f"select __rs_change_id, __rs_message_id, __rs_body{columns} "
                f"from (select *, {body_sql} as __rs_body from ({rows})) order by __rs_change_id"
            )

        cursor = self.conn.cursor()
        try:
            ids = cursor.sql(
                f"select __rs_change_id from pending where {sendable} order by 1"
            ).fetchnumpy()["__rs_change_id"]
            yield _in_chunks(cursor, chunk_sql, ids, batch_rows)
        finally:
            cursor.close()

    def first_sendable_by_change(
        self, window: str | None, max_attempts: int | None, keys: Sequence[str] | None = None
    ) -> list[tuple]:
        """The first change of each change type that sends an event (`_EVENT_COLUMNS`), of
        these primary ``keys`` only if given."""
        return run(
            self.conn,
            f"""
            select {_EVENT_COLUMNS} from pending where {_sendable_sql(window, max_attempts, keys)}
            qualify row_number() over (partition by __rs_change order by __rs_change_id) = 1
            order by __rs_change_id
            """,
        )

    def keys_without_sendable(
        self, keys: Sequence[str], windows: Sequence[str | None], max_attempts: int | None
    ) -> list[str]:
        """Those of ``keys`` with no pending change that sends an event in any of ``windows``
        (run config only_keys: a typo must not pass as "nothing to send")."""
        sendable = " or ".join(f"({_sendable_sql(window, max_attempts)})" for window in windows)
        rows = run(
            self.conn,
            f"""
            select k from unnest(?::varchar[]) with ordinality t(k, i)
            where k not in (select __rs_pk from pending where ({sendable}) and __rs_pk is not null)
            order by i
            """,
            [list(keys)],
        )
        return [str(key) for (key,) in rows]

    def store_pending_rows(
        self,
        table: str,
        windows: Sequence[str],
        fields: Sequence[tuple[str, str]] = (),
        silent_limit: int | None = None,
    ) -> int:
        """The pending changes of these windows (none: of an unpartitioned sync), with ``fields``
        ((name, SQL expression over pending's columns)) computed by DuckDB, as temp table
        ``table``; its `__rs_window`, `__rs_change_id` give their order. With ``silent_limit``,
        only the first that many changes that send nothing are kept (every one that sends is);
        how many were left out.

        A DuckDB table, not an Arrow one: it stays within DuckDB's memory limit (and spills), so
        a first run of millions of rows holds only the frame built from it in memory."""
        extra = "".join(f", {sql} as {quote_ident(name)}" for name, sql in fields)
        in_windows = (
            "((__rs_window is null and len(?::varchar[]) = 0) "
            "or list_contains(?::varchar[], __rs_window))"
        )
        params: list[Any] = [list(windows), list(windows)]
        kept = ""
        if silent_limit is not None:
            kept = f"""
              and (__rs_send or __rs_change_id in (
                  select __rs_change_id from pending where not __rs_send and {in_windows}
                  order by __rs_window nulls first, __rs_change_id limit {int(silent_limit)}))
            """
            params += [list(windows), list(windows)]
        run(
            self.conn,
            f"""
            create or replace temp table {table} as
            select __rs_window, __rs_change_id, __rs_pk, __rs_change, __rs_send, __rs_message_id,
                   __rs_timestamp, __rs_user_id, __rs_anonymous_id{extra}
            from pending
            where {in_windows} {kept}
            """,
            params,
        )
        if silent_limit is None:
            return 0
        (silent,) = run(
            self.conn,
            f"select count(*) from pending where not __rs_send and {in_windows}",
            [list(windows), list(windows)],
        )[0]
        staged = 0 if windows else self.baseline_rows()  # silent too, never listed
        return max(0, int(silent) - int(silent_limit)) + staged

    def drop_tables_except(self, prefix: str, keep: set[str]) -> None:
        """Drop the tables whose name starts with ``prefix``, except those in ``keep``."""
        tables = run(
            self.conn,
            "select table_name from duckdb_tables() where database_name = current_database() "
            "and starts_with(table_name, ?)",
            [prefix],
        )
        for (table,) in tables:
            if table not in keep:
                run(self.conn, f'drop table "{table}"')

    def close(self) -> None:
        self.conn.close()


MAX_COMMIT_RANGES = 32
# The delivery log's rows before a cutoff of keys with nothing pending or rejected; `{log}`,
# `{pending}`, `{rejected_rows}`: the tables, `{cutoff}`: the parameter's placeholder (the same
# statement runs in the warehouse).
PRUNE_DELIVERY_LOG_SQL = """
delete from {log}
where logged_at < {cutoff}
  and not exists (select 1 from {pending} p where p.__rs_pk = {log}.pk)
  and not exists (select 1 from {rejected_rows} r where r.__rs_pk = {log}.pk)
"""
PRUNE_SQL = PRUNE_DELIVERY_LOG_SQL.format(
    log="delivery_log", pending="pending", rejected_rows="rejected_rows", cutoff="?"
)
_ID_LIST_FILTER = "__rs_change_id in (select unnest(?::bigint[]))"
# Each chunk's query costs ~17 ms to plan (the event's SQL); 100,000 cost 10 % more CPU at 1M.
SENDABLE_CHUNK_ROWS = 250_000


def _in_chunks(
    cursor: duckdb.DuckDBPyConnection,
    chunk_sql: Callable[[int, int], str],
    ids: np.ndarray,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``chunk_sql`` for runs of the sorted ``ids``: the first run one batch long,
    so that sending starts once one batch is rendered (a first run of 200,000 events waited
    0.46 s for all of them), then runs of SENDABLE_CHUNK_ROWS, read while requests are out."""
    start = 0
    size = min(batch_rows, SENDABLE_CHUNK_ROWS)
    while start < len(ids):
        stop = min(start + size, len(ids))
        first, last = int(ids[start]), int(ids[stop - 1])
        yield from cursor.sql(chunk_sql(first, last)).to_arrow_reader(batch_rows)
        start, size = stop, SENDABLE_CHUNK_ROWS


def _id_runs(change_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last IDs of each run of consecutive ``change_ids`` (in any order)."""
    ids = np.unique(np.asarray(change_ids, dtype=np.int64))  # sorted
    breaks = np.flatnonzero(np.diff(ids) > 1)
    return np.concatenate((ids[:1], ids[breaks + 1])), np.concatenate((ids[breaks], ids[-1:]))


def _change_ids_filter(change_ids: Sequence[int] | np.ndarray) -> tuple[str, list[object]]:
    """SQL choosing these changes of `pending`: ranges of consecutive IDs where they are few.

    Accepted changes come back in change ID order, so a commit is usually one or a few runs of
    consecutive IDs; `between` lets DuckDB skip row groups (0.5 ms against 14-19 ms for 20k IDs
    through `in (unnest(...))` on a 1M-row pending table). Scattered IDs (many rejections in
    between) keep the list.
    """
    firsts, lasts = _id_runs(change_ids)
    if len(firsts) > MAX_COMMIT_RANGES:
        return _ID_LIST_FILTER, [np.unique(np.asarray(change_ids, dtype=np.int64)).tolist()]
    where = " or ".join("__rs_change_id between ? and ?" for _ in firsts)
    return f"({where})", [int(bound) for pair in zip(firsts, lasts, strict=True) for bound in pair]


def in_window(window: str | None) -> str:
    """SQL choosing one window's rows of `pending` or `rejected_rows` (None: an unpartitioned
    sync's). A literal rather than a parameter, so relations (which take none) can use it too."""
    return f"__rs_window is not distinct from {'null' if window is None else quote_literal(window)}"


def _sendable_sql(
    window: str | None, max_attempts: int | None, keys: Sequence[str] | None = None
) -> str:
    """SQL choosing the pending changes of one window that are sent: not the quarantined ones
    (and with ``keys``, only those of these primary keys: run config only_keys)."""
    quarantined = _quarantined_sql(max_attempts)
    return f"__rs_send and {in_window(window)} and not {quarantined} and {_keys_sql(keys)}"


def _keys_sql(keys: Sequence[str] | None) -> str:
    """SQL choosing the rows of these primary keys (as the state stores them: text); None: all.
    Literals, as in `in_window`, so the chunked reads of `sendable_changes` take no parameters."""
    if keys is None:
        return "true"
    return f"__rs_pk in ({', '.join(quote_literal(str(key)) for key in keys) or 'null'})"


def _quarantined_sql(max_attempts: int | None) -> str:
    """SQL selecting pending changes that are quarantined (never any when there is no limit)."""
    if max_attempts is None:
        return "false"
    return f"(__rs_send and __rs_attempts >= {int(max_attempts)})"


def state_path(state_dir: Path, sync_name: str, dry_run: bool) -> Path:
    return state_dir / (f"{sync_name}.dry_run.duckdb" if dry_run else f"{sync_name}.duckdb")


@contextmanager
def open_state(
    state_dir: Path,
    sync_name: str,
    dry_run: bool,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    in_use: bool = False,
) -> Iterator[SyncState]:
    """Open (creating if needed) a sync's state, waiting a bounded time if another run holds it.

    ``in_use``: a run will use it, so a state moved into the warehouse is refused."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state_dir, sync_name, dry_run)
    conn = _connect_with_wait(path, sync_name, lock_wait_seconds)
    state = SyncState(conn, path, sync_name)
    try:
        _ensure_schema(state)
        moved = state.get_meta(MOVED_KEY)
        if in_use and moved:
            raise StateError(
                f"sync '{sync_name}': its state {path} was moved to {moved} (state_schema). "
                "Fix: set state_schema again to use it there, or, while it is set, run "
                f"'python -m rudder_sync.warehouse_state.move to-local {sync_name}' to bring it "
                "back before removing state_schema."
            )
        state.settle_commits()  # what a run killed mid-delivery committed (`commit_changes`)
        yield state
    except duckdb.Error as exc:
        named = state_file_error(sync_name, path, exc)
        if named is None:
            raise
        raise named from exc
    finally:
        state.close()


# What moving a state away costs, for the messages that suggest it.
MOVE_AWAY_COST = (
    "moving it away loses its pending changes and what it delivered, so run once after that with "
    "the diff's run config resync: true (sends every row again, under new messageIds) or "
    "reset_baseline: true (records the current model as delivered: the changes since the last "
    "delivery are never sent)"
)


def state_file_error(sync_name: str, path: Path, exc: duckdb.Error) -> StateError | None:
    """A state file that DuckDB cannot write (the disk is full) or read (it is damaged, e.g.
    truncated) as a message naming the sync, the file and the fix; None for other errors."""
    cause = " ".join(str(exc).split())
    if "No space left on device" in cause:
        return StateError(
            f"sync '{sync_name}': the disk is full: writing its state {path} failed ({cause}). "
            "Fix: free space on that disk, or point 'state' at a larger one, then run again; "
            "nothing is lost: the failed write was rolled back, and the changes it did not "
            "commit stay pending and are sent again under the same messageIds."
        )
    if "Could not read enough bytes" in cause:
        return cannot_open(sync_name, path, cause)
    return None


def cannot_open(sync_name: str, path: Path, cause: str) -> StateError:
    """The state file is damaged or not rudder_sync state."""
    return StateError(
        f"sync '{sync_name}': cannot open its state {path}: {cause}. Fix: if the file is damaged "
        f"(or is not rudder_sync state), restore it from a backup if you can; {MOVE_AWAY_COST}."
    )


def _connect_with_wait(path: Path, sync_name: str, wait: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            conn = duckdb.connect(str(path))
            _configure(conn)
            return conn
        except duckdb.Error as exc:
            if not (isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()):
                raise cannot_open(sync_name, path, " ".join(str(exc).split())) from exc
            if time.monotonic() >= deadline:
                raise StateError(
                    f"sync '{sync_name}': cannot open its state {path}: another run of this sync "
                    f"is still holding it after {wait:.0f}s. Fix: wait for that run to finish; "
                    "runs of the same sync cannot overlap."
                ) from exc
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)


def memory_fix(error: BaseException) -> str:
    """The fix to append to an error of DuckDB's memory limit (empty for any other error): a
    statement of the state's diff that DuckDB could not spill to disk within the limit."""
    if "Out of Memory Error" not in str(error):
        return ""
    limit = os.environ.get(MEMORY_LIMIT_ENV_VAR, "").strip() or DEFAULT_MEMORY_LIMIT
    return (
        f". Fix: raise the state's DuckDB memory limit ({MEMORY_LIMIT_ENV_VAR}, now {limit}) "
        f"where the machine has the RAM, e.g. {MEMORY_LIMIT_ENV_VAR}=4GB, or keep the state in "
        "the warehouse ('state_schema', docs/large-models.md)"
    )


def _configure(conn: duckdb.DuckDBPyConnection) -> None:
    """Bound DuckDB's memory so a diff of a huge model spills to disk instead of growing RSS."""
    limit = os.environ.get(MEMORY_LIMIT_ENV_VAR, "").strip() or DEFAULT_MEMORY_LIMIT
    run(conn, "set enable_progress_bar = false")
    run(conn, "set preserve_insertion_order = false")
    run(conn, f"set memory_limit = {quote_literal(limit)}")


def _hash_probe(conn: duckdb.DuckDBPyConnection) -> str:
    """DuckDB's row hash of fixed values: if an upgrade changes the hash, stored hashes are void."""
    return str(run(conn, _HASH_PROBE_SQL)[0][0])


def _ensure_schema(state: SyncState) -> None:
    has_meta = state.has_table("meta")
    if has_meta:
        version = state.get_meta("schema_version")
        if version == "1" and state.get_meta("hash_probe") is not None:
            # Written by this layout before the version was raised to 2 (2636289..): same tables.
            with state.transaction():
                state.set_meta("schema_version", "2")
            version = "2"
        if version not in ("2", str(SCHEMA_VERSION)):
            raise StateError(
                f"sync '{state.sync_name}': state {state.path} has schema version {version}, "
                f"this rudder_sync reads version {SCHEMA_VERSION}. Fix: use the rudder_sync "
                f"version that wrote it; {MOVE_AWAY_COST}."
            )
        if state.get_meta("hash_probe") != _hash_probe(state.conn):
            raise StateError(
                f"sync '{state.sync_name}': state {state.path} was written by a DuckDB whose row "
                f"hash differs from this one ({duckdb.__version__}), so its snapshot cannot be "
                f"compared. Fix: use the DuckDB version that wrote it; {MOVE_AWAY_COST}."
            )
        if version == "2":
            _migrate_2_to_3(state)
        # A state written before `committed_ranges` gets the table; the version stays: the table
        # is empty between runs (after a crash, a release without it would re-send the changes
        # it holds, under the same messageIds, before committing them its own way).
        run(state.conn, _COMMITTED_RANGES_SCHEMA)
        return
    with state.transaction():
        run(state.conn, _SCHEMA)
        state.set_meta("schema_version", str(SCHEMA_VERSION))
        state.set_meta("hash_probe", _hash_probe(state.conn))
        state.set_meta(SALT_KEY, new_salt())


def new_salt() -> str:
    """A random value for messageIds: 128 bits, so no two states ever share one."""
    return uuid.uuid4().hex


def _migrate_2_to_3(state: SyncState) -> None:
    """Give a state written before salted messageIds its salt, and the new columns.

    Pending changes keep the messageIds stored with them (a diff reuses a pending change's ID),
    so a change that was sent before the upgrade and is re-sent after it is still deduplicated;
    only changes first seen after the upgrade get salted IDs.
    """
    with state.transaction():
        run(state.conn, "alter table pending add column if not exists __rs_origin varchar")
        for column, kind in (
            ("__rs_hash", "ubigint"),
            ("__rs_attempts", "integer"),
            ("__rs_first_seen", "timestamptz"),
        ):
            run(state.conn, f"alter table rejected_rows add column if not exists {column} {kind}")
        if state.get_meta(SALT_KEY) is None:
            state.set_meta(SALT_KEY, new_salt())
        state.set_meta("schema_version", str(SCHEMA_VERSION))
