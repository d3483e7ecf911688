"""Added / changed / removed, computed inside DuckDB; pandas only ever sees the changed rows.

A row's event content (IDs and mapped fields) is rendered to JSON by the rules in `jsonvalues`,
hashed, and compared by primary key with the committed snapshot. Each change gets its messageId and
timestamp here, once: a change that is still pending from an earlier run keeps the ones it had, so a
re-send is the same event.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import pandas as pd

from .config import CALL_COLUMN_KEYS, CHANGE_TYPES, SyncConfig
from .errors import ModelColumnsError
from .events import EXTRAS_SEP, content_sql
from .jsonvalues import (
    column_types,
    id_sql,
    json_fields_sql,
    json_value_sql,
    quote_ident,
    quote_literal,
)
from .jsonvalues import timestamp_sql as render_timestamp_sql
from .state import SALT_KEY, SyncState, run
from .warehouses.duckdb import AttachedModel

REJECTED_SAMPLE = 20
SEP = "chr(31)"


@dataclass
class DiffSummary:
    """What a diff found, for metadata and logs."""

    model_rows: int
    counts: dict[str, int]
    to_send: dict[str, int]
    rejected_count: int
    rejected_sample: list[tuple[str, str]] = field(default_factory=list)
    first_run: bool = False
    base_rows: int = 0  # rows the diff compared against: the committed snapshot or last window


def check_model_columns(sync: SyncConfig, columns: list[str]) -> None:
    """Fail with the missing column's name, the key that names it, and the columns that exist."""
    role = {sync.primary_key: "primary_key"}
    for key in ("user_id", "anonymous_id", "timestamp", "message_id"):
        value = getattr(sync, key)
        if value:
            role.setdefault(value, key)
    for event_field, column in sync.mapping.items():
        role.setdefault(column, f"mapping.{event_field}")
    if sync.call_column:
        role.setdefault(sync.call_column, CALL_COLUMN_KEYS[sync.type][0])
    for change, column in sync.event_columns.items():
        role.setdefault(column, f"events.{change}.column")
    for context_field, column in sync.context.items():
        role.setdefault(column, f"context.{context_field}")
    missing = [c for c in sync.required_columns if c not in columns]
    if missing:
        described = ", ".join(f"'{c}' (from '{role[c]}')" for c in missing)
        raise ModelColumnsError(
            f"sync '{sync.name}': the model does not return column {described}. "
            f"Its columns are: {', '.join(columns) or '(none)'}. "
            "Fix: select that column in the model, or change the sync config."
        )


@dataclass(frozen=True)
class Window:
    """One time partition: its rows are diffed against the previous window's, not the state."""

    key: str
    end: datetime
    rows: str  # relation holding the model over this window
    previous_rows: str | None  # relation holding the model over the window before (None: first)


@dataclass(frozen=True)
class DiffMode:
    """How a run's diff treats the committed state (run config of the diff step).

    ``resync``: every current row is a change ('added'), with messageIds made new by ``nonce``.
    ``reset_baseline``: every change is recorded as delivered without an event.
    Both apply to unpartitioned syncs only: windows have no committed state.
    """

    resync: bool = False
    reset_baseline: bool = False
    nonce: str = ""


def compute_diff(
    state: SyncState,
    sync: SyncConfig,
    now: datetime,
    window: Window | None = None,
    mode: DiffMode | None = None,
    model: AttachedModel | None = None,
) -> DiffSummary:
    """Rebuild the pending changes (of one window, for partitioned syncs).

    Unpartitioned: `model_rows` (or ``model``, read in place) against the committed snapshot.
    Partitioned: the window's rows against the previous window's, so a window's events depend
    only on the model.

    Two passes keep the cost near a bare join: every row gets a cheap fingerprint (key, content
    hash, ID present); only the rows that changed are then rendered to JSON.

    A resync whose delivery began and did not finish is carried on by later diffs: its pending
    rows stay (same messageIds) while their row is unchanged.
    """
    mode = mode or DiffMode()
    if window is not None and (mode.resync or mode.reset_baseline):
        raise ValueError("resync and reset_baseline apply to unpartitioned syncs only")
    if model is not None:
        current, reading = model.relation, model.reading
    else:
        current, reading = (window.rows if window else "model_rows"), nullcontext
    with reading():
        types = _fingerprint_current(state, sync, current)
    first_run, base = _choose_base(state, sync, window)
    window_key = window.key if window else None
    carry_resync = window is None and not (mode.resync or mode.reset_baseline)
    stages = window is None and _stages_baseline(state, sync, first_run, mode)
    staged = 0
    with state.transaction():
        state.replace_rejected_rows(window_key, _REJECTED_SQL, now)
        if stages:
            with reading():
                staged = _stage_baseline(state, sync, types, current)
        elif window is None:
            state.drop_staged_baseline()
        _find_changes(state, sync, first_run, base, mode)
        with reading():
            _render_changed_rows(state, sync, types, current, window)
        state.replace_pending(
            window_key,
            _new_changes_sql(
                state, sync, window, mode, default_timestamp=window.end if window else now
            ),
            now,
            keep_started_resync_of=_VALID_CURRENT if carry_resync else None,
        )
        run(state.conn, "drop table __rs_changes; drop table __rs_rendered")
    summary = _summarize(state, first_run, window_key, base, sync.max_attempts)
    summary.counts["added"] += staged
    summary.model_rows += staged
    run(state.conn, "drop table __rs_current; drop table if exists __rs_base")
    return summary


def _stages_baseline(state: SyncState, sync: SyncConfig, first_run: bool, mode: DiffMode) -> bool:
    """Whether this diff is a first run whose added rows send nothing (a track sync without
    send_initial_results) against an empty snapshot: its baseline is then staged
    (`_stage_baseline`), not written as pending rows. Not for a state whose commits are
    mirrored (the warehouse's)."""
    return (
        first_run
        and not (mode.resync or mode.reset_baseline)
        and not _sends(sync, "added", first_run, mode)
        and not state.mirrors_commits
        and not state.count("snapshot")
    )


def _stage_baseline(state: SyncState, sync: SyncConfig, types: dict, current: str) -> int:
    """Stage a first run's baseline (`SyncState.stage_baseline`): every valid row but the first
    `FRAME_SILENT_ROWS` by key; how many. `__rs_current` keeps only those first rows (and the
    rows that cannot be sent), which become silent pending rows as in any diff, so the diff's
    output lists the same rows as ever (their change IDs follow the key).

    Each staged row is fingerprinted and, where `removed` events need its values, rendered in
    one scan of the model, as the pending path would have: no join of the model with its own
    fingerprints, which at 100M rows needed more than DuckDB's default 1 GB."""
    valid = "__rs_pk is not null and __rs_key_rows = 1 and __rs_problem is null"
    run(
        state.conn,
        f"""
        create or replace temp table __rs_listed as
        select __rs_pk from __rs_current where {valid}
        order by __rs_pk limit {FRAME_SILENT_ROWS};
        create or replace temp table __rs_repeated as
        select __rs_pk from __rs_current where __rs_pk is not null and __rs_key_rows > 1
        """,
    )
    if sync.sends("removed"):
        rendered = _render_sql(sync, types)
    else:  # the snapshot keeps no values: no `removed` event to build from them
        rendered = (
            f"select cast(m.{quote_ident(sync.primary_key)} as varchar) as __rs_pk, "
            "null::varchar as __rs_user_id, null::varchar as __rs_anonymous_id, "
            "null::varchar as __rs_props"
        )
    staged = state.stage_baseline(
        f"""
        select __rs_pk, __rs_hash, 1::bigint as __rs_version, __rs_user_id, __rs_anonymous_id,
               __rs_props
        from ({rendered}, {_content_hash_sql(sync)} as __rs_hash,
                          {_problem_sql(sync, types)} as __rs_problem
              from {current} m)
        where __rs_pk is not null and __rs_problem is null
          and __rs_pk not in (select __rs_pk from __rs_repeated)
          and __rs_pk not in (select __rs_pk from __rs_listed)
        """
    )
    run(
        state.conn,
        f"""
        create or replace temp table __rs_current as
        select * from __rs_current
        where not ({valid}) or __rs_pk in (select __rs_pk from __rs_listed);
        drop table __rs_listed; drop table __rs_repeated
        """,
    )
    return staged


# The current rows that can be sent (one row for their key, nothing missing).
_VALID_CURRENT = (
    "(select __rs_pk, __rs_hash from __rs_current where __rs_key_rows = 1 and __rs_problem is null)"
)


def _fingerprint_current(state: SyncState, sync: SyncConfig, current: str) -> dict:
    """Stage 1: check the model's columns and fingerprint its rows into `__rs_current`; the
    columns' types."""
    types = column_types(state.conn, current)
    check_model_columns(sync, list(types))
    fingerprint = _fingerprint_sql(sync, types, current)
    run(state.conn, f"create or replace temp table __rs_current as {fingerprint}")
    return types


def _choose_base(state: SyncState, sync: SyncConfig, window: Window | None) -> tuple[bool, str]:
    """Stage 2: what the diff compares with, and whether that is nothing yet (a first run).

    The committed snapshot; for a window, the previous window's valid rows as `__rs_base` (none
    before the first window).
    """
    if window is None:
        return not state.initialized, "snapshot"
    previous = window.previous_rows or f"(select * from {window.rows} limit 0)"
    run(
        state.conn,
        f"""
        create or replace temp table __rs_base as
        select __rs_pk, __rs_hash, 0::bigint as __rs_version, false as __rs_deleted,
               null::varchar as __rs_user_id, null::varchar as __rs_anonymous_id,
               null::varchar as __rs_props
        from ({_fingerprint_sql(sync, column_types(state.conn, previous), previous)})
        where __rs_pk is not null and __rs_key_rows = 1 and __rs_problem is null
        """,
    )
    return window.previous_rows is None, "__rs_base"


def _find_changes(
    state: SyncState, sync: SyncConfig, first_run: bool, base: str, mode: DiffMode
) -> None:
    """Stage 3: the changes by key into `__rs_changes` (see `_changes_sql`)."""
    changes = _changes_sql(sync, first_run, base, mode)
    run(state.conn, f"create or replace temp table __rs_changes as {changes}")


def _render_changed_rows(
    state: SyncState, sync: SyncConfig, types: dict, current: str, window: Window | None
) -> None:
    """Stage 4: render to JSON only the rows of changes that need it, into `__rs_rendered`.

    Added and changed rows come from the current rows; a window's removed rows from the previous
    window's (an unpartitioned sync's removed rows carry what the snapshot kept).
    """
    pk = quote_ident(sync.primary_key)
    run(
        state.conn,
        f"""
        create or replace temp table __rs_rendered as
        {_render_sql(sync, types)} from {current} m
        semi join (select __rs_pk from __rs_changes
                   where __rs_render and __rs_change <> 'removed') r
          on r.__rs_pk = cast(m.{pk} as varchar)
        """,
    )
    if window is not None and window.previous_rows is not None:
        previous_render = _render_sql(sync, column_types(state.conn, window.previous_rows))
        run(
            state.conn,
            f"""
            insert into __rs_rendered
            {previous_render} from {window.previous_rows} m
            semi join (select __rs_pk from __rs_changes
                       where __rs_render and __rs_change = 'removed') r
              on r.__rs_pk = cast(m.{pk} as varchar)
            """,
        )


def _new_changes_sql(
    state: SyncState,
    sync: SyncConfig,
    window: Window | None,
    mode: DiffMode,
    default_timestamp: datetime,
) -> str:
    """Stage 5: SQL of the changes as new pending rows, for `SyncState.replace_pending`.

    Each takes its IDs and content from its rendering (a removed row: from the base), and the
    messageId and timestamp a new change gets: the row's own columns when the sync names them,
    else a deterministic ID and ``default_timestamp`` (now, or the window's end).
    """
    window_key = window.key if window else None
    salt = state.get_meta(SALT_KEY) if window is None else sync.message_id_salt
    digest = _digest_sql(sync, window_key, salt, mode.nonce if mode.resync else None)
    origin = "'resync'" if mode.resync else "null::varchar"
    default_ts = run(
        state.conn,
        "select strftime(?::timestamptz at time zone 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ')",
        [default_timestamp],
    )[0][0]
    return f"""
        with c as (
            select c.*,
                   coalesce(r.__rs_user_id, c.__rs_base_user_id) as __rs_user_id,
                   coalesce(r.__rs_anonymous_id, c.__rs_base_anonymous_id)
                       as __rs_anonymous_id,
                   coalesce(r.__rs_props, c.__rs_base_props,
                            case when c.__rs_render then '{{}}' end) as __rs_props,
                   case when c.__rs_change <> 'removed' then r.__rs_row_timestamp end
                       as __rs_row_timestamp,
                   case when c.__rs_change <> 'removed' then r.__rs_row_message_id end
                       as __rs_row_message_id,
                   case when c.__rs_send then {digest} end as __rs_digest
            from __rs_changes c
            left join __rs_rendered r on r.__rs_pk = c.__rs_pk
        )
        select c.__rs_pk, c.__rs_change, c.__rs_hash, c.__rs_version, c.__rs_send,
               coalesce(c.__rs_row_message_id, {_uuid_shape("c.__rs_digest")}) as __rs_message_id,
               coalesce(c.__rs_row_timestamp, {quote_literal(default_ts)}) as __rs_timestamp,
               c.__rs_user_id, c.__rs_anonymous_id, c.__rs_props,
               case when c.__rs_change <> 'removed' then {origin} end as __rs_origin
        from c
    """


def _fingerprint_sql(sync: SyncConfig, types: dict, relation: str) -> str:
    """Per model row: key, whether the key repeats, why it cannot be sent, a content hash.

    The hash covers the carried columns' raw values and the sync's shape (field names, fixed
    values), so a change of any value the event carries, or of the mapping, is a change; other
    columns are not hashed.
    """
    pk = f"cast({quote_ident(sync.primary_key)} as varchar)"
    # Duplicate keys by aggregation, not a window function: it is cheaper and spills to disk.
    # First by the key's 64-bit hash, then by the key among the few rows whose hash repeats:
    # grouping 100M text keys ran out of DuckDB's default 1 GB, grouping their hashes does not.
    return f"""
        with h as (
            select hash({pk}) as __rs_key_hash from {relation}
            group by all having count(*) > 1
        ),
        d as (
            select {pk} as __rs_pk, count(*) as n from {relation}
            where hash({pk}) in (select __rs_key_hash from h)
            group by all having count(*) > 1
        ),
        f as (
            select {pk} as __rs_pk,
                   {_content_hash_sql(sync)} as __rs_hash,
                   {_problem_sql(sync, types)} as __rs_problem
            from {relation}
        )
        select f.*, coalesce(d.n, 1) as __rs_key_rows from f left join d using (__rs_pk)
    """


def _content_hash_sql(sync: SyncConfig) -> str:
    """A row's content hash (its carried columns, unqualified, and the sync's shape)."""
    carried = ", ".join(quote_ident(c) for c in sync.carried_columns)
    return f"hash({carried}, {quote_literal(content_shape(sync))})"


def sync_shape(sync: SyncConfig) -> str:
    """A hash of what determines a sync's events (its content shape and primary key), recorded
    in its state so that the state of another sync is recognised (`SyncState.check_identity`)."""
    text = f"{sync.primary_key}{chr(31)}{content_shape(sync)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_shape(sync: SyncConfig) -> str:
    """The sync's own part of the content hash; unchanged for syncs that use no newer key."""
    text = f"{sync.type}|{sync.user_id}|{sync.anonymous_id}|" + "|".join(
        f"{k}={v}" for k, v in sync.mapping.items()
    )
    extra = []
    if sync.call_column:
        extra.append(f"call={sync.call_column}")
    if sync.event_columns:
        extra.append("events=" + ",".join(f"{k}={v}" for k, v in sync.event_columns.items()))
    if sync.context:
        extra.append("context=" + ",".join(f"{k}={v}" for k, v in sync.context.items()))
    if sync.static:
        extra.append("static=" + orjson.dumps(sync.static).decode())
    if sync.integrations is not None:
        extra.append("integrations=" + orjson.dumps(sync.integrations).decode())
    if sync.exclude_nulls:
        extra.append("exclude_nulls")
    return text + "".join(f"{chr(31)}{part}" for part in extra)


def _problem_sql(sync: SyncConfig, types: dict) -> str:
    """SQL giving why a row cannot be sent (an ID, name, groupId... null or blank), else NULL."""

    def missing(column: str) -> str:
        return f"({id_sql(quote_ident(column), types[column])}) is null"

    id_columns = " / ".join(
        f"{k} column '{getattr(sync, k)}'" for k in ("user_id", "anonymous_id") if getattr(sync, k)
    )
    if sync.type == "alias":
        checks = [
            (
                missing(sync.user_id or ""),
                f"no user ID (user_id column '{sync.user_id}' null or blank); "
                "an alias call needs one",
            )
        ]
    else:
        checks = [
            (
                " and ".join(missing(c) for c in sync.id_columns),
                f"neither user ID nor anonymous ID ({id_columns} null or blank)",
            )
        ]
    if sync.call_column:
        label = {"group": "group ID", "alias": "previous ID"}.get(sync.type, f"{sync.type} name")
        checks.append(
            (missing(sync.call_column), f"{label} column '{sync.call_column}' null or blank")
        )
    for column in dict.fromkeys(sync.event_columns.values()):
        checks.append((missing(column), f"event name column '{column}' null or blank"))
    whens = " ".join(f"when {test} then {quote_literal(reason)}" for test, reason in checks)
    return f"(case {whens} end)"


def _render_sql(sync: SyncConfig, types: dict) -> str:
    """Rendered IDs, event content, timestamp and message ID of model rows (`m`).

    The content is the properties/traits JSON. A sync with per-row fields beyond those puts two
    JSON objects before it, each followed by EXTRAS_SEP (a control character, which JSON text
    always escapes): the names (event, page name, groupId, previousId: strings) and the context
    fields, kept as text so their numbers stay exact. A sync without them is unchanged.
    """

    def ident(column: str | None) -> str:
        return id_sql(f"m.{quote_ident(column)}", types[column]) if column else "null::varchar"

    def value(column: str) -> str:
        return json_value_sql(f"m.{quote_ident(column)}", types[column])

    fields = [(name.split("."), value(column)) for name, column in sync.mapping.items()]
    fields += [
        (name.split("."), f"json({quote_literal(orjson.dumps(constant).decode())})")
        for name, constant in sync.static.items()
    ]
    content = json_fields_sql(fields, sync.exclude_nulls)
    if sync.has_extras:
        names: list[tuple[list[str], str]] = []
        if sync.call_column:
            names.append(([CALL_COLUMN_KEYS[sync.type][1]], ident(sync.call_column)))
        for change, column in sync.event_columns.items():
            names.append((["event", change], ident(column)))
        context = [(name.split("."), value(column)) for name, column in sync.context.items()]
        sep = quote_literal(EXTRAS_SEP)
        content = (
            f"({json_fields_sql(names)} || {sep} || "
            f"{json_fields_sql(context, sync.exclude_nulls)} || {sep} || {content})"
        )
    row_ts = "null::varchar"
    if sync.timestamp:
        try:
            row_ts = render_timestamp_sql(f"m.{quote_ident(sync.timestamp)}", types[sync.timestamp])
        except TypeError:
            raise ModelColumnsError(
                f"sync '{sync.name}': column '{sync.timestamp}' (from 'timestamp') has type "
                f"{types[sync.timestamp]}. Fix: use a TIMESTAMP, TIMESTAMPTZ, DATE or text column."
            ) from None
    return f"""
        select cast(m.{quote_ident(sync.primary_key)} as varchar) as __rs_pk,
               {ident(sync.user_id)} as __rs_user_id,
               {ident(sync.anonymous_id)} as __rs_anonymous_id,
               {content} as __rs_props,
               {row_ts} as __rs_row_timestamp,
               {ident(sync.message_id)} as __rs_row_message_id
    """


# Why a current row cannot be sent; `SyncState.replace_rejected_rows` keeps them per window.
_REJECTED_SQL = """
    select coalesce(__rs_pk, '(null)') as __rs_pk, __rs_hash,
           case when __rs_pk is null then 'null primary key'
                when __rs_key_rows > 1
                  then 'duplicate primary key (' || __rs_key_rows || ' rows)'
                else __rs_problem end as reason
    from __rs_current
    where __rs_pk is null or __rs_key_rows > 1 or __rs_problem is not null
"""


def _changes_sql(sync: SyncConfig, first_run: bool, base: str, mode: DiffMode) -> str:
    """The changes by key, and for each whether it sends an event and needs rendering.

    A resync makes every current row 'added' (a track sync sends it when it sends 'added', the
    other types always); a baseline reset sends nothing.
    """

    def sends(change: str) -> str:
        return "true" if _sends(sync, change, first_run, mode) else "false"

    resync = "true" if mode.resync else "false"

    # A `removed` event needs the last values, kept in the snapshot when the sync sends them.
    keep = "true" if sync.sends("removed") else "false"
    # One full outer join of the current keys with the base: a duplicated or ID-less key is not
    # valid (so neither added nor changed) but present (so not removed).
    return f"""
        select * exclude (__rs_valid, __rs_present) from (
          select coalesce(c.__rs_pk, s.__rs_pk) as __rs_pk,
            case when c.__rs_valid and (s.__rs_pk is null or s.__rs_deleted or {resync})
                      then 'added'
                 when c.__rs_valid and not s.__rs_deleted
                      and s.__rs_hash is distinct from c.__rs_hash then 'changed'
                 when c.__rs_present is null and not s.__rs_deleted then 'removed'
            end as __rs_change,
            c.__rs_valid, c.__rs_present,
            case when c.__rs_present is null then null else c.__rs_hash end as __rs_hash,
            coalesce(s.__rs_version, 0) + 1 as __rs_version,
            case when c.__rs_present is null then {sends("removed")}
                 when s.__rs_pk is null or s.__rs_deleted or {resync} then {sends("added")}
                 else {sends("changed")} end as __rs_send,
            case when c.__rs_present is null then {sends("removed")}
                 when s.__rs_pk is null or s.__rs_deleted or {resync}
                   then {sends("added")} or {keep}
                 else {sends("changed")} or {keep} end as __rs_render,
            case when c.__rs_present is null then s.__rs_user_id end as __rs_base_user_id,
            case when c.__rs_present is null then s.__rs_anonymous_id end
                as __rs_base_anonymous_id,
            case when c.__rs_present is null then s.__rs_props end as __rs_base_props
          from (select __rs_pk, true as __rs_present, __rs_hash,
                       __rs_key_rows = 1 and __rs_problem is null as __rs_valid
                from __rs_current where __rs_pk is not null) c
          full outer join {base} s on s.__rs_pk = c.__rs_pk
        ) where __rs_change is not null
    """


def _sends(sync: SyncConfig, change: str, first_run: bool, mode: DiffMode) -> bool:
    """Whether a change of this type sends an event in this diff."""
    send = sync.sends(change)
    if change == "added" and first_run and sync.type == "track":
        send = send and sync.send_initial_results
    if change == "added" and mode.resync:
        send = sync.sends("added") if sync.type == "track" else True
    return send and not mode.reset_baseline


def _digest_sql(
    sync: SyncConfig, window: str | None, salt: str | None = None, nonce: str | None = None
) -> str:
    """md5 of (salt, sync, window, key, version, change, content): the same change, the same
    digest.

    ``salt`` is the state's random value (unpartitioned) or the sync's `message_id_salt`
    (partitioned, so windows stay pure); ``nonce`` is a resync's own random value. Without
    either, the digest is the one rudder_sync always computed.
    """
    scope = sync.name if window is None else f"{sync.name}{chr(31)}{window}"
    prefix = "".join(f"{quote_literal(part)} || {SEP} || " for part in (salt, nonce) if part)
    return (
        f"md5({prefix}{quote_literal(scope)} || {SEP} || c.__rs_pk || {SEP} || c.__rs_version || "
        f"{SEP} || c.__rs_change || {SEP} || coalesce(c.__rs_hash::varchar, ''))"
    )


def _uuid_shape(digest: str) -> str:
    """A 32-hex-digit digest as a UUID-shaped messageId (8-4-4-4-12, lower case).

    DuckDB's text of the digest cast to UUID: the same characters as cutting the digest into
    five substrings, which evaluated the md5 once per substring (0.3 s of a 200,000-row first
    run's diff)."""
    return f"cast(cast({digest} as uuid) as varchar)"


def _summarize(
    state: SyncState, first_run: bool, window: str | None, base: str, max_attempts: int | None
) -> DiffSummary:
    """Stage 6: counts by change type; quarantined changes are not counted as to be sent."""
    by_change = state.change_counts(window, max_attempts)
    rejected_count, rejected_sample = state.rejected(window, REJECTED_SAMPLE)
    return DiffSummary(
        model_rows=state.count("__rs_current"),
        counts={change: by_change.get(change, (0, 0))[0] for change in CHANGE_TYPES},
        to_send={change: by_change.get(change, (0, 0))[1] for change in CHANGE_TYPES},
        rejected_count=rejected_count,
        rejected_sample=rejected_sample,
        first_run=first_run,
        base_rows=state.count(base, "not __rs_deleted"),
    )


# The frame's columns after the (window and) key, before the event's fields.
SYSTEM_COLUMNS = (
    "change_type",
    "will_send",
    "message_id",
    "timestamp",
    "user_id",
    "anonymous_id",
)
# JSON types of a field's values (DuckDB's json_type) -> how its column is typed in the frame.
_SCALAR_CASTS = (
    ({"VARCHAR"}, "json_extract_string({}, '$')"),
    ({"BOOLEAN"}, "nullif({}::varchar, 'null')::boolean"),
    ({"BIGINT"}, "nullif({}::varchar, 'null')::bigint"),
    ({"BIGINT", "UBIGINT", "DOUBLE"}, "nullif({}::varchar, 'null')::double"),
)


# Changes that send nothing (a baseline's silent `added` rows, above all) kept in the diff's frame;
# a first run of a 100M-row model would otherwise hold a frame of 100M rows in memory and on disk.
FRAME_SILENT_ROWS = 10_000


def pending_frame(
    state: SyncState, sync: SyncConfig, windows: list[str]
) -> tuple[pd.DataFrame, int]:
    """The diff as users read it: (window,) key, change type, and the fields the event carries;
    and how many changes that send nothing it leaves out (beyond `FRAME_SILENT_ROWS` of them:
    they stay in the state, counted in the diff's metadata).

    Built by DuckDB: each field is extracted from the stored event content as JSON and typed by
    the values it holds (text, boolean, integer, float); only objects, arrays and mixed types are
    decoded in Python, so a diff of millions of rows costs no Python object per row and field.
    """
    fields = _frame_fields(sync)
    columns = [f"__rs_f{i}" for i in range(len(fields))]
    left_out = state.store_pending_rows(
        "__rs_frame",
        windows,
        list(zip(columns, (sql for _, sql in fields), strict=True)),
        silent_limit=FRAME_SILENT_ROWS,
    )
    try:
        kinds = _json_types(state, columns)
        typed = [_typed_sql(column, kinds[column]) for column in columns]
        frame = (
            state.conn.sql(
                "select __rs_window, __rs_pk, __rs_change, __rs_send, __rs_message_id, "
                "__rs_timestamp, __rs_user_id, __rs_anonymous_id"
                + "".join(f", {sql}" for sql, _ in typed)
                + " from __rs_frame order by __rs_window, __rs_change_id"
            )
            .to_arrow_table()
            .to_pandas()  # Arrow-backed strings: no Python object per value
        )
    finally:
        run(state.conn, "drop table if exists __rs_frame")
    system = ["partition", sync.primary_key, *SYSTEM_COLUMNS]
    field_columns = _field_names([name for name, _ in fields], system)
    frame.columns = [*system, *field_columns]
    for (_, decode), column in zip(typed, field_columns, strict=True):
        if decode:
            frame[column] = [orjson.loads(v) if isinstance(v, str) else None for v in frame[column]]
    return (frame if sync.partitions else frame.drop(columns="partition")), left_out


def _json_types(state: SyncState, columns: list[str]) -> dict[str, set[str]]:
    """The JSON types (DuckDB's json_type, 'NULL' left out) each field column holds."""
    if not columns:
        return {}
    kinds = ", ".join(f"list(distinct json_type({c}))" for c in columns)
    (found,) = run(state.conn, f"select {kinds} from __rs_frame")
    return {c: set(kinds or []) - {"NULL"} for c, kinds in zip(columns, found, strict=True)}


def _frame_fields(sync: SyncConfig) -> list[tuple[str, str]]:
    """The frame's field columns: (name, SQL giving the field's JSON value from pending)."""
    names, context, properties = content_sql(sync)
    fields = [(name, _json_at(properties, name.split("."))) for name in sync.mapping]
    if sync.event_columns:
        fixed = " ".join(
            f"when {quote_literal(change)} then to_json({quote_literal(name)})"
            for change in CHANGE_TYPES
            if (name := sync.event_name(change))
        )
        from_row = f"json_extract({names}, '/event/' || __rs_change)"
        fields.append(
            ("event", f"(case __rs_change {fixed} else {from_row} end)" if fixed else from_row)
        )
    if sync.call_column:
        field = CALL_COLUMN_KEYS[sync.type][1]
        fields.append((field, _json_at(names, [field])))
    for name in sync.context:
        fields.append(
            (f"context.{name}", _json_at(f"coalesce({context}, '{{}}')", name.split(".")))
        )
    return fields


def _json_at(json_sql: str, path: list[str]) -> str:
    """The JSON value at a field path (NULL when absent), by JSON pointer: any key is safe."""
    pointer = "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)
    return f"json_extract({json_sql}, {quote_literal(pointer)})"


def _typed_sql(column: str, kinds: set[str]) -> tuple[str, bool]:
    """SQL typing one field column by the JSON types it holds; True: decode it in Python."""
    if not kinds:
        return f"null::varchar as {column}", False
    for allowed, cast in _SCALAR_CASTS:
        if kinds <= allowed:
            return f"{cast.format(column)} as {column}", False
    return f"{column}::varchar as {column}", True


def _field_names(fields: list[str], taken: list[str]) -> list[str]:
    """Field column names, marked "(mapped)" when a system column (or field before) has it."""
    seen = set(taken)
    result = []
    for name in fields:
        result.append(name if name not in seen else f"{name} (mapped)")
        seen.add(result[-1])
    return result
