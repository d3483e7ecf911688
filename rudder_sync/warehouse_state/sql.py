"""The in-warehouse diff's SQL: written once (PostgreSQL syntax), rendered per dialect by sqlglot.

Three statements run in the warehouse; only their results leave it:

1. `fingerprint`: the model materialised as `<sync>__model`, each row with its key as text
   (`__rs_wpk`) and a content hash of the carried columns (`__rs_whash`).
2. `delta`: a full outer join of the model's keys with the committed snapshot's, kept as
   `<sync>__delta`: keys that are new, changed (hash differs), repeated, removed, or still held
   by a pending change or a rejected row.
3. `changed_rows`: the model rows of those keys (and rows with a null key), the only model rows
   that are read out.

The content hash is the warehouse's own MD5 over each carried value as text, length-prefixed
(`<length>:<text>`, so no separator inside a value can make two rows look alike) with `N` for
NULL, joined by `,` after the sync's shape (so a mapping change is a change). Per dialect:
PostgreSQL, Redshift, Snowflake and Databricks `MD5(text)`, BigQuery `TO_HEX(MD5(text))`.
The hash only chooses which rows leave: equal hashes mean equal values, and rows that leave are
diffed again by the same code as local mode, so the events are the same in both modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import SyncConfig
from ..jsonvalues import quote_ident, quote_literal
from ..warehouses.sql import statement_body

WINDOW_INFIX = "__w_"
# Tables a step loads rows into, where they are tables of the sync (Snowflake: `snowflake_store`).
LOADED_INFIX = "__in__rs_"
DIALECTS = ("postgres", "redshift", "snowflake", "bigquery", "databricks")
_MODEL_PLACEHOLDER = "__rs_model_sql__"
# The state tables of one sync, by role: `<prefix>__<role>`.
TABLE_ROLES = (
    "meta",
    "model",
    "delta",
    "snapshot",
    "pending",
    "rejected_rows",
    "delivery_log",
    "append_cursor",  # an append sync's keys with their cursor (`append.py`), as text
)


@dataclass(frozen=True)
class Tables:
    """Qualified names of one sync's tables in the state schema."""

    schema: str
    prefix: str  # the sync's name; `<sync>__dry_run` for a dry run's own state

    def name(self, role: str) -> str:
        return f"{self.prefix}__{role}"

    def __getattr__(self, role: str) -> str:
        if role not in TABLE_ROLES:
            raise AttributeError(role)
        return self.qualified(self.name(role))

    def bare(self, role: str) -> str:
        """A role's table as a column qualifier (`"orders__pending".__rs_pk`): the schema-qualified
        form is not a column qualifier on every engine."""
        return quote_ident(self.name(role))

    def qualified(self, name: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(name)}"

    def window_name(self, key: str) -> str:
        """A time window's model rows (partitioned syncs): `<prefix>__w_<key>`."""
        return f"{self.prefix}{WINDOW_INFIX}{re.sub(r'[^0-9A-Za-z]', '_', key)}"


def render(sql: str, dialect: str) -> str:
    """PostgreSQL-syntax SQL in ``dialect`` (sqlglot), pretty-printed.

    Redshift's text is spelled `VARCHAR(65535)`, not sqlglot's `VARCHAR(MAX)`: the same type on
    Redshift (MAX is 65535 bytes), and one PostgreSQL also runs, so every Redshift statement
    executes on the PostgreSQL stand-in as it is sent to Redshift."""
    import sqlglot  # here: a project whose state is local never loads it (0.1 s at start-up)

    if dialect == "postgres":
        return sqlglot.transpile(sql, read="postgres", pretty=True)[0]
    text = sqlglot.transpile(sql, read="postgres", write=dialect, pretty=True)[0]
    return text.replace("VARCHAR(MAX)", "VARCHAR(65535)") if dialect == "redshift" else text


def _text(column: str) -> str:
    return f"CAST(m.{quote_ident(column)} AS TEXT)"


def content_hash_sql(sync: SyncConfig, shape: str, dialect: str = "postgres") -> str:
    """A hash of the shape and each carried value, length-prefixed, NULL as `N`.

    PostgreSQL: its 64-bit `hashtextextended` (the hash of hash partitioning, stable across
    versions), as text; MD5 cost more there than the rest of the fingerprint together. Elsewhere
    MD5 (hex text). The hash only tells changed rows from unchanged ones per key; the local diff
    then compares its own hashes.
    """
    parts = [quote_literal(shape)] + [
        f"COALESCE(CAST(LENGTH({_text(c)}) AS TEXT) || ':' || {_text(c)}, 'N')"
        for c in sync.carried_columns
    ]
    text = " || ',' || ".join(parts)
    if dialect == "postgres":
        return f"CAST(HASHTEXTEXTENDED({text}, 0) AS TEXT)"
    return f"MD5({text})"


# "Has a visible character", per regex engine: POSIX classes (PostgreSQL, Redshift, Snowflake);
# Unicode properties where POSIX classes are ASCII-only (RE2: BigQuery) or absent (Java:
# Databricks).
_VISIBLE_POSIX = "[[:alnum:][:punct:]]"
_VISIBLE_UNICODE = r"[\p{L}\p{N}\p{P}\p{S}]"


def suspect_sql(sync: SyncConfig, dialect: str = "postgres") -> str:
    """1 for a row that may lack an ID or name (so that only the local diff can tell), else 0.

    A superset of the local rules (`diff._problem_sql`): every ID column (an alias: the user ID),
    or the call column or an event name column, is NULL, a JSON null, NaN or infinite, or has no
    letter, digit or punctuation once quotes and backslash escapes are removed (blank, in any
    script's spaces). Flagging too many rows only makes them leave the warehouse; the local diff
    decides. Written in PostgreSQL syntax for ``dialect``: only PostgreSQL's REGEXP_REPLACE needs
    'g' to replace every match (elsewhere a 4th argument is a position), and Snowflake's
    REGEXP_LIKE matches the whole value, so there "no visible character" is REGEXP_INSTR = 0.
    """
    every = ", 'g'" if dialect == "postgres" else ""
    visible = _VISIBLE_UNICODE if dialect in ("bigquery", "databricks") else _VISIBLE_POSIX

    def maybe_missing(column: str) -> str:
        stripped = f"REGEXP_REPLACE({_text(column)}, '\\\\[a-zA-Z0-9]*|\"', ''{every})"
        invisible = (
            f"REGEXP_INSTR({stripped}, '{visible}') = 0"
            if dialect == "snowflake"
            else f"NOT {stripped} ~ '{visible}'"
        )
        return (
            f"(m.{quote_ident(column)} IS NULL"
            f" OR LOWER({_text(column)}) IN ('null', 'nan', 'infinity', '-infinity')"
            f" OR {invisible})"
        )

    # As locally: a row needs one of its IDs (an alias its user ID), its call column and names.
    ids = [sync.user_id] if sync.type == "alias" else sync.id_columns
    tests = [" AND ".join(maybe_missing(c) for c in ids if c)] if any(ids) else []
    names = (sync.call_column, *sync.event_columns.values())
    tests += [maybe_missing(c) for c in dict.fromkeys(names) if c]
    return f"CASE WHEN {' OR '.join(f'({t})' for t in tests)} THEN 1 ELSE 0 END" if tests else "0"


def fingerprint_sql(
    sync: SyncConfig, shape: str, tables: Tables, dialect: str, model: str, target: str = ""
) -> str:
    """Materialise the model (``model``, the user's SQL, kept verbatim) with key, hash and
    suspect flag, as ``target`` (default: `<sync>__model`)."""
    template = f"""
        CREATE TABLE {target or tables.model} AS
        SELECT m.*, {_text(sync.primary_key)} AS __rs_wpk,
               {content_hash_sql(sync, shape, dialect)} AS __rs_whash,
               {suspect_sql(sync, dialect)} AS __rs_suspect
        FROM {_MODEL_PLACEHOLDER} AS m
    """
    body = statement_body(model)
    return render(template, dialect).replace(_MODEL_PLACEHOLDER, f"(\n{body}\n)")


def kept_rows_sql(target: str, dialect: str, model: str) -> str:
    """`create table <target> as` a query's rows as they are (``model``: the user's SQL with
    its filter around it, kept verbatim): an append sync's rows read past its cursor, kept in
    the warehouse between its snapshot and diff steps (`append.py`)."""
    template = f"CREATE TABLE {target} AS SELECT m.* FROM {_MODEL_PLACEHOLDER} AS m"
    body = statement_body(model)
    return render(template, dialect).replace(_MODEL_PLACEHOLDER, f"(\n{body}\n)")


def kept_rows_read_sql(target: str, dialect: str) -> str:
    """The rows `kept_rows_sql` kept, to read out (in the dialect: a store's reader runs it as
    it is, as it runs the diff's `changed_rows_sql`)."""
    return render(f"SELECT * FROM {target}", dialect)


def append_cursor_ddl(tables: Tables, dialect: str) -> str:
    """An append sync's keys (delivered within the lookback, or pending) with their cursor, both
    as text: the cursor's type is the model's, which only the scratch copy needs (it casts the
    text back, `WarehouseSyncState.load_append_keys`), so the table is the same on every engine."""
    return render(
        f"CREATE TABLE IF NOT EXISTS {tables.append_cursor} (__rs_pk TEXT, __rs_cursor TEXT)",
        dialect,
    )


def delta_sql(tables: Tables, dialect: str) -> str:
    """The keys whose rows must leave the warehouse (`__rs_removed`: only the snapshot has it).

    A key is in it when it is new, its hash differs from the committed one (or none was
    recorded, as after switching from local state), it repeats in the model, it was removed, or
    a pending change or a rejected row holds it (they are re-examined by every diff). The model's
    rows join the snapshot as they are; repeated keys are found apart (`HAVING COUNT(*) > 1`
    keeps only them): grouping every key first cost more than the join.
    """
    template = f"""
        CREATE TABLE {tables.delta} AS
        WITH current_rows AS (
            SELECT __rs_wpk, __rs_whash FROM {tables.model} WHERE __rs_wpk IS NOT NULL
        ), repeated AS (
            SELECT __rs_wpk FROM current_rows GROUP BY __rs_wpk HAVING COUNT(*) > 1
        ), base AS (
            SELECT __rs_wpk, __rs_whash FROM {tables.snapshot}
            WHERE NOT __rs_deleted AND __rs_wpk IS NOT NULL
        ), held AS (
            SELECT __rs_wpk FROM {tables.pending} WHERE __rs_wpk IS NOT NULL
            UNION
            SELECT __rs_wpk FROM {tables.rejected_rows} WHERE __rs_wpk IS NOT NULL
        )
        SELECT COALESCE(c.__rs_wpk, b.__rs_wpk) AS __rs_wpk, c.__rs_wpk IS NULL AS __rs_removed
        FROM current_rows AS c
        FULL OUTER JOIN base AS b ON b.__rs_wpk = c.__rs_wpk
        WHERE c.__rs_wpk IS NULL OR b.__rs_wpk IS NULL OR b.__rs_whash IS NULL
           OR c.__rs_whash <> b.__rs_whash
           OR COALESCE(c.__rs_wpk, b.__rs_wpk) IN (SELECT __rs_wpk FROM held)
        UNION
        SELECT __rs_wpk, FALSE AS __rs_removed FROM repeated
    """
    return render(template, dialect)


def changed_rows_sql(tables: Tables, dialect: str, every_row: bool = False) -> str:
    """The model rows that leave: those of the delta's present keys and those without a key
    (``every_row``: all of them, for a resync or a first run)."""
    where = (
        ""
        if every_row
        else f"""WHERE m.__rs_wpk IS NULL
           OR m.__rs_wpk IN (SELECT __rs_wpk FROM {tables.delta} WHERE NOT __rs_removed)"""
    )
    return render(f"SELECT m.* FROM {tables.model} AS m {where}", dialect)


def base_rows_sql(tables: Tables, keys: str, dialect: str) -> str:
    """The committed snapshot rows the local diff needs: those of the keys that left (``keys``,
    by their rendered key, without the last values: only a removed row sends them) and those
    removed (live, and absent from the model or of unknown warehouse key)."""
    columns = """s.__rs_pk, s.__rs_hash, s.__rs_version, s.__rs_deleted,
               s.__rs_user_id, s.__rs_anonymous_id, {props}, s.__rs_committed_at"""
    # Three parts, each able to use an index (the snapshot's primary key, its __rs_wpk index),
    # rather than one OR that scans the whole snapshot.
    template = f"""
        SELECT {columns.format(props="CAST(NULL AS TEXT) AS __rs_props")}
        FROM {tables.snapshot} AS s JOIN {keys} AS k ON k.__rs_pk = s.__rs_pk
        UNION ALL
        SELECT {columns.format(props="s.__rs_props")}
        FROM {tables.snapshot} AS s
        WHERE NOT s.__rs_deleted
          AND s.__rs_wpk IN (SELECT __rs_wpk FROM {tables.delta} WHERE __rs_removed)
          AND s.__rs_pk NOT IN (SELECT __rs_pk FROM {keys})
        UNION ALL
        SELECT {columns.format(props="s.__rs_props")}
        FROM {tables.snapshot} AS s
        WHERE NOT s.__rs_deleted AND s.__rs_wpk IS NULL
          AND s.__rs_pk NOT IN (SELECT __rs_pk FROM {keys})
    """
    return render(template, dialect)


def window_delta_sql(tables: Tables, current: str, previous: str | None, dialect: str) -> str:
    """The keys of a time window that differ from the window before (`previous`; None: the
    first window, every key): new, removed, changed, repeated or suspect on either side."""

    def keys(table: str) -> str:
        return f"""
            SELECT __rs_wpk, MIN(__rs_whash) AS __rs_whash, COUNT(*) AS __rs_rows,
                   MAX(__rs_suspect) AS __rs_suspect
            FROM {table} WHERE __rs_wpk IS NOT NULL GROUP BY __rs_wpk"""

    before = keys(previous) if previous else keys(current) + " HAVING 1 = 0"
    template = f"""
        CREATE TABLE {tables.delta} AS
        WITH current_keys AS ({keys(current)}), previous_keys AS ({before})
        SELECT COALESCE(c.__rs_wpk, p.__rs_wpk) AS __rs_wpk
        FROM current_keys AS c
        FULL OUTER JOIN previous_keys AS p ON p.__rs_wpk = c.__rs_wpk
        WHERE c.__rs_wpk IS NULL OR p.__rs_wpk IS NULL OR c.__rs_whash <> p.__rs_whash
           OR c.__rs_rows > 1 OR p.__rs_rows > 1 OR c.__rs_suspect = 1 OR p.__rs_suspect = 1
    """
    return render(template, dialect)


def window_rows_sql(table: str, tables: Tables, dialect: str, current: bool) -> str:
    """A window's rows whose key is in the delta (the current window's: and those without)."""
    null_keys = "m.__rs_wpk IS NULL OR " if current else ""
    return render(
        f"SELECT m.* FROM {table} AS m WHERE {null_keys}"
        f"m.__rs_wpk IN (SELECT __rs_wpk FROM {tables.delta})",
        dialect,
    )


def statements(
    sync: SyncConfig, shape: str, tables: Tables, dialect: str, model: str
) -> dict[str, str]:
    """Every statement of the in-warehouse diff in one dialect (for golden files and docs)."""
    return {
        "fingerprint": fingerprint_sql(sync, shape, tables, dialect, model),
        "delta": delta_sql(tables, dialect),
        "changed_rows": changed_rows_sql(tables, dialect),
        "base_rows": base_rows_sql(tables, "__rs_keys", dialect),
        "window_delta": window_delta_sql(
            tables,
            tables.qualified(tables.window_name("2024-01-02")),
            tables.qualified(tables.window_name("2024-01-01")),
            dialect,
        ),
    }
