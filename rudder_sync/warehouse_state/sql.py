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

from dataclasses import dataclass

import sqlglot

from ..config import SyncConfig
from ..jsonvalues import quote_ident, quote_literal

DIALECTS = ("postgres", "redshift", "snowflake", "bigquery", "databricks")
_MODEL_PLACEHOLDER = "__rs_model_sql__"
# The state tables of one sync, by role: `<prefix>__<role>`.
TABLE_ROLES = ("meta", "model", "delta", "snapshot", "pending", "rejected_rows", "delivery_log")


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
        return f"{quote_ident(self.schema)}.{quote_ident(self.name(role))}"


def render(sql: str, dialect: str) -> str:
    """PostgreSQL-syntax SQL in ``dialect`` (sqlglot), pretty-printed."""
    if dialect == "postgres":
        return sqlglot.transpile(sql, read="postgres", pretty=True)[0]
    return sqlglot.transpile(sql, read="postgres", write=dialect, pretty=True)[0]


def _text(column: str) -> str:
    return f"CAST(m.{quote_ident(column)} AS TEXT)"


def content_hash_sql(sync: SyncConfig, shape: str) -> str:
    """MD5 of the shape and each carried value, length-prefixed, NULL as `N`."""
    parts = [quote_literal(shape)] + [
        f"COALESCE(CAST(LENGTH({_text(c)}) AS TEXT) || ':' || {_text(c)}, 'N')"
        for c in sync.carried_columns
    ]
    return "MD5(" + " || ',' || ".join(parts) + ")"


def fingerprint_sql(sync: SyncConfig, shape: str, tables: Tables, dialect: str, model: str) -> str:
    """Materialise the model (``model``, the user's SQL, kept verbatim) with key and hash."""
    template = f"""
        CREATE TABLE {tables.model} AS
        SELECT m.*, {_text(sync.primary_key)} AS __rs_wpk,
               {content_hash_sql(sync, shape)} AS __rs_whash
        FROM {_MODEL_PLACEHOLDER} AS m
    """
    body = model.strip().rstrip(";")
    return render(template, dialect).replace(_MODEL_PLACEHOLDER, f"(\n{body}\n)")


def delta_sql(tables: Tables, dialect: str) -> str:
    """The keys whose rows must leave the warehouse (`__rs_removed`: only the snapshot has it).

    A key is in it when it is new, its hash differs from the committed one (or none was
    recorded, as after switching from local state), it repeats in the model, it was removed, or
    a pending change or a rejected row holds it (they are re-examined by every diff).
    """
    template = f"""
        CREATE TABLE {tables.delta} AS
        WITH current_keys AS (
            SELECT __rs_wpk, MIN(__rs_whash) AS __rs_whash, COUNT(*) AS __rs_rows
            FROM {tables.model} WHERE __rs_wpk IS NOT NULL GROUP BY __rs_wpk
        ), base AS (
            SELECT __rs_wpk, __rs_whash FROM {tables.snapshot}
            WHERE NOT __rs_deleted AND __rs_wpk IS NOT NULL
        ), held AS (
            SELECT __rs_wpk FROM {tables.pending} WHERE __rs_wpk IS NOT NULL
            UNION
            SELECT __rs_wpk FROM {tables.rejected_rows} WHERE __rs_wpk IS NOT NULL
        )
        SELECT DISTINCT COALESCE(c.__rs_wpk, b.__rs_wpk) AS __rs_wpk,
               c.__rs_wpk IS NULL AS __rs_removed
        FROM current_keys AS c
        FULL OUTER JOIN base AS b ON b.__rs_wpk = c.__rs_wpk
        WHERE c.__rs_wpk IS NULL OR b.__rs_wpk IS NULL OR b.__rs_whash IS NULL
           OR c.__rs_rows > 1 OR c.__rs_whash <> b.__rs_whash
           OR COALESCE(c.__rs_wpk, b.__rs_wpk) IN (SELECT __rs_wpk FROM held)
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
    template = f"""
        SELECT s.__rs_pk, s.__rs_hash, s.__rs_version, s.__rs_deleted,
               s.__rs_user_id, s.__rs_anonymous_id,
               CASE WHEN k.__rs_pk IS NULL THEN s.__rs_props END AS __rs_props,
               s.__rs_committed_at
        FROM {tables.snapshot} AS s
        LEFT JOIN {keys} AS k ON k.__rs_pk = s.__rs_pk
        WHERE k.__rs_pk IS NOT NULL
           OR (NOT s.__rs_deleted AND (s.__rs_wpk IS NULL
               OR s.__rs_wpk IN (SELECT __rs_wpk FROM {tables.delta} WHERE __rs_removed)))
    """
    return render(template, dialect)


def statements(
    sync: SyncConfig, shape: str, tables: Tables, dialect: str, model: str
) -> dict[str, str]:
    """Every statement of the in-warehouse diff in one dialect (for golden files and docs)."""
    return {
        "fingerprint": fingerprint_sql(sync, shape, tables, dialect, model),
        "delta": delta_sql(tables, dialect),
        "changed_rows": changed_rows_sql(tables, dialect),
        "base_rows": base_rows_sql(tables, "__rs_keys", dialect),
    }
