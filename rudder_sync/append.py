"""`mode: append`: an append-only table (orders, page views) sent as one event per new row,
without diffing the whole table.

Each run reads only the rows past the stored cursor minus `lookback`, with the bound pushed into
the warehouse as a bound parameter around the model (`select * from (<model>) where <cursor> >=
$from`), never pasted into the SQL, and bound as the cursor's type (an instant in UTC for a
zone-aware cursor, UTC wall time without a zone for a naive one or a date), so that no
warehouse session's time zone converts it. The rows read become `added` changes in the state's own
`pending` table, unless their key was delivered already (`snapshot` keeps only the keys delivered
within the lookback, with their cursor in `append_cursor`), so the events step is the same code as
for diff syncs (`steps.deliver_windows`): the same messageIds on a retry, commits only of what
RudderStack accepted, quarantine, the guard, dry runs.

The cursor is never stored apart: it is the largest cursor among the committed keys, so it moves
only with accepted deliveries (and a first run's recorded baseline). Each run also re-reads the
band between the previous run's lower bound and this one's: a row found there that was neither
delivered nor pending arrived too late, and is reported by key with why instead of being dropped.

Partitioned append syncs read each window's cursor range; a window's events depend only on the
rows in it (re-running one re-sends the same messageIds), as for partitioned diff syncs. A row in
no window is reported, not dropped: each partitioned run also reads the model's null-cursor rows
(`<cursor> is null`, in the warehouse) and reports them by key, and counts the rows before the
first window's start (one aggregate) and reports them as one entry, under the run's `(no window)`
summary.

The state is a local DuckDB file, or, with the warehouse's `state_schema`, the sync's tables there
(`warehouse_state`), worked on through a scratch copy as diff syncs' are. The steps are the same
code for both; `_Rows` holds the difference: where the rows read stay between the snapshot and
diff steps (the state file; or a table in the warehouse, read out once by the diff), and what a
step loads (the recent keys) and writes back (the diff's small tables, whole).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from dagster import TimeWindowPartitionsDefinition

from .config import SyncConfig
from .diff import (
    REJECTED_SAMPLE,
    DiffMode,
    DiffSummary,
    _digest_sql,
    _problem_sql,
    _render_sql,
    _uuid_shape,
    check_model_columns,
    content_shape,
    pending_frame,
)
from .errors import ConfigError, ModelColumnsError, StateError
from .jsonvalues import column_types, quote_ident, quote_literal
from .partitions import WindowSpec, window_table
from .state import SALT_KEY, SyncState, open_state, run
from .state_backend import LocalStateBackend, StateBackend, state_backend
from .steps import DiffResult, Snapshot
from .warehouse_state import state_in_warehouse
from .warehouse_state.backend import WarehouseStateBackend
from .warehouse_state.sql import WINDOW_INFIX
from .warehouse_state.state import APPEND_CURSOR, WarehouseSyncState
from .warehouses import WarehouseError, WarehouseResource
from .warehouses.sql import statement_body

MODE_KEY = "mode"  # meta: "append" once an append sync's diff ran on the state
LOW_KEY = "append_low"  # meta: the lower bound of the last diff (the next run reads from it)
READ_KEY = "append_read"  # meta: the bounds of the rows in model_rows (set by the snapshot)
BELOW_KEY = "append_below"  # meta: rows below the last diff's lower bound, as counted then
COUNTED_KEY = "append_counted"  # meta: this snapshot's counts below its bounds (for the diff)
KIND_KEY = "append_cursor_kind"  # meta: tz, naive, date or number
CURSOR_TABLE = APPEND_CURSOR  # pending and delivered keys with their cursor
CURSOR_TYPE_KEY = "append_cursor_type"  # meta: the cursor's DuckDB type (the model's)
NULL_ROWS = "append_null_rows"  # a partitioned run's rows with a null cursor (in no window)
BEFORE_START_KEY = "append_before_start"  # meta: a partitioned run's rows before the first window
NO_WINDOW = "(no window)"  # the summary of a partitioned run's rows that are in no window
BEFORE_START = "(before start)"  # the key of the one entry reporting those rows
# Parameters of the filter around the model; `$partition_*` stay the model's own.
FROM_PARAM, TO_PARAM = "rudder_sync_cursor_from", "rudder_sync_cursor_to"
WINDOW_START, WINDOW_END = "rudder_sync_window_start", "rudder_sync_window_end"

Cursor = datetime | int | float | Decimal


@dataclass
class AppendSnapshot(Snapshot):
    """The snapshot of an append sync: the rows read, and where the read began, for metadata."""

    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bounds:
    """The rows one run reads: ``read_from`` <= cursor (<= ``upper``), or a null cursor.

    ``low``: the stored cursor minus lookback; rows read below it (from the band the previous run
    left behind) are new only if they arrived too late. ``first``: a first run; ``sends``: whether
    its rows are sent (start_at, send_initial_results) or recorded as the baseline."""

    read_from: Cursor | None
    low: Cursor | None
    upper: Cursor | None
    cursor: Cursor | None  # the stored cursor (largest committed), None before any
    first: bool
    sends: bool = True

    def to_text(self) -> str:
        return json.dumps(
            {
                "read_from": _encode(self.read_from),
                "low": _encode(self.low),
                "upper": _encode(self.upper),
                "cursor": _encode(self.cursor),
                "first": self.first,
                "sends": self.sends,
            }
        )

    @classmethod
    def from_text(cls, text: str) -> Bounds:
        raw = json.loads(text)
        return cls(
            read_from=_decode(raw["read_from"]),
            low=_decode(raw["low"]),
            upper=_decode(raw["upper"]),
            cursor=_decode(raw["cursor"]),
            first=raw["first"],
            sends=raw["sends"],
        )


def _encode(value: Cursor | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return ["datetime", value.isoformat()]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    return ["float" if isinstance(value, float) else "int", repr(value)]


def _decode(raw: list[str] | None) -> Cursor | None:
    if raw is None:
        return None
    kind, text = raw
    if kind == "datetime":
        return datetime.fromisoformat(text)
    return {"decimal": Decimal, "float": float, "int": int}[kind](text)


def sync_backend(sync: SyncConfig, warehouse: WarehouseResource, state_dir: Path) -> StateBackend:
    """The state backend of any sync: an append sync's own, or `state_backend`'s for diff syncs
    (whose local state refuses a state an append sync wrote)."""
    if sync.mode == "append":
        return AppendStateBackend(sync, warehouse, state_dir)
    backend = state_backend(sync, warehouse, state_dir)
    if type(backend) is LocalStateBackend:
        return DiffStateBackend(sync, warehouse, state_dir)
    if type(backend) is WarehouseStateBackend:
        return DiffWarehouseStateBackend(sync, warehouse, state_dir)
    return backend


class DiffStateBackend(LocalStateBackend):
    """A diff sync's local state, refusing one an append sync wrote: its snapshot holds only the
    recent keys, so a diff against it would send every older row again."""

    def open(self, dry_run: bool) -> AbstractContextManager[SyncState]:
        return _checked(super().open(dry_run), self.sync, "diff")


class DiffWarehouseStateBackend(WarehouseStateBackend):
    """A diff sync's state in the warehouse, refusing one an append sync wrote (as above)."""

    def open(self, dry_run: bool) -> AbstractContextManager[SyncState]:  # type: ignore[override]
        return _checked(super().open(dry_run), self.sync, "diff")


@contextmanager
def _checked(
    opened: AbstractContextManager[SyncState], sync: SyncConfig, mode: str
) -> Iterator[SyncState]:
    """The opened state, refused when the other mode wrote it (an initialised state without a
    recorded mode is a diff sync's: append states record theirs with their first diff)."""
    with opened as state:
        recorded = state.get_meta(MODE_KEY) or ("diff" if state.initialized else None)
        if recorded not in (None, mode):
            raise StateError(
                f"sync '{sync.name}': its state {state.path} was written by 'mode: {recorded}', "
                f"but the sync now says 'mode: {mode}'; the two keep different things (a diff "
                "sync every delivered row, an append sync only the recent keys), so running on "
                f"it would skip or re-send rows. Fix: put back 'mode: {recorded}', or move that "
                "state file away and start the sync anew (an append sync then starts at the "
                "current end of the table, or at 'start_at')."
            )
        yield state


@dataclass
class AppendStateBackend:
    """An append sync's state (`state.py`'s tables plus `append_cursor`), with its own snapshot
    and diff steps: its DuckDB file in the state folder, or, with the warehouse's
    `state_schema`, the sync's tables there (`warehouse_state`), worked on through a scratch
    copy as diff syncs' are. Where the rows read stay between the two steps is `_rows`'s
    business: the only difference between the two."""

    sync: SyncConfig
    warehouse: WarehouseResource
    state_dir: Path
    engine: str = "duckdb"
    _rows: _Rows = field(init=False)

    def __post_init__(self) -> None:
        self._rows = _WarehouseRows() if state_in_warehouse(self.warehouse) else _LocalRows()

    def open(self, dry_run: bool) -> AbstractContextManager[SyncState]:
        if isinstance(self._rows, _WarehouseRows):
            # Locks the sync's tables, loads meta, pending and rejected rows, and moves a local
            # state in first (`move.settle_local_state`).
            opened = WarehouseStateBackend(self.sync, self.warehouse, self.state_dir).open(dry_run)
        else:
            opened = open_state(self.state_dir, self.sync.name, dry_run, in_use=True)
        return _checked(opened, self.sync, "append")

    def location(self, state: SyncState) -> Path | str:
        return state.path if isinstance(self._rows, _WarehouseRows) else self.state_dir

    # -- snapshot: read the rows past the cursor ---------------------------------------------------
    def take_snapshot(
        self,
        state: SyncState,
        partitions: TimeWindowPartitionsDefinition | None,
        windows: Sequence[WindowSpec],
    ) -> Snapshot:
        if partitions is not None:
            return self._snapshot_windows(state, partitions, windows)
        self._rows.load_keys(state, writes=False)
        bounds = self._bounds(state)
        band = None
        start, low = bounds.read_from, bounds.low
        counted: dict[str, Any] = {}
        if start is not None and low is not None:
            below, band_rows = self._counts(start, low)
            if start < low:
                band = (band_rows, self._known(state, start, low))
                if band[0] <= band[1]:  # every row of the band is known: none came late
                    bounds = replace(bounds, read_from=low)
            # Rows below the band that were not there when the last run counted them arrived
            # later than the band can show: too late, and their keys are unknown here.
            before = state.get_meta(BELOW_KEY)
            late = max(0, below - int(before)) if before is not None else 0
            counted = {"below_low": below + band_rows, "late_below": late, "before": str(start)}
        sql, params = self._filtered(bounds)
        with state.transaction():
            state.set_meta(COUNTED_KEY, json.dumps(counted))
            state.set_meta(READ_KEY, bounds.to_text())
        rows, schema = self._read(state, "model_rows", sql, params)
        metadata: dict[str, Any] = {
            "cursor": _shown(bounds.cursor),
            "read_from": _shown(bounds.read_from),
            "first_run": bounds.first,
        }
        if band is not None:
            # Rows in the band the last run left behind (below this run's bound), and how many
            # of them the state knows: more rows than keys make this run read the band.
            metadata.update(late_band_rows=band[0], late_band_known=band[1])
        if counted.get("late_below"):
            metadata["late_below_band"] = counted["late_below"]
        return AppendSnapshot({"": rows}, _types(state, schema), False, metadata)

    def _snapshot_windows(
        self,
        state: SyncState,
        partitions: TimeWindowPartitionsDefinition,
        windows: Sequence[WindowSpec],
    ) -> Snapshot:
        """Each window's rows: the cursor range [start, end) of the window. And the rows no
        window reads, so that the diff reports them: those with a null cursor (read, filtered in
        the warehouse) and those before the first window's start (counted there)."""
        sync = self.sync
        rows: dict[str, int] = {}
        self._rows.drop_windows_except(state, {window_table(spec.key) for spec in windows})
        cursor = self._cursor_sql()
        body = statement_body(sync.model)
        # A model's own `$partition_*` get the run's whole range for the rows in no window.
        whole = {"partition_start": windows[0].start, "partition_end": windows[-1].end}
        nulls, schema = self._read(
            state,
            NULL_ROWS,
            f"select * from ({body}) as rudder_sync_model where {cursor} is null",
            whole,
        )
        # The bounds are bound as the cursor's kind (its type, from that read): a window's
        # instants as UTC wall time for a timestamp without zone or a date, as the unpartitioned
        # runs compare them, not cast by the warehouse session's time zone.
        kind = cursor_kind(sync, schema.field(str(sync.cursor)).type)
        sql = (
            f"select * from ({body}) as rudder_sync_model where {cursor} >= ${WINDOW_START} "
            f"and {cursor} < ${WINDOW_END}"
        )
        for spec in windows:
            params = {
                "partition_start": spec.start,
                "partition_end": spec.end,
                WINDOW_START: _normal(spec.start, kind),
                WINDOW_END: _normal(spec.end, kind),
            }
            rows[spec.key], schema = self._read(state, window_table(spec.key), sql, params)
        types = _types(state, schema)
        first = partitions.get_first_partition_window()
        start = first.start if first is not None else partitions.start
        count_sql = (
            f"select count(*) as rudder_sync_before from ({body}) t where {cursor} < ${FROM_PARAM}"
        )
        bound = {**whole, FROM_PARAM: _normal(start, kind)}
        with self.warehouse.read_model(count_sql, bound) as reader:
            before = int(reader.read_all().column(0)[0].as_py() or 0)
        with state.transaction():
            state.set_meta(BEFORE_START_KEY, json.dumps([before, start.isoformat()]))
        metadata = {
            "cursor_ranges": len(windows),
            "null_cursor_rows": nulls,
            "rows_before_first_window": before,
        }
        return AppendSnapshot(rows, types, False, metadata)

    def _read(
        self, state: SyncState, table: str, sql: str, params: dict[str, Any]
    ) -> tuple[int, pa.Schema]:
        """Run the filtered model, its rows kept as ``table`` (`_rows`); how many, and their
        columns. A missing cursor column names the key."""
        try:
            return self._rows.keep(self, state, table, sql, params)
        except WarehouseError as exc:
            if self.sync.cursor and self.sync.cursor in str(exc):
                raise WarehouseError(
                    f"{exc} (key 'cursor' names column '{self.sync.cursor}': the model must "
                    "return it)"
                ) from None
            raise

    def _check_columns(self, schema: pa.Schema) -> None:
        check_model_columns(self.sync, schema.names)
        cursor = str(self.sync.cursor)
        if cursor not in schema.names:
            raise ModelColumnsError(
                f"sync '{self.sync.name}': the model does not return column '{cursor}' (from "
                f"'cursor'). Its columns are: {', '.join(schema.names)}. Fix: select it in the "
                "model, or change 'cursor'."
            )
        _kind(self.sync, schema.field(cursor).type)

    def _cursor_sql(self) -> str:
        """The cursor column, quoted for the warehouse's dialect."""
        name = str(self.sync.cursor)
        if self.warehouse.dialect in ("bigquery", "databricks"):
            return "`" + name.replace("`", "``") + "`"
        return '"' + name.replace('"', '""') + '"'

    def _filtered(self, bounds: Bounds) -> tuple[str, dict[str, Any]]:
        """The model with the run's bounds around it, and the values to bind."""
        cursor, body = self._cursor_sql(), statement_body(self.sync.model)
        tests, params = [], {}
        if bounds.read_from is not None:
            tests.append(f"{cursor} >= ${FROM_PARAM}")
            params[FROM_PARAM] = bounds.read_from
        if bounds.upper is not None:
            tests.append(f"{cursor} <= ${TO_PARAM}")
            params[TO_PARAM] = bounds.upper
        if not tests:
            return self.sync.model, {}
        return (
            f"select * from ({body}) as rudder_sync_model "
            f"where ({' and '.join(tests)}) or {cursor} is null",
            params,
        )

    def _bounds(self, state: SyncState) -> Bounds:
        """Where this run reads: past the stored cursor minus lookback, and from the previous
        run's lower bound (to catch rows that arrived too late); a first run from `start_at`,
        from the start (send_initial_results), or over the last lookback before the table's
        current end (recorded as the baseline, not sent)."""
        sync = self.sync
        kind = state.get_meta(KIND_KEY)
        if kind is None and sync.start_at is not None and not state.initialized:
            kind = self._probe_kind(state)  # start_at is bound as the cursor's kind
        start_at = _normal(_start(sync.start_at), kind)
        if not state.initialized:
            if start_at is not None:
                return Bounds(start_at, start_at, None, None, first=True)
            if sync.send_initial_results:
                return Bounds(None, None, None, None, first=True)
            top = self._current_end(state)
            low = _minus(sync, top, sync.lookback)
            return Bounds(low, low, top, None, first=True, sends=False)
        stored = _normal(_committed_cursor(state), kind)
        previous = _normal(_meta_cursor(state, LOW_KEY), kind)
        low = _minus(sync, stored, sync.lookback) if stored is not None else previous
        if low is None or (start_at is not None and low < start_at):
            low = start_at
        read_from = low if previous is None or low is None else min(previous, low)
        return Bounds(read_from, low, None, stored, first=False)

    def _counts(self, start: Cursor, end: Cursor) -> tuple[int, int]:
        """Rows of the model below ``start``, and in [start, end): one aggregate in the
        warehouse over the cursor column, bound the same way; no row leaves it."""
        cursor = self._cursor_sql()
        sql = (
            f"select sum(case when {cursor} < ${FROM_PARAM} then 1 else 0 end) as below, "
            f"sum(case when {cursor} >= ${FROM_PARAM} then 1 else 0 end) as band "
            f"from ({statement_body(self.sync.model)}) t where {cursor} < ${TO_PARAM}"
        )
        with self.warehouse.read_model(sql, {FROM_PARAM: start, TO_PARAM: end}) as reader:
            table = reader.read_all()
        # By position: Snowflake names the unquoted aliases BELOW and BAND.
        below, band = (table.column(i)[0].as_py() for i in range(2))
        return int(below or 0), int(band or 0)

    def _known(self, state: SyncState, start: Cursor, end: Cursor) -> int:
        """The keys in [start, end) the state knows (delivered or pending). A row of the band
        the state does not know arrived after the run whose read passed it: too late."""
        known = 0
        if state.has_table(CURSOR_TABLE):
            known = int(
                run(
                    state.conn,
                    f"select count(*) from {CURSOR_TABLE} where __rs_cursor >= ? "
                    "and __rs_cursor < ?",
                    [start, end],
                )[0][0]
            )
        return known

    def _probe_kind(self, state: SyncState) -> str:
        """The cursor's kind, from the model's columns (a query that returns no row)."""
        sql = f"select * from ({statement_body(self.sync.model)}) as rudder_sync_model where 1 = 0"
        with self.warehouse.read_model(sql, {}) as reader:
            self._check_columns(reader.schema)
            kind = _kind(self.sync, reader.schema.field(str(self.sync.cursor)).type)
        with state.transaction():
            state.set_meta(KIND_KEY, kind)
        return kind

    def _current_end(self, state: SyncState) -> Cursor | None:
        """The largest cursor in the model now (one row out of the warehouse)."""
        cursor = self._cursor_sql()
        sql = f"select max({cursor}) as rudder_sync_end from ({statement_body(self.sync.model)}) t"
        with self.warehouse.read_model(sql, {}) as reader:
            table = reader.read_all()
        kind = _kind(self.sync, table.schema.field(0).type)
        with state.transaction():
            state.set_meta(KIND_KEY, kind)
        return _normal(table.column(0)[0].as_py(), kind)

    # -- diff: the rows read that were not delivered become pending ------------------------------
    def run_diff(
        self,
        state: SyncState,
        windows: Sequence[WindowSpec],
        mode: DiffMode,
        now: datetime,
        retry_quarantined: bool = False,
    ) -> DiffResult:
        sync = self.sync
        if mode.resync:
            raise ConfigError(
                f"sync '{sync.name}': run config resync is for 'mode: diff' syncs; an append "
                "sync keeps no model to send again. Fix: to re-send a time range, run its "
                "partitions (a partitioned append sync), or start a new state with 'start_at'."
            )
        readmitted = state.readmit_quarantined(sync.max_attempts) if retry_quarantined else 0
        self._rows.load_keys(state, writes=True)
        tables = [window_table(spec.key) for spec in windows] + [NULL_ROWS] if windows else []
        transferred = self._rows.fetch(state, tables or ["model_rows"])
        if windows:
            summaries = {spec.key: self._diff_window(state, spec, now) for spec in windows}
            summaries[NO_WINDOW] = self._diff_no_window(state, now)
            extra: dict[str, Any] = {}
            with state.transaction():
                self._rows.push(state)
        else:
            if not state.has_table("model_rows") or state.get_meta(READ_KEY) is None:
                raise StateError(
                    f"sync '{sync.name}': no rows read yet; materialize {sync.name}/snapshot first."
                )
            bounds = Bounds.from_text(str(state.get_meta(READ_KEY)))
            summary, extra = self._diff(state, bounds, mode, now)
            summaries = {"": summary}
        if transferred is not None:  # the rows that left the warehouse for this diff
            extra["rows_transferred"] = transferred
        frame, left_out = pending_frame(state, sync, [spec.key for spec in windows])
        return DiffResult(summaries, frame, readmitted, transfer=extra, frame_left_out=left_out)

    def _rows_sql(self, table: str, types: dict[str, str]) -> str:
        """One row per key (append tables repeat rows): the earliest by cursor, then by content,
        so every run picks the same one."""
        sync = self.sync
        pk = quote_ident(sync.primary_key)
        carried = ", ".join(quote_ident(c) for c in sync.carried_columns)
        shape = quote_literal(content_shape(sync))
        return f"""
            select *, cast({pk} as varchar) as __rs_pk,
                   hash({carried}, {shape}) as __rs_hash,
                   {_problem_sql(sync, types)} as __rs_problem,
                   {quote_ident(str(sync.cursor))} as __rs_cursor
            from {table}
            qualify {pk} is null or row_number() over (
                partition by {pk} order by {quote_ident(str(sync.cursor))} nulls last,
                hash({carried}, {shape})) = 1
        """

    def _diff(
        self, state: SyncState, bounds: Bounds, mode: DiffMode, now: datetime
    ) -> tuple[DiffSummary, dict[str, Any]]:
        sync = self.sync
        types = column_types(state.conn, "model_rows")
        check_model_columns(sync, list(types))
        kind = _kind(sync, _arrow_type(state, "model_rows", str(sync.cursor)))
        cursor_type = types[str(sync.cursor)]
        run(
            state.conn,
            f"create or replace temp table __rs_rows as {self._rows_sql('model_rows', types)}",
        )
        low_sql = "null" if bounds.low is None else "?"
        low_params = [] if bounds.low is None else [bounds.low]
        # Each read row: delivered already (skip), or why it cannot be sent, or a change.
        run(
            state.conn,
            f"""
            create or replace temp table __rs_seen as
            select r.__rs_pk, r.__rs_hash, r.__rs_cursor,
                   case when r.__rs_pk is null then 'null primary key'
                        when r.__rs_cursor is null
                          then 'null cursor (column ' || {quote_literal(str(sync.cursor))}
                               || '): cannot tell when the row came'
                        when r.__rs_problem is not null then r.__rs_problem
                        when r.__rs_cursor < {low_sql}::{cursor_type}
                             and r.__rs_pk not in (select __rs_pk from pending
                                                   where __rs_window is null
                                                     and __rs_pk is not null)
                          then 'arrived too late: cursor ' || r.__rs_cursor::varchar
                               || ' is before the stored cursor minus lookback ('
                               || {low_sql}::{cursor_type}::varchar || '); not sent'
                   end as reason
            from __rs_rows r
            where r.__rs_pk is null
               or r.__rs_pk not in (select __rs_pk from snapshot where not __rs_deleted)
            """,
            low_params * 2,
        )
        send = (bounds.sends or not bounds.first) and not mode.reset_baseline
        counted = json.loads(state.get_meta(COUNTED_KEY) or "{}")
        unknown = ""
        if counted.get("late_below"):
            # One entry for rows found only by count: the state keeps no keys down there.
            reason = (
                f"arrived too late: {counted['late_below']} row(s) with a cursor before "
                f"{counted['before']}, below the rows this state still knows, so their keys "
                "are unknown; not sent (raise 'lookback' to cover such rows)"
            )
            unknown = (
                " union all select '(unknown)' as __rs_pk, null::ubigint as __rs_hash, "
                f"{quote_literal(reason)} as reason"
            )
        with state.transaction():
            state.replace_rejected_rows(
                None,
                "select coalesce(__rs_pk, '(null)') as __rs_pk, __rs_hash, reason "
                f"from __rs_seen where reason is not null{unknown}",
                now,
            )
            state.replace_pending(None, self._changes_sql(state, types, send, now, mode), now)
            self._keep_cursors(state, cursor_type, bounds)
            self._rows.push(state)  # before the meta below: its first writes in the warehouse
            state.set_meta(MODE_KEY, "append")
            state.set_meta(KIND_KEY, kind)
            state.set_meta(CURSOR_TYPE_KEY, str(cursor_type))
            if bounds.low is not None:
                state.set_meta(LOW_KEY, json.dumps(_encode(bounds.low)))
            if "below_low" in counted:
                state.set_meta(BELOW_KEY, str(counted["below_low"]))
        late = state.count(
            "rejected_rows",
            "__rs_window is null and reason like 'arrived too late%' and __rs_pk <> '(unknown)'",
        ) + int(counted.get("late_below", 0))
        summary = self._summary(state, None, bounds.first and not bounds.sends)
        run(state.conn, "drop table __rs_rows; drop table __rs_seen")
        return summary, {
            "cursor": _shown(bounds.cursor),
            "read_from": _shown(bounds.read_from),
            "too_late_rows": late,
            "keys_kept": state.count(CURSOR_TABLE),
        }

    def _changes_sql(
        self,
        state: SyncState,
        types: dict[str, str],
        send: bool,
        now: datetime,
        mode: DiffMode,
    ) -> str:
        """The pending changes: each valid row read and not delivered (added, version 1), and
        the pending changes of rows this read did not see (kept as they are); a baseline
        reset drops those and sends nothing."""
        sync = self.sync
        salt = state.get_meta(SALT_KEY)
        digest = _digest_sql(sync, None, salt)
        default_ts = run(
            state.conn,
            "select strftime(?::timestamptz at time zone 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ')",
            [now],
        )[0][0]
        rendered = f"{_render_sql(sync, types)} from __rs_rows m"
        carried = (
            "select __rs_pk, __rs_change, __rs_hash, __rs_version, __rs_send, __rs_message_id, "
            "__rs_timestamp, __rs_user_id, __rs_anonymous_id, __rs_props, __rs_origin "
            "from pending where __rs_window is null and __rs_pk not in "
            "(select __rs_pk from __rs_rows where __rs_pk is not null)"
        )
        return f"""
            with c as (
                select s.__rs_pk, 'added' as __rs_change, s.__rs_hash,
                       1::bigint as __rs_version, {"true" if send else "false"} as __rs_send
                from __rs_seen s where s.reason is null
            )
            select c.*,
                   coalesce(r.__rs_row_message_id, {_uuid_shape(digest)}) as __rs_message_id,
                   coalesce(r.__rs_row_timestamp, {quote_literal(default_ts)}) as __rs_timestamp,
                   r.__rs_user_id, r.__rs_anonymous_id, r.__rs_props, null::varchar as __rs_origin
            from c join ({rendered}) r on r.__rs_pk = c.__rs_pk
            {"" if mode.reset_baseline else f"union all by name {carried}"}
        """

    def _keep_cursors(self, state: SyncState, cursor_type: str, bounds: Bounds) -> None:
        """Record the cursor of each pending key; forget the delivered keys below this run's
        lower bound (the next run reads from it), so the state keeps only recent keys."""
        # No primary key: deleting the thousands of keys that leave the lookback each run from
        # its index cost 75 ms at every commit (10k new rows a run); without it, 1 ms. A key's
        # cursor is replaced by deleting it first (states written before keep their index).
        run(
            state.conn,
            f"create table if not exists {CURSOR_TABLE} "
            f"(__rs_pk varchar, __rs_cursor {cursor_type})",
        )
        run(
            state.conn,
            f"""
            delete from {CURSOR_TABLE}
            where __rs_pk in (select __rs_pk from __rs_seen where reason is null);
            insert into {CURSOR_TABLE}
            select s.__rs_pk, s.__rs_cursor from __rs_seen s
            where s.reason is null
            """,
        )
        if bounds.low is not None:
            run(
                state.conn,
                f"""
                delete from snapshot where __rs_pk in (
                    select __rs_pk from {CURSOR_TABLE} where __rs_cursor < ?::{cursor_type})
                """,
                [bounds.low],
            )
        # Keys neither pending nor delivered (dropped pending, pruned above) are forgotten.
        run(
            state.conn,
            f"""
            delete from {CURSOR_TABLE}
            where __rs_pk not in (select __rs_pk from snapshot)
              and __rs_pk not in (select __rs_pk from pending
                                  where __rs_window is null and __rs_pk is not null)
            """,
        )

    def _diff_window(self, state: SyncState, spec: WindowSpec, now: datetime) -> DiffSummary:
        """A window's changes: every valid row of its cursor range, sent (a backfill)."""
        sync = self.sync
        table = window_table(spec.key)
        if not state.has_table(table):
            raise StateError(
                f"sync '{sync.name}': window {spec.key} was not read; materialize "
                f"{sync.name}/snapshot for it first."
            )
        types = column_types(state.conn, table)
        check_model_columns(sync, list(types))
        run(state.conn, f"create or replace temp table __rs_rows as {self._rows_sql(table, types)}")
        digest = _digest_sql(sync, spec.key, sync.message_id_salt)
        end = run(
            state.conn,
            "select strftime(?::timestamptz at time zone 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ')",
            [spec.end],
        )[0][0]
        changes = f"""
            with c as (
                select __rs_pk, 'added' as __rs_change, __rs_hash, 1::bigint as __rs_version,
                       true as __rs_send
                from __rs_rows where __rs_pk is not null and __rs_problem is null
            )
            select c.*,
                   coalesce(r.__rs_row_message_id, {_uuid_shape(digest)}) as __rs_message_id,
                   coalesce(r.__rs_row_timestamp, {quote_literal(end)}) as __rs_timestamp,
                   r.__rs_user_id, r.__rs_anonymous_id, r.__rs_props, null::varchar as __rs_origin
            from c join ({_render_sql(sync, types)} from __rs_rows m) r on r.__rs_pk = c.__rs_pk
        """
        with state.transaction():
            state.replace_rejected_rows(
                spec.key,
                "select coalesce(__rs_pk, '(null)') as __rs_pk, __rs_hash, "
                "coalesce(__rs_problem, 'null primary key') as reason from __rs_rows "
                "where __rs_pk is null or __rs_problem is not null",
                now,
            )
            state.replace_pending(spec.key, changes, now)
        summary = self._summary(state, spec.key, False)
        run(state.conn, "drop table __rs_rows")
        return summary

    def _diff_no_window(self, state: SyncState, now: datetime) -> DiffSummary:
        """A partitioned run's rows that no window reads, reported as rejected rows of the sync
        (not of a window), as an unpartitioned run reports them: each null-cursor row by key,
        and the rows before the first window's start as one counted entry (they may be the
        table's whole history: no key is kept for them)."""
        sync = self.sync
        if not state.has_table(NULL_ROWS):
            raise StateError(
                f"sync '{sync.name}': the rows in no window were not read; materialize "
                f"{sync.name}/snapshot for this run's windows first."
            )
        types = column_types(state.conn, NULL_ROWS)
        run(
            state.conn,
            f"create or replace temp table __rs_rows as {self._rows_sql(NULL_ROWS, types)}",
        )
        before, start = json.loads(state.get_meta(BEFORE_START_KEY) or "[0, null]")
        null_reason = quote_literal(
            f"null cursor (column {sync.cursor}): cannot tell when the row came, so no "
            "window holds it"
        )
        rows_sql = (
            f"select coalesce(__rs_pk, '(null)') as __rs_pk, __rs_hash, {null_reason} as reason "
            "from __rs_rows"
        )
        if before:
            reason = (
                f"before the first window: {before} row(s) with a cursor before {start} (the "
                "first partition's start) are in no window; not sent (move 'partitions.start' "
                "earlier to send them, or filter them out in the model)"
            )
            rows_sql += (
                f" union all select {quote_literal(BEFORE_START)} as __rs_pk, "
                f"null::ubigint as __rs_hash, {quote_literal(reason)} as reason"
            )
        with state.transaction():
            state.replace_rejected_rows(None, rows_sql, now)
        rejected_count, rejected_sample = state.rejected(None, REJECTED_SAMPLE)
        none = dict.fromkeys(("added", "changed", "removed"), 0)
        summary = DiffSummary(
            model_rows=state.count("__rs_rows"),
            counts=none,
            to_send=dict(none),
            rejected_count=rejected_count,
            rejected_sample=rejected_sample,
        )
        run(state.conn, "drop table __rs_rows")
        return summary

    def _summary(self, state: SyncState, window: str | None, first: bool) -> DiffSummary:
        """Counts for metadata, logs and the guard. No base rows: an append sync compares with
        no whole table, so the guard's fractions do not apply (max_events does)."""
        by_change = state.change_counts(window, self.sync.max_attempts)
        rejected_count, rejected_sample = state.rejected(window, REJECTED_SAMPLE)
        counts = {c: by_change.get(c, (0, 0))[0] for c in ("added", "changed", "removed")}
        to_send = {c: by_change.get(c, (0, 0))[1] for c in ("added", "changed", "removed")}
        return DiffSummary(
            model_rows=state.count("__rs_rows"),
            counts=counts,
            to_send=to_send,
            rejected_count=rejected_count,
            rejected_sample=rejected_sample,
            first_run=first,
            base_rows=0,
        )


class _Rows(Protocol):
    """Where an append sync's rows read stay between its snapshot and diff steps, and what of
    its state a step loads and writes back: the one difference between a local state and one in
    the warehouse (the steps above are the same code for both)."""

    def keep(
        self,
        backend: AppendStateBackend,
        state: SyncState,
        table: str,
        sql: str,
        params: dict[str, Any],
    ) -> tuple[int, pa.Schema]:
        """Run the filtered model and keep its rows as ``table``; how many, and the columns."""
        ...

    def fetch(self, state: SyncState, tables: Sequence[str]) -> int | None:
        """Make the kept ``tables`` readable by the diff; the rows that left the warehouse for
        it (None: none had to)."""
        ...

    def drop_windows_except(self, state: SyncState, keep: set[str]) -> None:
        """Forget the kept window tables of earlier runs (not in ``keep``)."""
        ...

    def load_keys(self, state: SyncState, writes: bool) -> None:
        """Make the recent keys (snapshot, `append_cursor`) readable by this step; ``writes``:
        the step writes them back (the diff), else it reads their cursors only (the snapshot
        step: the stored cursor, the band's count)."""
        ...

    def push(self, state: SyncState) -> None:
        """Inside the diff's transaction, before its meta: write what the diff changed."""
        ...


class _LocalRows:
    """A local state: the rows read go into the state file at the snapshot step, and the diff
    finds them and every other table there; nothing is loaded or written back."""

    def keep(
        self,
        backend: AppendStateBackend,
        state: SyncState,
        table: str,
        sql: str,
        params: dict[str, Any],
    ) -> tuple[int, pa.Schema]:
        with backend.warehouse.read_model(sql, params) as reader:
            backend._check_columns(reader.schema)
            return state.replace_table(table, reader), reader.schema

    def fetch(self, state: SyncState, tables: Sequence[str]) -> int | None:
        return None

    def drop_windows_except(self, state: SyncState, keep: set[str]) -> None:
        state.drop_tables_except("window__", keep)

    def load_keys(self, state: SyncState, writes: bool) -> None:
        return None

    def push(self, state: SyncState) -> None:
        return None


class _WarehouseRows:
    """A state in the warehouse (`state_schema`), worked on through a scratch copy that lives
    for one step. The snapshot step keeps the rows past the cursor in the warehouse (`create
    table as` the filtered model, its bounds bound by the driver: no row leaves); the diff step
    reads them out once. The recent keys (few) are loaded by the steps that read them, and the
    diff writes the state's small tables back whole, in the transaction that records its meta.
    Nothing here knows the engine: the store does (`warehouse_state.store`)."""

    def keep(
        self,
        backend: AppendStateBackend,
        state: SyncState,
        table: str,
        sql: str,
        params: dict[str, Any],
    ) -> tuple[int, pa.Schema]:
        opened = _in_warehouse(state)
        probe = f"select * from ({statement_body(sql)}) as rudder_sync_probe where 1 = 0"
        with opened.store.reader(probe, params, read_only=True) as reader:
            schema = reader.schema
            reader.read_all()
        backend._check_columns(schema)
        target = opened.tables.qualified(_kept_name(opened, table))
        timeout = backend.warehouse.statement_timeout_seconds
        return opened.keep_rows(target, sql, params, timeout), schema

    def fetch(self, state: SyncState, tables: Sequence[str]) -> int | None:
        opened = _in_warehouse(state)
        left = 0
        for table in tables:  # a table not kept stays missing: the diff names the step to run
            left += (
                opened.fetch_rows(opened.tables.qualified(_kept_name(opened, table)), table) or 0
            )
        return left

    def drop_windows_except(self, state: SyncState, keep: set[str]) -> None:
        opened = _in_warehouse(state)
        kept = {_kept_name(opened, table) for table in (*keep, NULL_ROWS)}
        names = opened.store.table_names(opened.tables.prefix + WINDOW_INFIX)
        stale = [name for name in names if name not in kept]
        if stale:
            with opened.store.transaction():
                for name in stale:
                    opened.store.execute(f"drop table {opened.tables.qualified(name)}")

    def load_keys(self, state: SyncState, writes: bool) -> None:
        opened, cursor_type = _in_warehouse(state), state.get_meta(CURSOR_TYPE_KEY)
        if writes:
            opened.load_append_keys(cursor_type)
        else:  # one read, of the keys' cursors only
            opened.load_append_cursors(cursor_type)

    def push(self, state: SyncState) -> None:
        _in_warehouse(state).push_append_state()


def _in_warehouse(state: SyncState) -> WarehouseSyncState:
    """The state `WarehouseStateBackend.open` opened (another one is a bug)."""
    if not isinstance(state, WarehouseSyncState):
        raise TypeError(f"not an in-warehouse state: {state.path}")
    return state


def _kept_name(state: WarehouseSyncState, table: str) -> str:
    """The warehouse table keeping a scratch table's rows: `<sync>__model` for the rows past
    the cursor, `<sync>__w_<window>` for a window's, `<sync>__w_nulls` for the null cursors."""
    if table == "model_rows":
        return state.tables.name("model")
    if table == NULL_ROWS:
        return state.tables.window_name("nulls")
    return state.tables.window_name(table.removeprefix("window__"))


def _types(state: SyncState, schema: pa.Schema) -> dict[str, str]:
    """The DuckDB types of a model's columns (as `column_types` gives a stored table's), bound
    on the state's own connection: a new in-memory database cost ~20 ms a run."""
    state.conn.register("__rs_columns", schema.empty_table())
    try:
        return column_types(state.conn, "__rs_columns")
    finally:
        state.conn.unregister("__rs_columns")


def _committed_cursor(state: SyncState) -> Any:
    """The stored cursor: the largest cursor among the delivered (committed) keys."""
    if not state.has_table(CURSOR_TABLE):
        return None
    return run(
        state.conn,
        f"select max(a.__rs_cursor) from {CURSOR_TABLE} a "
        "semi join snapshot s on s.__rs_pk = a.__rs_pk",
    )[0][0]


def _meta_cursor(state: SyncState, key: str) -> Cursor | None:
    text = state.get_meta(key)
    return None if text is None else _decode(json.loads(text))


def _arrow_type(state: SyncState, table: str, column: str) -> pa.DataType:
    return (
        state.conn.sql(f"select {quote_ident(column)} from {table} limit 0")
        .to_arrow_table()
        .schema.field(0)
        .type
    )


def cursor_kind(sync: SyncConfig, arrow_type: pa.DataType) -> str:
    """The kind of the cursor column of ``arrow_type`` (tz, naive, date, number) for this sync:
    a type, lookback or partitions it cannot go with fails, naming the fix (also what
    `check --connect` runs on the model's columns)."""
    kind = _kind(sync, arrow_type)
    if kind == "number" and sync.partitions is not None:
        raise ConfigError(
            f"sync '{sync.name}': key 'partitions' makes windows of time, but column "
            f"'{sync.cursor}' (from 'cursor') is a number. Fix: name a timestamp or date "
            "column in 'cursor', or remove 'partitions'."
        )
    return kind


def _kind(sync: SyncConfig, arrow_type: pa.DataType) -> str:
    """The cursor's kind (tz, naive, date, number); a column of another type fails, naming it."""
    if pa.types.is_timestamp(arrow_type):
        kind = "tz" if arrow_type.tz else "naive"
    elif pa.types.is_date(arrow_type):
        kind = "date"
    elif (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
    ):
        kind = "number"
    else:
        raise ModelColumnsError(
            f"sync '{sync.name}': column '{sync.cursor}' (from 'cursor') has type {arrow_type}. "
            "Fix: use a timestamp, date or number column that grows with new rows."
        )
    numeric_lookback = isinstance(sync.lookback, int) and sync.lookback != 0
    if kind == "number" and isinstance(sync.lookback, timedelta):
        raise ConfigError(
            f"sync '{sync.name}': key 'lookback' is a duration but column '{sync.cursor}' (from "
            "'cursor') is a number. Fix: give 'lookback' as a whole number of cursor units."
        )
    if kind != "number" and numeric_lookback:
        raise ConfigError(
            f"sync '{sync.name}': key 'lookback' is a number but column '{sync.cursor}' (from "
            "'cursor') is a time. Fix: give 'lookback' as a duration, e.g. 'lookback: 2h'."
        )
    return kind


def _start(value: datetime | date | int | None) -> Cursor | None:
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time())
    return value


def _normal(value: Any, kind: str | None) -> Cursor | None:
    """Cursor values in one comparable form: times in UTC (aware for a tz cursor, naive for
    others), dates as midnight."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if isinstance(value, datetime):
        if kind == "tz":
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _minus(sync: SyncConfig, value: Cursor | None, lookback: timedelta | int) -> Cursor | None:
    """``value`` minus the lookback."""
    if value is None:
        return None
    if isinstance(lookback, timedelta):
        if not isinstance(value, datetime):
            raise ConfigError(
                f"sync '{sync.name}': key 'lookback' is a duration but column '{sync.cursor}' "
                "(from 'cursor') is a number. Fix: give 'lookback' as a whole number of cursor "
                "units."
            )
        return value - lookback
    if lookback == 0:
        return value
    if isinstance(value, datetime):
        raise ConfigError(
            f"sync '{sync.name}': key 'lookback' is a number but column '{sync.cursor}' (from "
            "'cursor') is a time. Fix: give 'lookback' as a duration, e.g. 'lookback: 2h'."
        )
    return value - lookback


def _shown(value: Cursor | None) -> str:
    if value is None:
        return "(none)"
    return value.isoformat() if isinstance(value, datetime) else str(value)
