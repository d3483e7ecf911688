"""Added / changed / removed, computed inside DuckDB; pandas only ever sees the changed rows.

A row's event content (IDs and mapped fields) is rendered to JSON by the rules in `jsonvalues`,
hashed, and compared by primary key with the committed snapshot. Each change gets its messageId and
timestamp here, once: a change that is still pending from an earlier run keeps the ones it had, so a
re-send is the same event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson
import pandas as pd

from .config import CHANGE_TYPES, SyncConfig
from .jsonvalues import column_types, id_sql, json_object_sql, quote_ident, quote_literal
from .jsonvalues import timestamp_sql as render_timestamp_sql
from .state import SyncState

REJECTED_SAMPLE = 20
SEP = "chr(31)"


class ModelColumnsError(ValueError):
    """The model does not return a column the sync config names."""


@dataclass
class DiffSummary:
    """What a diff found, for metadata and logs."""

    model_rows: int
    counts: dict[str, int]
    to_send: dict[str, int]
    rejected_count: int
    rejected_sample: list[tuple[str, str]] = field(default_factory=list)
    first_run: bool = False

    @property
    def total_changes(self) -> int:
        return sum(self.counts.values())


def check_model_columns(sync: SyncConfig, columns: list[str]) -> None:
    """Fail with the missing column's name, the key that names it, and the columns that exist."""
    role = {sync.primary_key: "primary_key"}
    for key in ("user_id", "anonymous_id", "timestamp", "message_id"):
        value = getattr(sync, key)
        if value:
            role.setdefault(value, key)
    for event_field, column in sync.mapping.items():
        role.setdefault(column, f"mapping.{event_field}")
    missing = [c for c in sync.required_columns if c not in columns]
    if missing:
        described = ", ".join(f"'{c}' (from '{role[c]}')" for c in missing)
        raise ModelColumnsError(
            f"sync '{sync.name}': the model does not return column {described}. "
            f"Its columns are: {', '.join(columns) or '(none)'}. "
            "Fix: select that column in the model, or change the sync config."
        )


def compute_diff(state: SyncState, sync: SyncConfig, now: datetime) -> DiffSummary:
    """Rebuild `pending` and `rejected_rows` from `model_rows` against the committed snapshot."""
    conn = state.conn
    types = column_types(conn, "model_rows")
    check_model_columns(sync, list(types))
    first_run = not state.initialized

    conn.execute(f"create or replace temp table __rs_current as {_render_sql(sync, types)}")
    conn.execute(
        f"""
        create or replace temp table __rs_current_hashed as
        select *, md5_number(coalesce(__rs_user_id, '') || {SEP} ||
                             coalesce(__rs_anonymous_id, '') || {SEP} || __rs_props) as __rs_hash
        from __rs_current
        """
    )
    with state.transaction():
        conn.execute(f"delete from rejected_rows; insert into rejected_rows {_rejected_sql(sync)}")
        conn.execute(
            f"create or replace temp table __rs_changes as {_changes_sql(sync, first_run)}"
        )
        conn.execute(
            f"""
            create or replace temp table __rs_new_pending as
            select row_number() over (order by c.__rs_change, c.__rs_pk) as __rs_change_id,
                   c.__rs_pk, c.__rs_change, c.__rs_hash, c.__rs_version,
                   coalesce(o.__rs_message_id, c.__rs_row_message_id,
                            {_deterministic_id_sql(sync)}) as __rs_message_id,
                   coalesce(o.__rs_timestamp, c.__rs_row_timestamp,
                            strftime(?::timestamptz at time zone 'UTC',
                                     '%Y-%m-%dT%H:%M:%S.%fZ')) as __rs_timestamp,
                   c.__rs_user_id, c.__rs_anonymous_id, c.__rs_props, c.__rs_send,
                   coalesce(o.__rs_first_seen, ?::timestamptz) as __rs_first_seen,
                   coalesce(o.__rs_attempts, 0) as __rs_attempts,
                   o.__rs_last_error
            from __rs_changes c
            left join pending o
              on o.__rs_pk = c.__rs_pk and o.__rs_change = c.__rs_change
             and o.__rs_hash is not distinct from c.__rs_hash
             and o.__rs_version = c.__rs_version
            """,
            [now, now],
        )
        conn.execute("delete from pending; insert into pending select * from __rs_new_pending")
        conn.execute("drop table __rs_new_pending")
        conn.execute("drop table __rs_changes")
    conn.execute("drop table __rs_current; drop table __rs_current_hashed")
    return _summarize(state, first_run)


def _render_sql(sync: SyncConfig, types: dict) -> str:
    """Each model row with its rendered IDs, properties/traits, timestamp and message ID."""
    pk = quote_ident(sync.primary_key)

    def ident(column: str | None) -> str:
        return id_sql(quote_ident(column), types[column]) if column else "null::varchar"

    props = json_object_sql(
        [(name, quote_ident(column), types[column]) for name, column in sync.mapping.items()]
    )
    row_ts = (
        render_timestamp_sql(quote_ident(sync.timestamp), types[sync.timestamp])
        if sync.timestamp
        else "null::varchar"
    )
    return f"""
        select cast({pk} as varchar) as __rs_pk,
               {ident(sync.user_id)} as __rs_user_id,
               {ident(sync.anonymous_id)} as __rs_anonymous_id,
               {props} as __rs_props,
               {row_ts} as __rs_row_timestamp,
               {ident(sync.message_id)} as __rs_row_message_id,
               count(*) over (partition by cast({pk} as varchar)) as __rs_key_rows
        from model_rows
    """


def _rejected_sql(sync: SyncConfig) -> str:
    id_columns = " / ".join(
        f"{k} column '{getattr(sync, k)}'" for k in ("user_id", "anonymous_id") if getattr(sync, k)
    )
    no_id = quote_literal(f"neither user ID nor anonymous ID ({id_columns} null or blank)")
    return f"""
        select coalesce(__rs_pk, '(null)'),
               case when __rs_pk is null then 'null primary key'
                    when __rs_key_rows > 1
                      then 'duplicate primary key (' || __rs_key_rows || ' rows)'
                    else {no_id} end
        from __rs_current
        where __rs_pk is null or __rs_key_rows > 1
           or (__rs_user_id is null and __rs_anonymous_id is null)
        order by 1
    """


def _changes_sql(sync: SyncConfig, first_run: bool) -> str:
    def sends(change: str) -> str:
        send = sync.sends(change)
        if change == "added" and first_run and sync.type == "track":
            send = send and sync.send_initial_results
        return "true" if send else "false"

    # Track syncs keep the rendered event in the snapshot: a `removed` event needs the last values.
    keep_props = "true" if sync.type == "track" else "false"
    return f"""
        with valid as (
            select * from __rs_current_hashed
            where __rs_pk is not null and __rs_key_rows = 1
              and (__rs_user_id is not null or __rs_anonymous_id is not null)
        ),
        present as (select distinct __rs_pk from __rs_current where __rs_pk is not null)
        select v.__rs_pk, 'added' as __rs_change, v.__rs_hash,
               coalesce(s.__rs_version, 0) + 1 as __rs_version,
               v.__rs_user_id, v.__rs_anonymous_id,
               case when {keep_props} or {sends("added")} then v.__rs_props end as __rs_props,
               v.__rs_row_timestamp, v.__rs_row_message_id, {sends("added")} as __rs_send
        from valid v left join snapshot s on s.__rs_pk = v.__rs_pk
        where s.__rs_pk is null or s.__rs_deleted
        union all
        select v.__rs_pk, 'changed', v.__rs_hash, s.__rs_version + 1,
               v.__rs_user_id, v.__rs_anonymous_id,
               case when {keep_props} or {sends("changed")} then v.__rs_props end,
               v.__rs_row_timestamp, v.__rs_row_message_id, {sends("changed")}
        from valid v join snapshot s on s.__rs_pk = v.__rs_pk
        where not s.__rs_deleted and s.__rs_hash is distinct from v.__rs_hash
        union all
        select s.__rs_pk, 'removed', null, s.__rs_version + 1,
               s.__rs_user_id, s.__rs_anonymous_id, coalesce(s.__rs_props, '{{}}'),
               null, null, {sends("removed")}
        from snapshot s anti join present p on p.__rs_pk = s.__rs_pk
        where not s.__rs_deleted
    """


def _deterministic_id_sql(sync: SyncConfig) -> str:
    """A UUID-shaped md5 of (sync, key, version, change, content): same change, same ID."""
    digest = (
        f"md5({quote_literal(sync.name)} || {SEP} || c.__rs_pk || {SEP} || c.__rs_version || "
        f"{SEP} || c.__rs_change || {SEP} || coalesce(c.__rs_hash::varchar, ''))"
    )
    parts = [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]
    return " || '-' || ".join(f"substr({digest}, {start}, {length})" for start, length in parts)


def _summarize(state: SyncState, first_run: bool) -> DiffSummary:
    conn = state.conn
    rows = conn.execute(
        "select __rs_change, count(*), count(*) filter (where __rs_send) from pending group by 1"
    ).fetchall()
    counts = {change: 0 for change in CHANGE_TYPES}
    to_send = {change: 0 for change in CHANGE_TYPES}
    for change, total, sending in rows:
        counts[change], to_send[change] = int(total), int(sending)
    sample = conn.execute(
        f"select * from rejected_rows order by 1 limit {REJECTED_SAMPLE}"
    ).fetchall()
    return DiffSummary(
        model_rows=state.count("model_rows"),
        counts=counts,
        to_send=to_send,
        rejected_count=state.count("rejected_rows"),
        rejected_sample=[(str(pk), str(reason)) for pk, reason in sample],
        first_run=first_run,
    )


def pending_frame(state: SyncState, sync: SyncConfig) -> pd.DataFrame:
    """The diff as users read it: key, change type, and the fields the event carries."""
    frame = state.conn.execute(
        """
        select __rs_pk, __rs_change, __rs_send, __rs_message_id, __rs_timestamp,
               __rs_user_id, __rs_anonymous_id, __rs_props
        from pending order by __rs_change_id
        """
    ).df()
    frame.columns = [
        sync.primary_key,
        "change_type",
        "will_send",
        "message_id",
        "timestamp",
        "user_id",
        "anonymous_id",
        "__props",
    ]
    props = [orjson.loads(p) if p else {} for p in frame.pop("__props")]
    for name in sync.mapping:
        column = name if name not in frame.columns else f"{name} (mapped)"
        frame[column] = [p.get(name) for p in props]
    return frame
