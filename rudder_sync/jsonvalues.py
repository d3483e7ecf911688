"""Type-directed SQL that turns DuckDB values into JSON inside DuckDB.

Event properties and traits are serialised by DuckDB itself (``json_object``/``to_json``) so that
Python only wraps finished text in ``orjson.Fragment``. DuckDB's own serialisation is not always
valid or portable JSON (NaN, ``infinity`` dates, session-time-zone timestamps, escaped BLOBs, ...),
so every column goes through :func:`json_value_sql` first, which rewrites it per type into a value
that DuckDB serialises by the rules in ``docs/json-values.md``. Everything stays vectorised SQL:
no Python UDFs, so it runs at DuckDB speed on large tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import duckdb

try:
    from duckdb.sqltypes import DuckDBPyType
except ImportError:  # duckdb < 1.4 only has the older module name
    from duckdb.typing import DuckDBPyType  # type: ignore[no-redef]

__all__ = [
    "column_types",
    "id_sql",
    "json_fields_sql",
    "json_object_sql",
    "json_value_sql",
    "quote_ident",
    "quote_literal",
    "timestamp_sql",
]

_INTEGERS = frozenset(
    {
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "hugeint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "uhugeint",
        "bignum",
        "varint",
    }
)
# Types that DuckDB's JSON writer already renders exactly as the rules want.
_PASSTHROUGH = _INTEGERS | {"null", "boolean", "varchar", "enum", "uuid", "time with time zone"}
_TIMESTAMPS = frozenset(
    {
        "timestamp",
        "timestamp with time zone",
        "timestamp_s",
        "timestamp_ms",
        "timestamp_ns",
    }
)
_ISO_FORMAT = "'%Y-%m-%dT%H:%M:%S.%fZ'"
_TS_MIN = "TIMESTAMP '0001-01-01 00:00:00'"
_TS_MAX = "TIMESTAMP '9999-12-31 23:59:59.999999'"
# A time of day followed by something zone-like ("Z", "+02", " America/New_York"): such strings
# carry their own offset; strings without one are read as UTC, whatever the session TimeZone is.
_ZONE_RE = r"'\d:\d\d(:\d\d(\.\d*)?)?\s*[+\-A-Za-z]'"
# One Unicode-aware "blank" test shared by the ID rules.
_BLANK_RE = r"'^[\s\x0B\pZ\x{FEFF}]*$'"
_LAMBDA_PREFIX = "_rs_v"


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB so any column name (spaces, quotes, unicode) is safe."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL characters")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a SQL string literal (standard SQL: only ``'`` needs doubling in DuckDB)."""
    if "\x00" in value:
        # A NUL byte inside SQL text is fragile; build it with chr(0) instead.
        return "(" + " || chr(0) || ".join(quote_literal(p) for p in value.split("\x00")) + ")"
    return "'" + value.replace("'", "''") + "'"


def _type_id(dtype: DuckDBPyType) -> str:
    """The lower-case type id, with the JSON alias (a VARCHAR underneath) told apart."""
    if str(dtype) == "JSON":
        return "json"
    return dtype.id


def _children(dtype: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    return list(dtype.children)


def _blank_to_null(text_expr: str) -> str:
    """NULL for empty or whitespace-only text, else the text unchanged."""
    return f"(CASE WHEN NOT regexp_full_match({text_expr}, {_BLANK_RE}) THEN {text_expr} END)"


def _sanitised_json(raw_text: str, value: str, depth: int) -> str:
    """A JSON value whose text is valid JSON: bare NaN/Infinity tokens become ``null``.

    DuckDB accepts NaN/Infinity inside JSON values and writes them back out as is. ``raw_text`` is
    the value's text (cheap to get) and ``value`` the JSON value to embed when it is clean; only
    rows whose text contains one of the words at all pay for the fix-up, which minifies the text,
    splits it into string literals and the rest, and only rewrites the rest.
    """
    seg = f"{_LAMBDA_PREFIX}{depth}"
    minified = f"CAST(to_json({value}) AS VARCHAR)"
    pieces = r"""'"(?:[^"\\]|\\.)*"|[^"]+'"""
    tokens = r"""'(^|[\[,:])-?(?:NaN|Infinity)'"""
    fixed = (
        f"array_to_string(list_transform(regexp_extract_all({minified}, {pieces}), "
        f"lambda {seg}: CASE WHEN starts_with({seg}, '\"') THEN {seg} "
        f"ELSE regexp_replace({seg}, {tokens}, '\\1null', 'g') END), '')"
    )
    return (
        f"(CASE WHEN contains({raw_text}, 'NaN') OR contains({raw_text}, 'Infinity') "
        f"THEN json({fixed}) ELSE {value} END)"
    )


def _time_sql(expr: str) -> str:
    """HH:MM:SS.ffffff with exactly six fractional digits (TIME_NS is truncated)."""
    s = f"CAST({expr} AS VARCHAR)"
    return (
        f"(CASE WHEN length({s}) = 8 THEN {s} || '.000000' ELSE rpad(left({s}, 15), 15, '0') END)"
    )


def _interval_sql(expr: str) -> str:
    """ISO-8601 duration, PostgreSQL ``iso_8601`` style: each non-zero part carries its own sign.

    DuckDB keeps months, days and microseconds apart (a month is not a fixed number of days),
    so they are written as Y/M, D and H/M/S parts: ``-1 month 3 days -04:00:00`` -> ``P-1M3DT-4H``.
    """
    x = expr

    def part(unit: str, suffix: str) -> str:
        return (
            f"(CASE WHEN datepart('{unit}', {x}) <> 0 "
            f"THEN CAST(datepart('{unit}', {x}) AS VARCHAR) || '{suffix}' ELSE '' END)"
        )

    us = f"datepart('microseconds', {x})"
    seconds = (
        f"(CASE WHEN {us} <> 0 THEN (CASE WHEN {us} < 0 THEN '-' ELSE '' END) "
        f"|| CAST(abs({us}) // 1000000 AS VARCHAR) "
        f"|| (CASE WHEN abs({us}) % 1000000 <> 0 "
        f"THEN rtrim('.' || lpad(CAST(abs({us}) % 1000000 AS VARCHAR), 6, '0'), '0') ELSE '' END) "
        f"|| 'S' ELSE '' END)"
    )
    date_part = f"{part('year', 'Y')} || {part('month', 'M')} || {part('day', 'D')}"
    time_part = f"{part('hour', 'H')} || {part('minute', 'M')} || {seconds}"
    # 'P1DT' -> 'P1D'; an all-zero interval leaves just 'P' and is written 'PT0S'. (No interval
    # comparison here: DuckDB treats '1 month -30 days' as equal to zero.)
    text = f"rtrim('P' || {date_part} || 'T' || {time_part}, 'T')"
    return f"(CASE WHEN {x} IS NULL THEN NULL ELSE coalesce(nullif({text}, 'P'), 'PT0S') END)"


def _convert(expr: str, dtype: DuckDBPyType, depth: int) -> str | None:
    """SQL for the JSON-ready value of ``expr``, or None when DuckDB's own output is already right.

    ``depth`` counts enclosing lambdas, so nested lambdas get distinct variable names.
    """
    tid = _type_id(dtype)
    if tid in _PASSTHROUGH:
        return None
    if tid == "decimal":
        precision, scale = (v for _, v in _children(dtype))
        if precision <= 15:
            # DuckDB writes DECIMAL(p<=15) through a double (1.50 -> 1.5, 1 -> 1.0) but wider ones
            # from their exact digits; widening keeps one rule: exact digits, `scale` decimals.
            return f"CAST({expr} AS DECIMAL(18, {scale}))"
        return None
    if tid == "float":
        # Via text: the shortest decimal that round-trips the float32 (0.1, not 0.10000000149...).
        return f"(CASE WHEN isfinite({expr}) THEN CAST(CAST({expr} AS VARCHAR) AS DOUBLE) END)"
    if tid == "double":
        return f"(CASE WHEN isfinite({expr}) THEN {expr} END)"
    if tid == "date":
        return f"(CASE WHEN {expr} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31' THEN {expr} END)"
    if tid in ("time", "time_ns"):
        return _time_sql(expr)
    if tid in _TIMESTAMPS:
        return timestamp_sql(expr, dtype)
    if tid == "interval":
        return _interval_sql(expr)
    if tid == "blob":
        return f"to_base64({expr})"
    if tid == "bit":
        return f"CAST({expr} AS VARCHAR)"
    if tid == "json":
        return _sanitised_json(f"CAST({expr} AS VARCHAR)", expr, depth)
    if tid == "variant":
        as_json = f"to_json({expr})"
        return _sanitised_json(f"CAST({as_json} AS VARCHAR)", as_json, depth)
    if tid in ("list", "array"):
        child = _children(dtype)[0][1]
        var = f"{_LAMBDA_PREFIX}{depth}"
        inner = _convert(var, child, depth + 1)
        if inner is None:
            return None
        return f"list_transform({expr}, lambda {var}: {inner})"
    if tid == "map":
        value_type = _children(dtype)[1][1]
        var = f"{_LAMBDA_PREFIX}{depth}"
        inner = _convert(var, value_type, depth + 1)
        if inner is None:
            return None
        # Keys stay as they are: DuckDB writes each as its VARCHAR text, and keeping them avoids
        # duplicate-key errors that converting (e.g. truncating) keys could cause.
        return f"map(map_keys({expr}), list_transform(map_values({expr}), lambda {var}: {inner}))"
    if tid == "struct":
        fields = _children(dtype)
        parts = []
        changed = False
        for name, ftype in fields:
            sub = f"struct_extract({expr}, {quote_literal(name)})"
            conv = _convert(sub, ftype, depth)
            changed = changed or conv is not None
            parts.append(f"{quote_ident(name)} := {conv if conv is not None else sub}")
        if not changed:
            return None
        return f"(CASE WHEN {expr} IS NULL THEN NULL ELSE struct_pack({', '.join(parts)}) END)"
    if tid == "tuple":
        # Unnamed STRUCT (row(...)): DuckDB writes it as a JSON array; keep that shape.
        fields = _children(dtype)
        parts = []
        changed = False
        for i, (_, ftype) in enumerate(fields, start=1):
            sub = f"struct_extract({expr}, {i})"
            conv = _convert(sub, ftype, depth)
            changed = changed or conv is not None
            parts.append(conv if conv is not None else sub)
        if not changed:
            return None
        return f"(CASE WHEN {expr} IS NULL THEN NULL ELSE row({', '.join(parts)}) END)"
    if tid == "union":
        members = [(n, t) for n, t in _children(dtype)][1:]  # first child is the tag
        whens = []
        for name, mtype in members:
            sub = f"union_extract({expr}, {quote_literal(name)})"
            conv = _convert(sub, mtype, depth)
            whens.append(
                f"WHEN {quote_literal(name)} THEN to_json({conv if conv is not None else sub})"
            )
        return f"(CASE union_tag({expr}) {' '.join(whens)} END)"
    # Documented fallback (GEOMETRY -> WKT and any type this module does not know yet).
    return f"CAST({expr} AS VARCHAR)"


def json_value_sql(expr: str, dtype: DuckDBPyType) -> str:
    """SQL over ``expr`` (of type ``dtype``) whose value DuckDB serialises by the documented rules.

    Use it as a value inside ``to_json(struct_pack(...))`` or ``json_object(...)``.
    """
    conv = _convert(expr, dtype, 0)
    return expr if conv is None else conv


def json_object_sql(fields: Sequence[tuple[str, str, DuckDBPyType]]) -> str:
    """VARCHAR SQL holding one JSON object per row: ``(key, column SQL, type)`` in the given order.

    Built with ``json_object`` rather than ``struct_pack`` because keys are then plain string
    literals: empty keys and keys differing only in case (which struct fields reject) both work.
    """
    if not fields:
        return "'{}'"
    seen: set[str] = set()
    args = []
    for key, expr, dtype in fields:
        if key in seen:
            raise ValueError(f"duplicate JSON key {key!r}")
        seen.add(key)
        args.append(f"{quote_literal(key)}, {json_value_sql(expr, dtype)}")
    return f"CAST(json_object({', '.join(args)}) AS VARCHAR)"


def json_fields_sql(
    fields: Sequence[tuple[Sequence[str], str]], exclude_nulls: bool = False
) -> str:
    """VARCHAR SQL holding one JSON object per row, built from ``(path, JSON-ready value SQL)``.

    A path of several names nests objects (``("address", "city")``). Values come from
    :func:`json_value_sql` (or are JSON constants). With ``exclude_nulls`` a field whose value is
    null is left out, and so is an object left empty by that.

    Flat fields use :func:`json_object_sql`'s ``json_object``. Nested objects and left-out fields
    are written as text instead (``concat_ws`` skips NULL parts): ``json_object`` re-parses a JSON
    argument, which turns exact decimals and big numbers into doubles (``1.50`` -> ``1.5``).
    """
    tree: dict[str, object] = {}
    for path, value in fields:
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"field {'.'.join(path)!r} is inside the value {part!r}")
            node = child
        if path[-1] in node:
            raise ValueError(f"duplicate JSON key {'.'.join(path)!r}")
        node[path[-1]] = value
    if not tree:
        return "'{}'"
    if not exclude_nulls and not any(isinstance(v, dict) for v in tree.values()):
        args = ", ".join(f"{quote_literal(k)}, {v}" for k, v in tree.items())
        return f"CAST(json_object({args}) AS VARCHAR)"
    return f"('{{' || {_members_sql(tree, exclude_nulls)} || '}}')"


def _members_sql(tree: dict[str, object], exclude_nulls: bool) -> str:
    """SQL text of an object's ``"key":value`` members, comma-joined (null ones left out or not)."""
    parts = []
    for key, value in tree.items():
        name = quote_literal(_json_string(key) + ":")
        if isinstance(value, dict):
            inner = _members_sql(value, exclude_nulls)
            if exclude_nulls:
                inner = f"nullif({inner}, '')"
            parts.append(f"({name} || '{{' || {inner} || '}}')")
        elif exclude_nulls:
            text = f"CAST(to_json({value}) AS VARCHAR)"
            parts.append(f"(CASE WHEN {text} <> 'null' THEN {name} || {text} END)")
        else:
            parts.append(f"({name} || coalesce(CAST(to_json({value}) AS VARCHAR), 'null'))")
    return f"concat_ws(',', {', '.join(parts)})"


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal (the key of a hand-written object)."""
    return json.dumps(text, ensure_ascii=False)


def timestamp_sql(expr: str, dtype: DuckDBPyType) -> str:
    """VARCHAR ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, independent of the session TimeZone.

    TIMESTAMPTZ is converted to UTC; naive TIMESTAMP_* values, DATEs (at midnight) and strings
    without an offset are taken as UTC; strings with an offset or zone name are converted.
    Values outside years 0001-9999, infinities and unparseable strings give NULL.
    """
    tid = _type_id(dtype)
    if tid == "timestamp with time zone":
        ts = f"({expr} AT TIME ZONE 'UTC')"
    elif tid == "timestamp":
        ts = expr
    elif tid == "timestamp_ns":
        # Always within 1677-2262, so only infinities need filtering; comparing with a TIMESTAMP
        # literal would fail (year 1 does not fit in TIMESTAMP_NS). strftime truncates to
        # microseconds, whereas a cast to TIMESTAMP would round.
        return f"(CASE WHEN isfinite({expr}) THEN strftime({expr}, {_ISO_FORMAT}) END)"
    elif tid in ("timestamp_s", "timestamp_ms", "date"):
        ts = f"CAST({expr} AS TIMESTAMP)"
    elif tid in ("varchar", "enum"):
        s = f"CAST({expr} AS VARCHAR)" if tid == "enum" else expr
        ts = (
            f"(CASE WHEN regexp_matches({s}, {_ZONE_RE}) "
            f"THEN TRY_CAST({s} AS TIMESTAMPTZ) AT TIME ZONE 'UTC' "
            f"ELSE TRY_CAST({s} AS TIMESTAMP) END)"
        )
    else:
        raise TypeError(f"cannot read a timestamp from a {dtype} value")
    return (
        f"(CASE WHEN {ts} BETWEEN {_TS_MIN} AND {_TS_MAX} THEN strftime({ts}, {_ISO_FORMAT}) END)"
    )


def id_sql(expr: str, dtype: DuckDBPyType) -> str:
    """VARCHAR user/anonymous ID: stable text for the value, NULL when there is no usable ID.

    Numbers are written so that an integer-valued ID looks the same whatever column type
    carried it (42, 42.0 and DECIMAL 42.00 all give "42").
    """
    tid = _type_id(dtype)
    if tid in _INTEGERS:
        return f"CAST({expr} AS VARCHAR)"
    if tid in ("float", "double"):
        return (
            f"(CASE WHEN NOT isfinite({expr}) THEN NULL "
            f"WHEN {expr} = trunc({expr}) AND abs({expr}) < 1e38 "
            f"THEN CAST(CAST({expr} AS HUGEINT) AS VARCHAR) "
            f"ELSE CAST({expr} AS VARCHAR) END)"
        )
    if tid == "decimal":
        return (
            f"(CASE WHEN {expr} = trunc({expr}) THEN CAST(CAST({expr} AS HUGEINT) AS VARCHAR) "
            # DuckDB writes DECIMAL(p,p) without the leading zero ('-.5'); put it back.
            f"ELSE regexp_replace(rtrim(CAST({expr} AS VARCHAR), '0'), '^(-?)\\.', '\\10.') END)"
        )
    if tid == "uuid":
        return f"CAST({expr} AS VARCHAR)"
    if tid in _TIMESTAMPS:
        return timestamp_sql(expr, dtype)
    if tid == "varchar":
        return _blank_to_null(expr)
    if tid == "json":
        # A JSON string "abc" is the ID abc, not "\"abc\""; JSON null is no ID.
        return _blank_to_null(f"json_extract_string({expr}, '$')")
    return _blank_to_null(f"CAST({expr} AS VARCHAR)")


def column_types(conn: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, DuckDBPyType]:
    """Name -> type of each column, in order, of a table/view name or a query.

    Only binds the query (nothing is executed), so it is cheap even for large models.
    """
    from .warehouses.sql import statement_body  # here: warehouses imports this module

    text = statement_body(relation_sql)
    if re.fullmatch(r'[A-Za-z_][\w$]*|"(?:[^"]|"")+"', text):
        # A table or view name: no failed parse first, which would abort an open transaction.
        rel = conn.sql(f"SELECT * FROM {text}")
        return dict(zip(rel.columns, rel.types, strict=True))
    try:
        # Covers queries and plain names alike; wrapping also keeps non-SELECT statements out.
        rel = conn.sql(f"SELECT * FROM (\n{text}\n)")
    except duckdb.ParserException:
        rel = conn.sql(f"SELECT * FROM {text}")  # e.g. table functions: read_csv('x.csv')
    return dict(zip(rel.columns, rel.types, strict=True))
