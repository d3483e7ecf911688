"""Record lookup: what a sync's state holds for one primary key ("what did we send for user X?").

Reads the state without changing it and without disturbing a run: a local state file is opened
read-only (a running sync holds its write lock, which is said in one line rather than waited
for), an in-warehouse state (`state_schema`) through its engine's store, without the sync's lock
(in one read-only transaction where the engine has them). The same queries serve every engine:
they take `$n` parameters, which a store binds its driver's way.

Keys are matched as the state stores them: the primary key cast to text by the diff (an integer
42 is '42'; a NULL key's rejected row is '(null)').
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import ProjectConfig, SyncConfig
from .errors import StateError
from .jsonvalues import quote_ident, quote_literal
from .state import MOVED_KEY, SCHEMA_VERSION, state_path

if TYPE_CHECKING:
    from .warehouse_state.store import StateStore

# The model's copy in an in-warehouse state carries its fingerprint: not the user's columns.
_FINGERPRINT_COLUMNS = ("__rs_wpk", "__rs_whash")


@dataclass
class RecordLookup:
    """Everything the state holds for one key of one sync (JSON-ready values)."""

    sync: str
    key: str
    state: str  # where the state was read, for people: a file or a warehouse schema
    kind: str  # 'local' or 'warehouse'
    partitioned: bool
    window: str | None = None
    snapshot: dict[str, Any] | None = None
    model_rows: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the state does not keep

    @property
    def found(self) -> bool:
        return bool(
            self.snapshot or self.model_rows or self.pending or self.rejected or self.deliveries
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "key": self.key,
            "found": self.found,
            "state": {"kind": self.kind, "location": self.state},
            "partitioned": self.partitioned,
            "window": self.window,
            "snapshot": self.snapshot,
            "model_rows": self.model_rows,
            "pending": self.pending,
            "rejected": self.rejected,
            "deliveries": self.deliveries,
            "notes": self.notes,
        }


class _Reader(Protocol):
    """One state's tables, read-only."""

    kind: str
    where: str

    def table(self, role: str) -> str: ...

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def model_tables(self) -> dict[str | None, str]:
        """The model copies kept: `model_rows`'s under None, each window's under the part of
        its table name that `partitions.window_table` made of the window's key."""
        ...

    def model_key_sql(self, primary_key: str) -> str:
        """SQL of a model copy's key as the state stores it."""
        ...

    @property
    def hash_sql(self) -> str:
        """SQL of the snapshot's fingerprint as text."""
        ...

    @property
    def committed_sql(self) -> str:
        """SQL telling whether a pending change was delivered and committed by a run that
        stopped before the snapshot took it (`committed_ranges`, settled at the next open)."""
        ...


def lookup(
    project: ProjectConfig,
    sync_name: str,
    key: str,
    window: str | None = None,
    dry_run_state: bool = False,
) -> RecordLookup:
    """What the state of ``sync_name`` holds for ``key`` (one window, or all of them).

    Raises StateError (one line, with the fix) for an unknown sync, a missing, locked or moved
    state, or a window given for an unpartitioned sync."""
    sync = project.syncs.get(sync_name)
    if sync is None:
        known = ", ".join(sorted(project.syncs)) or "(none)"
        raise StateError(f"no sync '{sync_name}' in the config. Fix: name one of: {known}.")
    if window is not None and sync.partitions is None:
        raise StateError(
            f"sync '{sync_name}' is not partitioned, so it has no windows. Fix: leave out --window."
        )
    with _open_reader(project, sync, dry_run_state) as reader:
        result = _read(reader, sync, key, window)
        if not result.found and re.fullmatch(r"[+-]?0*\d+", key) and str(int(key)) != key:
            # An integer key typed with a sign or leading zeros: the state stores str(int).
            result = _read(reader, sync, str(int(key)), window)
        return result


def _read(reader: _Reader, sync: SyncConfig, key: str, window: str | None) -> RecordLookup:
    result = RecordLookup(
        sync=sync.name,
        key=key,
        state=reader.where,
        kind=reader.kind,
        partitioned=sync.partitions is not None,
        window=window,
    )
    if sync.partitions is None:
        result.snapshot = _snapshot(reader, sync, key)
    result.model_rows = _model_rows(reader, sync, key, window, result.notes)
    result.pending = _pending(reader, sync, key, window)
    result.rejected = _rejected(reader, sync, key, window)
    result.deliveries = _deliveries(reader, sync, key, window)
    result.notes[:0] = _what_is_not_kept(sync)
    return result


def _window_filter(column: str, window: str | None) -> str:
    return "true" if window is None else f"{column} = {quote_literal(window)}"


def _snapshot(reader: _Reader, sync: SyncConfig, key: str) -> dict[str, Any] | None:
    from .events import split_content

    rows = reader.rows(
        f"""
        select __rs_version, __rs_deleted, {reader.hash_sql} as __rs_hash,
               __rs_committed_at, __rs_user_id, __rs_anonymous_id, __rs_props
        from {reader.table("snapshot")} where __rs_pk = $1
        """,
        [key],
    )
    if not rows:
        return None
    row = rows[0]
    content = None
    if row["__rs_props"]:
        names, context, properties = split_content(sync, row["__rs_props"])
        content = {
            **names,
            **({"context": json.loads(context)} if context else {}),
            _content_member(sync): json.loads(properties),
        }
    return {
        "status": "removed" if row["__rs_deleted"] else "committed",
        "version": row["__rs_version"],
        "fingerprint": row["__rs_hash"],
        "committed_at": _json_value(row["__rs_committed_at"]),
        "user_id": row["__rs_user_id"],
        "anonymous_id": row["__rs_anonymous_id"],
        "last_event_content": content,
    }


def _content_member(sync: SyncConfig) -> str:
    """Where the event carries the content: traits for identify and group, else properties."""
    return "traits" if sync.type in ("identify", "group") else "properties"


def _model_rows(
    reader: _Reader, sync: SyncConfig, key: str, window: str | None, notes: list[str]
) -> list[dict[str, Any]]:
    kept = reader.model_tables()
    names = _window_keys(sync, [part for part in kept if part is not None])
    tables = {None if part is None else names[part]: table for part, table in kept.items()}
    if sync.partitions is None and None not in tables:
        notes.append(
            "no copy of the model's rows is kept (a DuckDB model read in place, or no snapshot "
            "yet): the row's current values are in the warehouse"
        )
    elif sync.partitions is not None and window is not None and window not in tables:
        notes.append(
            f"the rows of window {window} are not kept: the state keeps the model rows of the "
            "latest run's windows (and the window before the first) only"
        )
    found = []
    for window_key, table in sorted(tables.items(), key=lambda item: item[0] or ""):
        if window is not None and window_key != window:
            continue
        rows = reader.rows(
            f"select * from {table} where {reader.model_key_sql(sync.primary_key)} = $1", [key]
        )
        for row in rows:
            values = {k: _json_value(v) for k, v in row.items() if k not in _FINGERPRINT_COLUMNS}
            found.append({"window": window_key, "values": values})
    return found


def _pending(
    reader: _Reader, sync: SyncConfig, key: str, window: str | None
) -> list[dict[str, Any]]:
    rows = reader.rows(
        f"""
        select __rs_window, __rs_change_id, __rs_change, __rs_send, __rs_message_id,
               __rs_timestamp, __rs_attempts, __rs_last_error, __rs_first_seen, __rs_origin,
               {reader.committed_sql} as __rs_committed
        from {reader.table("pending")}
        where __rs_pk = $1 and {_window_filter("__rs_window", window)}
        order by __rs_change_id
        """,
        [key],
    )
    changes = []
    for row in rows:
        attempts = int(row["__rs_attempts"] or 0)
        if row["__rs_committed"]:
            status = "delivered (the snapshot takes it at the sync's next run)"
        elif not row["__rs_send"]:
            status = f"not sent ({sync.type} sync sends no '{row['__rs_change']}' event)"
        elif sync.max_attempts is not None and attempts >= sync.max_attempts:
            status = "quarantined"
        else:
            status = "pending"
        changes.append(
            {
                "window": row["__rs_window"],
                "change": row["__rs_change"],
                "status": status,
                "message_id": row["__rs_message_id"],
                "timestamp": row["__rs_timestamp"],
                "attempts": attempts,
                "max_attempts": sync.max_attempts,
                "last_error": row["__rs_last_error"],
                "first_seen": _json_value(row["__rs_first_seen"]),
                "origin": row["__rs_origin"],
            }
        )
    return changes


def _rejected(
    reader: _Reader, sync: SyncConfig, key: str, window: str | None
) -> list[dict[str, Any]]:
    rows = reader.rows(
        f"""
        select __rs_window, reason, __rs_attempts, __rs_first_seen
        from {reader.table("rejected_rows")}
        where __rs_pk = $1 and {_window_filter("__rs_window", window)}
        order by __rs_window, reason
        """,
        [key],
    )
    return [
        {
            "window": row["__rs_window"],
            "status": "quarantined"
            if sync.max_attempts is not None and (row["__rs_attempts"] or 0) >= sync.max_attempts
            else "rejected",
            "reason": row["reason"],
            "attempts": int(row["__rs_attempts"] or 0),
            "max_attempts": sync.max_attempts,
            "first_seen": _json_value(row["__rs_first_seen"]),
        }
        for row in rows
    ]


def _deliveries(
    reader: _Reader, sync: SyncConfig, key: str, window: str | None
) -> list[dict[str, Any]]:
    rows = reader.rows(
        f"""
        select run_id, window_key, change, message_id, status, error, attempt, logged_at
        from {reader.table("delivery_log")}
        where pk = $1 and {_window_filter("window_key", window)}
        order by logged_at, change_id, attempt
        """,
        [key],
    )
    return [
        {
            "time": _json_value(row["logged_at"]),
            "message_id": row["message_id"],
            "run_id": row["run_id"],
            "status": row["status"],
            "event_type": sync.type,
            "event": sync.event_name(row["change"]),
            "change": row["change"],
            "attempt": row["attempt"],
            "error": row["error"],
            "window": row["window_key"],
        }
        for row in rows
    ]


def _what_is_not_kept(sync: SyncConfig) -> list[str]:
    if sync.partitions is not None:
        return [
            "a partitioned sync keeps no committed snapshot: each window is diffed against the "
            "window before it"
        ]
    kept = (
        "the content of its last event (the sync sends 'removed')"
        if sync.sends("removed")
        else "the content of its last event when that change was sent"
    )
    return [
        "the committed snapshot keeps a fingerprint (hash) of the values, the IDs and "
        f"{kept}, not the model row itself"
    ]


def _json_value(value: Any) -> Any:
    """A value as JSON shows it: times in ISO 8601, other non-JSON types as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


# -- the two kinds of state ----------------------------------------------------------------------


@contextmanager
def _open_reader(
    project: ProjectConfig, sync: SyncConfig, dry_run_state: bool
) -> Iterator[_Reader]:
    from .warehouse_state import state_in_warehouse
    from .warehouses import build_warehouse

    if getattr(project.warehouse, "state_schema", None):
        warehouse = build_warehouse(project.warehouse).process_config_and_initialize()
        if state_in_warehouse(warehouse):
            with _WarehouseReader.open(warehouse, project, sync, dry_run_state) as reader:
                yield reader
                return
    with _LocalReader.open(project.state, sync, dry_run_state, in_warehouse=False) as reader:
        yield reader


class _LocalReader:
    """A local state file (`<state>/<sync>.duckdb`), opened read-only."""

    kind = "local"

    def __init__(self, conn: Any, path: Path) -> None:
        self.conn = conn
        self.where = str(path)

    @classmethod
    @contextmanager
    def open(
        cls, state_dir: Path, sync: SyncConfig, dry_run_state: bool, in_warehouse: bool
    ) -> Iterator[_LocalReader]:
        import duckdb

        path = state_path(state_dir, sync.name, dry_run_state)
        if not path.exists():
            raise StateError(_no_state(sync.name, str(path), state_dir, dry_run_state))
        try:
            conn = duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as exc:
            cause = " ".join(str(exc).split())
            if "lock" not in cause.lower():
                raise StateError(
                    f"sync '{sync.name}': cannot read its state {path}: {cause}"
                ) from None
            raise StateError(
                f"sync '{sync.name}': its state {path} is locked by a running sync; retry when "
                "that run has finished."
            ) from None
        try:
            reader = cls(conn, path)
            meta = dict(conn.execute("select key, value from meta").fetchall())
            version = meta.get("schema_version")
            if version != str(SCHEMA_VERSION):
                raise StateError(
                    f"sync '{sync.name}': its state {path} has schema version {version}, this "
                    f"lookup reads version {SCHEMA_VERSION}. Fix: run the sync once with this "
                    "rudder_sync (it upgrades the state in place), then look up again."
                )
            if meta.get(MOVED_KEY) and not in_warehouse:
                raise StateError(
                    f"sync '{sync.name}': its state {path} was moved to {meta[MOVED_KEY]} "
                    "(state_schema). Fix: look up with the config that sets state_schema."
                )
            yield reader
        finally:
            conn.close()

    def table(self, role: str) -> str:
        return role

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, list(params))
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def model_tables(self) -> dict[str | None, str]:
        from .partitions import _WINDOW_PREFIX

        names = self._tables()
        tables: dict[str | None, str] = {}
        if "model_rows" in names:
            tables[None] = "model_rows"
        for name in names:
            if name.startswith(_WINDOW_PREFIX):
                tables[name[len(_WINDOW_PREFIX) :]] = quote_ident(name)
        return tables

    def model_key_sql(self, primary_key: str) -> str:
        return f"cast({quote_ident(primary_key)} as varchar)"

    hash_sql = "cast(__rs_hash as varchar)"  # a ubigint in DuckDB

    @property
    def committed_sql(self) -> str:
        if "committed_ranges" not in self._tables():  # a state older than the table
            return "false"
        return (
            "exists (select 1 from committed_ranges c "
            "where __rs_change_id between c.first_change_id and c.last_change_id)"
        )

    def _tables(self) -> list[str]:
        return [
            row["table_name"]
            for row in self.rows(
                "select table_name from duckdb_tables() where database_name = current_database()"
            )
        ]


class _WarehouseReader:
    """A state in the warehouse's `state_schema`, through its engine's store (`StateStore`):
    read in one read-only transaction where the engine has them, never locked, never written."""

    kind = "warehouse"
    hash_sql = "__rs_hash"  # stored as text
    committed_sql = "false"  # commits there move the snapshot in the same transaction

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.where = store.where

    @classmethod
    @contextmanager
    def open(
        cls, warehouse: Any, project: ProjectConfig, sync: SyncConfig, dry_run_state: bool
    ) -> Iterator[Any]:
        from .warehouse_state.sql import Tables
        from .warehouse_state.store import open_store

        prefix = f"{sync.name}__dry_run" if dry_run_state else sync.name
        store = open_store(warehouse, Tables(warehouse.state_schema, prefix), sync.name)
        try:
            try:
                store.begin_read_only()
                exists = store.exists(store.tables.meta)
            except store.error_types as exc:
                raise store.error("cannot read its state", exc) from None
            if not exists:
                # A local state is moved in at the sync's next run: until then it is the state.
                local = state_path(project.state, sync.name, dry_run_state)
                if local.exists():
                    with _LocalReader.open(project.state, sync, dry_run_state, True) as reader:
                        yield reader
                        return
                raise StateError(_no_state(sync.name, store.where, project.state, dry_run_state))
            try:
                yield cls(store)
            except store.error_types as exc:
                raise store.error("cannot read its state", exc) from None
        finally:
            store.close()

    def table(self, role: str) -> str:
        return str(getattr(self.store.tables, role))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.store.arrow(sql, list(params) or None).to_pylist()

    def model_tables(self) -> dict[str | None, str]:
        from .warehouse_state.sql import WINDOW_INFIX

        tables = self.store.tables
        names = self.store.table_names(tables.prefix)
        found: dict[str | None, str] = {}
        if tables.name("model") in names:
            found[None] = tables.model
        prefix = tables.prefix + WINDOW_INFIX
        for name in names:
            if name.startswith(prefix):
                found[name[len(prefix) :]] = tables.qualified(name)
        return found

    def model_key_sql(self, primary_key: str) -> str:
        return "__rs_wpk"


def _window_keys(sync: SyncConfig, mangled: Sequence[str]) -> dict[str, str]:
    """The window key of each window table's name part (`partitions.window_table` replaced the
    key's punctuation), from the sync's partitions; a part no window matches stays as it is."""
    from .partitions import _WINDOW_PREFIX, partitions_definition, window_table

    if sync.partitions is None:
        return {}
    keys = partitions_definition(sync.partitions).get_partition_keys()
    by_table = {window_table(k)[len(_WINDOW_PREFIX) :]: k for k in keys}
    return {part: by_table.get(part, part) for part in mangled}


def _no_state(sync_name: str, where: str, state_dir: Path, dry_run_state: bool) -> str:
    other = state_path(state_dir, sync_name, not dry_run_state)
    hint = ""
    if not dry_run_state and other.exists():
        hint = f" A dry run's state exists ({other}): add --dry-run-state to read it."
    return (
        f"sync '{sync_name}' has no state in {where} yet: it has not run (or its state is "
        f"elsewhere: check 'state' and 'state_schema' in the config).{hint}"
    )


# -- output -------------------------------------------------------------------------------------


def render(result: RecordLookup) -> str:
    """The lookup as short blocks for people: snapshot, model rows, changes, deliveries."""
    window = f", window {result.window}" if result.window else ""
    head = f"sync '{result.sync}', key '{result.key}'{window} ({result.kind} state {result.state})"
    if not result.found:
        scope = f" in window {result.window}" if result.window else ""
        return (
            f"{head}\nkey '{result.key}' was never seen{scope}: the state has no snapshot row, "
            "model row, pending change, rejected row or delivery for it."
        )
    lines = [head, ""]
    lines += _snapshot_block(result)
    lines += _model_block(result)
    lines += _changes_block(result)
    lines += _deliveries_block(result)
    lines += ["what the state keeps:", *(f"  {note}" for note in result.notes)]
    return "\n".join(lines)


def _snapshot_block(result: RecordLookup) -> list[str]:
    snapshot = result.snapshot
    if result.partitioned:
        return []
    if snapshot is None:
        return ["snapshot: none (never committed)", ""]
    lines = [
        f"snapshot: {snapshot['status']}, version {snapshot['version']}, committed "
        f"{snapshot['committed_at']}, fingerprint {snapshot['fingerprint']}",
        f"  user_id: {snapshot['user_id']}  anonymous_id: {snapshot['anonymous_id']}",
    ]
    if snapshot["last_event_content"] is not None:
        content = json.dumps(snapshot["last_event_content"], sort_keys=True)
        lines.append(f"  last event content: {content}")
    return [*lines, ""]


def _model_block(result: RecordLookup) -> list[str]:
    if not result.model_rows:
        return ["model row (latest snapshot): none", ""]
    lines = []
    for row in result.model_rows:
        where = f" of window {row['window']}" if row["window"] else ""
        values = ", ".join(f"{k}={_text(v)}" for k, v in row["values"].items())
        lines.append(f"model row{where} (latest snapshot): {values}")
    return [*lines, ""]


def _changes_block(result: RecordLookup) -> list[str]:
    lines = [f"pending changes: {len(result.pending) or 'none'}"]
    for change in result.pending:
        where = f" window {change['window']}," if change["window"] else ""
        error = f", last error: {change['last_error']}" if change["last_error"] else ""
        lines.append(
            f" {where} {change['change']}: {change['status']}, messageId {change['message_id']}, "
            f"attempts {change['attempts']}/{change['max_attempts'] or 'unlimited'}{error}"
        )
    lines.append(f"rejected rows: {len(result.rejected) or 'none'}")
    for row in result.rejected:
        where = f" window {row['window']}," if row["window"] else ""
        lines.append(
            f" {where} {row['status']}: {row['reason']} (diffs in a row: {row['attempts']}, "
            f"since {row['first_seen']})"
        )
    return [*lines, ""]


def _deliveries_block(result: RecordLookup) -> list[str]:
    lines = [f"deliveries: {len(result.deliveries) or 'none'}"]
    for item in result.deliveries:
        event = f" '{item['event']}'" if item["event"] else ""
        where = f" window {item['window']}" if item["window"] else ""
        error = f" error: {item['error']}" if item["error"] else ""
        lines.append(
            f"  {item['time']} {item['status']} {item['event_type']}{event} ({item['change']})"
            f"{where} messageId {item['message_id']} run {item['run_id']} "
            f"attempt {item['attempt']}{error}"
        )
    return [*lines, ""]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
