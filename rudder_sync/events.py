"""Pending changes -> RudderStack event payloads.

The properties/traits JSON was rendered inside DuckDB by the diff (rules in `jsonvalues`), and
DuckDB renders the whole event around it (`body_sql`), for every call type. `build_event` is the
reference that the SQL bodies are tested against byte for byte, and builds the rare event whose
per-row name orjson would write in its own way (a float or an object stored by an earlier
version): it embeds the properties untouched with `orjson.Fragment` and splices context fields
from columns in as text.
Events are streamed from the state in Arrow batches: memory is bounded by a batch, not the diff.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson
import pyarrow as pa

from . import __version__
from .config import CHANGE_TYPES, SyncConfig
from .jsonvalues import quote_literal
from .rudderstack import EventColumns
from .state import EVENT_FALLBACK_COLUMNS, SyncState

READ_BATCH_ROWS = 20_000
# Between a change's per-row fields and its properties/traits JSON (see `diff._render_sql`).
EXTRAS_SEP = "\x1e"
LIBRARY_NAME = "rudder_sync"
LIBRARY_VERSION = __version__

_LIBRARY = {"name": LIBRARY_NAME, "version": LIBRARY_VERSION}
_LIBRARY_MEMBER = orjson.dumps({"library": _LIBRARY}).decode()[:-1]  # without the closing }


class Content(NamedTuple):
    """A pending change's content: per-row names, context members, properties/traits JSON."""

    names: dict[str, Any]
    context: str  # the context fields' JSON object text ("" when the sync has none)
    properties: str


def content_sql(sync: SyncConfig, column: str = "__rs_props") -> Content:
    """`split_content` as SQL expressions over a content column: names and context as JSON
    text (context NULL when absent), properties as JSON text. Same rules, no Python per row."""
    text = f"coalesce(nullif({column}, ''), '{{}}')"
    split = f"contains({text}, chr(30))"
    properties = f"(case when {split} then split_part({text}, chr(30), 3) else {text} end)"
    if not sync.has_extras:
        return Content("'{}'", "null", properties)  # type: ignore[arg-type]
    names = f"(case when {split} then split_part({text}, chr(30), 1) else '{{}}' end)"
    context = f"(case when {split} then nullif(split_part({text}, chr(30), 2), '') end)"
    return Content(names, context, properties)  # type: ignore[arg-type]


def split_content(sync: SyncConfig, content: str | None) -> Content:
    """Split what `diff._render_sql` stored for a change.

    The last delivered content of a removed row may date from an earlier config, with or without
    the per-row parts, so the separator decides, not the config: JSON text never holds it raw.
    """
    text = content or "{}"
    if EXTRAS_SEP not in text:
        return Content({}, "", text)
    names, context, properties = text.split(EXTRAS_SEP, 2)
    if not sync.has_extras:
        return Content({}, "", properties)
    return Content(orjson.loads(names), context, properties)


def build_event(
    sync: SyncConfig,
    change: str,
    message_id: str,
    timestamp: str,
    user_id: str | None,
    anonymous_id: str | None,
    props_json: str | None,
) -> dict[str, Any]:
    """One call of the sync's type, shaped as RudderStack's own SDKs send it.

    Null IDs are left out (never "None"); identify traits go in `context.traits`, group traits
    in `traits`; page and screen carry `name` and `properties`, alias `previousId`.
    """
    names, context_fields, props_text = split_content(sync, props_json)
    props = orjson.Fragment(props_text)
    event: dict[str, Any] = {"type": sync.type}
    if sync.type == "track":
        name = sync.event_name(change) or (names.get("event") or {}).get(change)
        if name is not None:
            event["event"] = name
        event["properties"] = props
    elif sync.type in ("page", "screen"):
        if names.get("name") is not None:
            event["name"] = names["name"]
        event["properties"] = props
    elif sync.type == "group":
        event["groupId"] = names.get("groupId")
        event["traits"] = props
    elif sync.type == "alias":
        event["previousId"] = names.get("previousId")
    if user_id is not None:
        event["userId"] = user_id
    if anonymous_id is not None:
        event["anonymousId"] = anonymous_id
    event["messageId"] = message_id
    event["timestamp"] = timestamp
    event["context"] = _context(sync, context_fields, props_text)
    if sync.integrations is not None:
        event["integrations"] = sync.integrations
    return event


def _context(sync: SyncConfig, fields: str, props_text: str) -> Any:
    """`context`: library, then the fields from columns, then (identify) the traits.

    The fields' JSON text is spliced in as it is, not parsed, so their numbers stay exact.
    """
    members = fields[1:-1]  # the object's members, without its braces
    if not members:
        context: dict[str, Any] = {"library": _LIBRARY}
        if sync.type == "identify":
            context["traits"] = orjson.Fragment(props_text)
        return context
    traits = f',"traits":{props_text}' if sync.type == "identify" else ""
    return orjson.Fragment(f"{_LIBRARY_MEMBER},{members}{traits}}}")


def iter_event_columns(
    state: SyncState,
    sync: SyncConfig,
    window: str | None = None,
    keys: Sequence[str] | None = None,
) -> Iterator[EventColumns]:
    """Every pending change (of one window; of these primary ``keys`` only, if given) that
    sends an event, serialized, in change order, as runs of Arrow columns: no Python object per
    event.

    Quarantined changes (failed `max_attempts` times) are left out. DuckDB renders the bodies
    (`body_sql`); the rare row it leaves to Python (a per-row name that is neither text, an
    integer nor a boolean) comes with its columns and goes through `build_event`.
    """
    body = body_sql(sync)
    # Only a per-row name (event name column, page/screen name, groupId, previousId) can leave a
    # row to Python: without one, the fallback columns are not even selected.
    fallback = sync.has_extras and bool(sync.event_columns or sync.call_column)
    with state.sendable_changes(
        window, sync.max_attempts, READ_BATCH_ROWS, body, fallback, keys
    ) as reader:
        for batch in reader:
            bodies = batch.column("__rs_body")
            if bodies.null_count:
                bodies = _with_python_bodies(sync, batch)
            yield EventColumns(
                batch.column("__rs_change_id"), batch.column("__rs_message_id"), bodies
            )


def _with_python_bodies(sync: SyncConfig, batch: pa.RecordBatch) -> pa.Array:
    """A batch's bodies, those DuckDB left NULL built by `build_event`."""
    columns = batch.select(["__rs_message_id", "__rs_body", *EVENT_FALLBACK_COLUMNS]).to_pydict()
    rows = zip(*columns.values(), strict=True)
    bodies = [
        payload
        if payload is not None
        else orjson.dumps(build_event(sync, change, message_id, *rest))
        for message_id, payload, change, *rest in rows
    ]
    return pa.array(bodies, pa.binary())


def body_sql(sync: SyncConfig) -> str:
    """The whole event as DuckDB SQL (a BLOB of its JSON), byte for byte what `build_event` and
    `orjson.dumps` give; NULL for a row whose per-row name (event name from a column, page or
    screen name, groupId, previousId) is a JSON float, object or array, which orjson would
    re-serialize in its own way: those rows are built in Python.

    DuckDB's `to_json` escapes strings as orjson does but for the case of hex digits, so strings
    go through `_json_string`; constants are rendered by orjson itself; properties, traits and
    context members are the JSON text the diff stored, spliced in as `build_event` splices them.
    The table-driven test in test_events_sql.py holds the two to the same bytes.
    """
    content = content_sql(sync)
    names = _per_row_names(sync, content.names)
    parts = [quote_literal('{"type":' + orjson.dumps(sync.type).decode())]
    parts += [sql for sql, _ in names]
    if sync.type in ("track", "page", "screen"):
        parts += [quote_literal(',"properties":'), content.properties]
    elif sync.type == "group":
        parts += [quote_literal(',"traits":'), content.properties]
    parts += [
        f"""coalesce(',"userId":' || {_json_string("__rs_user_id")}, '')""",
        f"""coalesce(',"anonymousId":' || {_json_string("__rs_anonymous_id")}, '')""",
        f"""',"messageId":' || {_json_string("__rs_message_id")}""",
        """',"timestamp":' || to_json(__rs_timestamp)""",
        quote_literal(',"context":{' + _LIBRARY_MEMBER[1:]),
    ]
    if sync.context:
        members = content.context  # the context object's text: its members go in as they are
        parts.append(
            f"(case when coalesce(length({members}), 0) <= 2 then '' "
            f"else ',' || substr({members}, 2, length({members}) - 2) end)"
        )
    if sync.type == "identify":
        parts += [quote_literal(',"traits":'), content.properties]
    parts.append(quote_literal("}"))
    if sync.integrations is not None:
        integrations = ',"integrations":' + orjson.dumps(sync.integrations).decode()
        parts.append(quote_literal(integrations))
    parts.append(quote_literal("}"))
    body = "encode(" + " || ".join(parts) + ")"
    unsafe = " or ".join(f"({check})" for _, check in names if check)
    return f"(case when {unsafe} then null else {body} end)" if unsafe else body


def _per_row_names(sync: SyncConfig, names: str) -> list[tuple[str, str]]:
    """(SQL of the `,"key":value` member, SQL that is true where Python must build the event)
    for the per-row names the call carries, in `build_event`'s order."""

    def value(pointer: str) -> tuple[str, str]:
        """The JSON text of a name as orjson would write it, and when only Python can."""
        json = f"json_extract({names}, {pointer})"
        kind = f"json_type({json})"
        string = _json_string(f"json_extract_string({json}, '$')")
        text = (
            f"(case {kind} when 'VARCHAR' then {string} "
            f"when 'BIGINT' then {json}::varchar when 'UBIGINT' then {json}::varchar "
            f"when 'BOOLEAN' then {json}::varchar end)"
        )
        return text, f"coalesce({kind} in ('DOUBLE', 'OBJECT', 'ARRAY'), false)"

    if sync.type == "track":
        fixed_names = {c: n for c in CHANGE_TYPES if (n := sync.event_name(c)) is not None}
        fixed = " ".join(
            f"when {quote_literal(change)} then {quote_literal(orjson.dumps(name).decode())}"
            for change, name in fixed_names.items()
        )
        if not sync.event_columns:
            return [(f"""coalesce(',"event":' || (case __rs_change {fixed} end), '')""", "")]
        text, unsafe = value("'/event/' || __rs_change")
        if fixed:
            text = f"(case __rs_change {fixed} else {text} end)"
            listed = ", ".join(quote_literal(change) for change in fixed_names)
            unsafe = f"__rs_change not in ({listed}) and {unsafe}"
        return [(f"""coalesce(',"event":' || {text}, '')""", unsafe)]
    if sync.type in ("page", "screen"):
        text, unsafe = value("'/name'")
        return [(f"""coalesce(',"name":' || {text}, '')""", unsafe)]
    if sync.type in ("group", "alias"):
        key = "groupId" if sync.type == "group" else "previousId"
        text, unsafe = value(quote_literal("/" + key))
        return [(f"""',"{key}":' || coalesce({text}, 'null')""", unsafe)]
    return []


def _json_string(column: str) -> str:
    """A text column as a JSON string, escaped exactly as orjson escapes it.

    DuckDB's `to_json` matches orjson but for the hex digits of control characters (`\\u000B`
    against `\\u000b`), so the rare value holding one is escaped here character by character.
    """
    escaped = f"replace(replace({column}, '\\', '\\\\'), '\"', '\\\"')"
    for code in range(32):
        escape = orjson.dumps(chr(code)).decode()[1:-1]
        escaped = f"replace({escaped}, chr({code}), {quote_literal(escape)})"
    control = "regexp_matches(" + column + r", '[\x00-\x1f]')"
    return f"(case when {control} then '\"' || {escaped} || '\"' else to_json({column}) end)"


def sample_payloads(
    state: SyncState,
    sync: SyncConfig,
    window: str | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """One payload per change type that sends (of these primary ``keys``, if given), as users
    see it in the UI and logs."""
    samples = {}
    rows = state.first_sendable_by_change(window, sync.max_attempts, keys)
    for _, change, message_id, timestamp, user_id, anonymous_id, props in rows:
        event = build_event(sync, change, message_id, timestamp, user_id, anonymous_id, props)
        samples[change] = orjson.loads(orjson.dumps(event))
    return samples
