"""The in-warehouse diff's SQL, as rendered for each vendor warehouse, executed on its stand-in.

test_warehouse_sql.py pins the renderings down (golden files); here each dialect's statements
run on the engine that stands in for its warehouse (rudder_sync_tests/engines/): a committed
snapshot, a model that changed in known ways, then `fingerprint`, `delta`, `changed_rows`,
`base_rows` and `window_delta` in order, checking what each finds.

* Snowflake: the real connector against fakesnow's server (DuckDB underneath: quoted names are
  case-insensitive there, unlike on Snowflake).
* BigQuery: the real client against bqemulator (DuckDB underneath).
* Redshift: the real redshift_connector against PostgreSQL. PostgreSQL has no `VARCHAR(MAX)`, so
  the Redshift statements run with it spelled `VARCHAR(65535)` (Redshift's documented maximum, the
  same type there); the statements are otherwise verbatim, and the golden files keep the text.
* Databricks: Spark SQL on pyspark, plain parquet tables (the statements need no Delta).

The set-up (tables, rows) is written in PostgreSQL syntax and rendered for each engine by the
same `render` as the statements; it only creates and inserts (Spark's parquet tables have no
UPDATE or DELETE), so a change of the model is a new `users` table.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rudder_sync.config import parse_sync
from rudder_sync.diff import content_shape
from rudder_sync.warehouse_state.sql import Tables, fingerprint_sql, render, statements

from .helpers import TRACK_SYNC

# One xdist worker runs every test of the vendor engines (with --dist loadgroup), so that each
# stand-in (rudder_sync_tests/engines/) starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

SCHEMA = "rudder_sync"
TABLES = Tables(schema=SCHEMA, prefix="orders")
FIRST_WINDOW = TABLES.qualified(TABLES.window_name("2024-01-01"))
SECOND_WINDOW = TABLES.qualified(TABLES.window_name("2024-01-02"))

STATE_TABLES = [
    f"""create table {TABLES.snapshot} (
        __rs_pk varchar, __rs_hash varchar, __rs_version bigint, __rs_deleted boolean,
        __rs_user_id varchar, __rs_anonymous_id varchar, __rs_props varchar,
        __rs_committed_at timestamptz, __rs_wpk varchar, __rs_whash varchar)""",
    f"create table {TABLES.pending} (__rs_pk varchar, __rs_wpk varchar)",
    f"create table {TABLES.rejected_rows} (__rs_pk varchar, __rs_wpk varchar)",
    "create table __rs_keys (__rs_pk varchar)",
]
USERS_TABLE = """create table users (
    id integer, user_id varchar, anon_id varchar, email varchar, plan varchar,
    country varchar, updated_at timestamptz, event_id varchar)"""
BEFORE = """insert into users values
    (1, 'u1', 'a1', 'one@x.io', 'free', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e1'),
    (2, 'u2', 'a2', 'two@x.io', 'free', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e2'),
    (3, 'u3', null, 'three@x.io', 'free', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e3'),
    (4, 'u4', 'a4', 'four@x.io', 'free', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e4'),
    (5, 'u5', 'a5', 'five@x.io', 'team', 'FR', timestamptz '2024-05-01 12:00:00+00', 'e5'),
    (6, 'u6', 'a6', 'six@x.io', 'free', 'FR', timestamptz '2024-05-01 12:00:00+00', 'e6')"""
# 2 changes plan, 3 moves (country is not carried: no change), 4 is deleted, 7 and 8 sign up,
# 8 twice (a repeated key), one row has no key.
AFTER = """insert into users values
    (1, 'u1', 'a1', 'one@x.io', 'free', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e1'),
    (2, 'u2', 'a2', 'two@x.io', 'pro', 'DE', timestamptz '2024-05-01 12:00:00+00', 'e2'),
    (3, 'u3', null, 'three@x.io', 'free', 'US', timestamptz '2024-05-01 12:00:00+00', 'e3'),
    (5, 'u5', 'a5', 'five@x.io', 'team', 'FR', timestamptz '2024-05-01 12:00:00+00', 'e5'),
    (6, 'u6', 'a6', 'six@x.io', 'free', 'FR', timestamptz '2024-05-01 12:00:00+00', 'e6'),
    (7, 'u7', 'a7', 'seven@x.io', 'free', 'DE', timestamptz '2024-06-01 00:00:00+00', 'e7'),
    (8, 'u8', 'a8', 'eight@x.io', 'free', 'DE', timestamptz '2024-06-01 00:00:00+00', 'e8'),
    (8, 'u8', 'a8', 'eight@x.io', 'pro', 'DE', timestamptz '2024-06-01 00:00:00+00', 'e8'),
    (null, 'u0', 'a0', 'nokey@x.io', 'free', 'DE', timestamptz '2024-06-01 00:00:00+00', 'e0')"""
# The committed snapshot: every row of the first model as its fingerprint saw it, but 5 without a
# warehouse hash (as after switching from local state); 6 has a pending change; 9 was deleted
# long ago.
COMMIT = [
    f"""insert into {TABLES.snapshot}
    select 'pk' || __rs_wpk, 'h' || __rs_wpk, 1, false, user_id, anon_id,
           '{{"plan":"' || plan || '"}}', timestamptz '2024-05-02 00:00:00+00', __rs_wpk,
           case when __rs_wpk = '5' then null else __rs_whash end
    from {TABLES.model}""",
    f"""insert into {TABLES.snapshot} values ('pk9', 'h9', 1, true, 'u9', 'a9', '{{}}',
        timestamptz '2024-04-01 00:00:00+00', '9', 'w9')""",
    f"insert into {TABLES.pending} values ('pk6', '6')",
]


@dataclass
class Engine:
    """One stand-in: run a statement, or run a query and get its rows as dicts (lower-case)."""

    dialect: str
    execute: Callable[[str], None]
    query: Callable[[str], list[dict[str, Any]]]
    #: the dialect's statement as this engine can run it
    adapt: Callable[[str], str] = lambda text: text

    def run(self, postgres_sql: str) -> None:
        self.execute(self.adapt(render(postgres_sql, self.dialect)))


def _lower(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k.lower(): v for k, v in row.items()} for row in rows]


@pytest.fixture
def snowflake(snowflake_engine: Any) -> Iterator[Engine]:
    database = f"SQL_{uuid.uuid4().hex[:8].upper()}"
    conn = snowflake_engine.connect()
    cursor = conn.cursor()
    cursor.execute(f"create database {database}")
    cursor.execute(f"use database {database}")
    cursor.execute(f'create schema "{SCHEMA}"')
    cursor.execute("create schema app")
    cursor.execute("use schema app")

    def query(text: str) -> list[dict[str, Any]]:
        cursor.execute(text)
        names = [c[0] for c in cursor.description]
        return _lower([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])

    yield Engine("snowflake", cursor.execute, query)
    conn.close()


@pytest.fixture
def bigquery(bigquery_engine: Any) -> Iterator[Engine]:
    from google.cloud import bigquery as bq

    client = bigquery_engine.client()
    dataset = f"app_{uuid.uuid4().hex[:8]}"
    client.query(f"create schema if not exists `{SCHEMA}`").result()
    for table in ("snapshot", "pending", "rejected_rows", "model", "delta"):
        client.query(f"drop table if exists `{SCHEMA}`.`orders__{table}`").result()
    for window in (FIRST_WINDOW, SECOND_WINDOW):
        client.query(f"drop table if exists {render(window, 'bigquery')}").result()
    client.query(f"create schema `{dataset}`").result()
    config = bq.QueryJobConfig(default_dataset=f"{bigquery_engine.project}.{dataset}")

    def query(text: str) -> list[dict[str, Any]]:
        return _lower([dict(row.items()) for row in client.query(text, config).result()])

    yield Engine("bigquery", query, query)
    client.close()


@pytest.fixture
def redshift(redshift_engine: Any, pg: Any) -> Iterator[Engine]:
    conn = redshift_engine.connect(pg.name)
    cursor = conn.cursor()
    cursor.execute(f'create schema "{SCHEMA}"')
    # Redshift reads a backslash in '...' as an escape (sqlglot doubles them for it); so does
    # PostgreSQL with this setting.
    cursor.execute("set standard_conforming_strings = off")

    def query(text: str) -> list[dict[str, Any]]:
        cursor.execute(text)
        names = [c[0] for c in cursor.description]
        return _lower([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])

    def adapt(text: str) -> str:
        return text.replace("VARCHAR(MAX)", "VARCHAR(65535)")

    yield Engine("redshift", cursor.execute, lambda t: query(adapt(t)), adapt)
    conn.close()


@pytest.fixture
def databricks(spark_engine: Any) -> Iterator[Engine]:
    database = f"app_{uuid.uuid4().hex[:8]}"
    for name in (SCHEMA, database):
        spark_engine.sql(f"drop database if exists `{name}` cascade")
        spark_engine.sql(f"create database `{name}`")
    spark_engine.catalog.setCurrentDatabase(database)

    def query(text: str) -> list[dict[str, Any]]:
        return _lower([row.asDict() for row in spark_engine.sql(text).collect()])

    yield Engine("databricks", lambda t: spark_engine.sql(t).collect() and None, query)
    spark_engine.catalog.setCurrentDatabase("default")


# Spark's first statements start its JVM (the session's fixture): more time than pytest's 300 s
# default may pass on a loaded machine.
# The BigQuery emulator and Spark start processes of their own: slow, out of the inner loop.
ENGINES = [
    "snowflake",
    pytest.param("bigquery", marks=pytest.mark.slow),
    "redshift",
    pytest.param("databricks", marks=[pytest.mark.timeout(900), pytest.mark.slow]),
]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


def test_the_rendered_diff_finds_the_delta_on_each_engine(engine: Engine) -> None:
    """fingerprint, delta, changed_rows, base_rows, window_delta: each dialect's own text."""
    dialect = engine.dialect
    sync = parse_sync("orders", TRACK_SYNC, dialect)
    texts = statements(sync, content_shape(sync), TABLES, engine.dialect, sync.model)
    model, fingerprint = TABLES.model, texts["fingerprint"]

    def fingerprint_into(table: str) -> None:
        shape = content_shape(sync)
        text = fingerprint_sql(sync, shape, TABLES, engine.dialect, sync.model, target=table)
        engine.execute(engine.adapt(text))

    for text in STATE_TABLES:
        engine.run(text)
    engine.run(USERS_TABLE)
    engine.run(BEFORE)
    engine.execute(engine.adapt(fingerprint))
    fingerprint_into(FIRST_WINDOW)
    for text in COMMIT:
        engine.run(text)
    hashes = render(f"select __rs_wpk, __rs_whash, __rs_suspect from {model}", engine.dialect)
    first = {r["__rs_wpk"]: r for r in engine.query(hashes)}
    assert set(first) == {"1", "2", "3", "4", "5", "6"}
    assert all(re.fullmatch("[0-9a-f]{32}", r["__rs_whash"]) for r in first.values())
    assert len({r["__rs_whash"] for r in first.values()}) == 6
    assert {r["__rs_suspect"] for r in first.values()} == {0}  # each row has an ID

    engine.run("drop table users")
    engine.run(USERS_TABLE)
    engine.run(AFTER)
    engine.run(f"drop table {model}")
    engine.execute(engine.adapt(fingerprint))
    fingerprint_into(SECOND_WINDOW)
    now = {r["__rs_wpk"]: r["__rs_whash"] for r in engine.query(hashes) if r["__rs_wpk"]}
    assert {k: now[k] for k in ("1", "3", "5")} == {
        k: first[k]["__rs_whash"] for k in ("1", "3", "5")
    }, "an unchanged row (or a change of a column that is not carried) changed its hash"
    assert now["2"] != first["2"]["__rs_whash"]

    engine.execute(engine.adapt(texts["delta"]))
    delta = engine.query(render(f"select __rs_wpk, __rs_removed from {TABLES.delta}", dialect))
    assert {r["__rs_wpk"]: r["__rs_removed"] for r in delta} == {
        "2": False,  # changed
        "4": True,  # removed
        "5": False,  # committed without a warehouse hash
        "6": False,  # held by a pending change
        "7": False,  # added
        "8": False,  # added, twice
    }

    changed = engine.query(texts["changed_rows"])
    assert sorted((r["__rs_wpk"] or "-", r["plan"]) for r in changed) == [
        ("-", "free"),
        ("2", "pro"),
        ("5", "team"),
        ("6", "free"),
        ("7", "free"),
        ("8", "free"),
        ("8", "pro"),
    ]

    # The keys that left, by their rendered key: their snapshot rows without last values; the
    # removed row (4) with them; nothing of the long-deleted 9.
    engine.run("insert into __rs_keys values ('pk2'), ('pk5'), ('pk6'), ('pk7'), ('pk8')")
    base = engine.query(texts["base_rows"])
    assert {r["__rs_pk"]: r["__rs_props"] for r in base} == {
        "pk2": None,
        "pk4": '{"plan":"free"}',
        "pk5": None,
        "pk6": None,
    }
    assert list(base[0]) == [
        "__rs_pk",
        "__rs_hash",
        "__rs_version",
        "__rs_deleted",
        "__rs_user_id",
        "__rs_anonymous_id",
        "__rs_props",
        "__rs_committed_at",
    ]

    # Two windows: 2 changed, 4 removed, 7 added, 8 repeated; 1, 3 (country not carried), 5 and
    # 6 (the window delta has no snapshot, no pending) stay.
    engine.run(f"drop table {TABLES.delta}")
    engine.execute(engine.adapt(texts["window_delta"]))
    keys = engine.query(render(f"select __rs_wpk from {TABLES.delta}", dialect))
    assert sorted(r["__rs_wpk"] for r in keys) == ["2", "4", "7", "8"]


def test_the_rendered_suspect_flag_on_each_engine(engine: Engine) -> None:
    """Each engine's regex dialect (POSIX classes; RE2's and Java's Unicode properties) flags a
    row without any ID, or with only blanks, quotes or a JSON null, and no other: one missing ID
    of two is not suspect, nor is an ID in another script.

    On the PostgreSQL stand-in, Redshift's REGEXP_REPLACE (every match on Redshift; without
    PostgreSQL's 'g', which Redshift reads as a position) replaces only the first match, so the
    rows here hold at most one quote."""
    sync = parse_sync("orders", TRACK_SYNC, engine.dialect)
    engine.run(USERS_TABLE)
    engine.run(
        """insert into users values
        (1, 'u1', 'a1', 'one@x.io', 'free', 'DE', null, 'e1'),
        (3, 'u3', null, 'three@x.io', 'free', 'DE', null, 'e3'),
        (10, null, null, 'ten@x.io', 'free', 'DE', null, 'e10'),
        (11, '  ', '"', 'eleven@x.io', 'free', 'DE', null, 'e11'),
        (12, 'null', null, 'twelve@x.io', 'free', 'DE', null, 'e12'),
        (13, null, 'Zoë', 'thirteen@x.io', 'free', 'DE', null, 'e13'),
        (14, '東京', null, 'fourteen@x.io', 'free', 'DE', null, 'e14')"""
    )
    text = fingerprint_sql(sync, content_shape(sync), TABLES, engine.dialect, sync.model)
    engine.execute(engine.adapt(text))
    rows = engine.query(
        render(f"select __rs_wpk, __rs_suspect from {TABLES.model}", engine.dialect)
    )
    assert {r["__rs_wpk"]: r["__rs_suspect"] for r in rows} == {
        "1": 0,
        "3": 0,
        "10": 1,
        "11": 1,
        "12": 1,
        "13": 0,
        # fakesnow runs Snowflake's POSIX classes on RE2, where they are ASCII-only: a false
        # "suspect" only makes the row leave the warehouse (Snowflake's own regex not checked)
        "14": 1 if engine.dialect == "snowflake" else 0,
    }
