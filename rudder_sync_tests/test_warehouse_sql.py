"""The in-warehouse diff's SQL (`rudder_sync/warehouse_state/sql.py`) in every dialect.

PostgreSQL's rendering runs for real in test_warehouse_state.py; the other dialects are only
rendered, so this module pins them down:

* golden files: every statement of `statements()` for two example syncs (a track sync with a
  mapping; an identify sync whose columns need quoting and whose model ends in `; -- comment`),
  one file per dialect, sync and statement:
  `rudder_sync_tests/golden/warehouse_sql/<dialect>/<sync>__<statement>.sql`;
* each rendering parses back with sqlglot in its own dialect (the fingerprint with its verbatim
  model swapped for a plain select: the model is the user's text, not sqlglot's);
* the per-dialect spellings that matter (the hash, text casts, identifier quotes, FULL OUTER JOIN);
* the Snowflake rendering run end to end on fakesnow (Snowflake emulated on DuckDB).

After an intended change of the SQL, regenerate the golden files and review their diff:

    RUDDER_SYNC_UPDATE_GOLDEN=1 .venv/bin/pytest -q rudder_sync_tests/test_warehouse_sql.py
    git diff rudder_sync_tests/golden/warehouse_sql

With RUDDER_SYNC_UPDATE_GOLDEN=1 the golden tests write the files (and remove those no statement
produces any more) instead of comparing.

The faults these tests once pinned (a model's trailing `; -- comment` kept inside the subquery,
PostgreSQL's 'g' flag where a 4th argument is a position, POSIX classes where the engine has
none, Snowflake's whole-value REGEXP_LIKE) stay below as regression tests.
"""

from __future__ import annotations

import os
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from rudder_sync.config import SyncConfig, parse_sync
from rudder_sync.diff import content_shape
from rudder_sync.warehouse_state.sql import DIALECTS, Tables, statements

from .helpers import TRACK_SYNC

GOLDEN = Path(__file__).parent / "golden" / "warehouse_sql"
UPDATE = os.environ.get("RUDDER_SYNC_UPDATE_GOLDEN") == "1"
SCHEMA = "rudder_sync"

# An identify sync whose columns need quoting everywhere (spaces, upper case, a double quote),
# and whose model ends in a semicolon and a `--` comment, as users write them.
PEOPLE_SYNC: dict[str, Any] = {
    "model": "select *\nfrom crm.people\nwhere not is_test; -- test accounts stay out",
    "primary_key": "Customer Key",
    "type": "identify",
    "user_id": "User ID",
    "anonymous_id": "AnonId",
    "mapping": {"email": "E-mail", "plan": "Plan", "nickname": 'Say "Hi"'},
}
EXAMPLES: dict[str, dict[str, Any]] = {"orders": TRACK_SYNC, "people": PEOPLE_SYNC}
STATEMENTS = ("fingerprint", "delta", "changed_rows", "base_rows", "window_delta")
# The type every CAST(... AS <text>) of a rendering names.
TEXT_TYPE = {
    "postgres": "TEXT",
    "redshift": "VARCHAR(MAX)",
    "snowflake": "VARCHAR",
    "bigquery": "STRING",
    "databricks": "STRING",
}
BACKTICKS = {"bigquery", "databricks"}
# The model of a fingerprint, as sql.py embeds it: `FROM (\n<model>\n) AS m` at the very end.
EMBEDDED_MODEL = re.compile(r"FROM \(\n.*\n\) AS m\Z", re.DOTALL)


def example_sync(name: str, dialect: str) -> SyncConfig:
    return parse_sync(name, EXAMPLES[name], dialect)


@cache
def rendered(name: str, dialect: str) -> dict[str, str]:
    """Every statement of the example sync ``name`` in ``dialect``."""
    sync = example_sync(name, dialect)
    tables = Tables(schema=SCHEMA, prefix=name)
    # (sqlglot logs that BigQuery's REGEXP_REPLACE drops the 'g' flag: it replaces every match.)
    return statements(sync, content_shape(sync), tables, dialect, sync.model)


def without_model(text: str) -> str:
    """The fingerprint with its embedded (verbatim, user's) model replaced by a plain select."""
    replaced, count = EMBEDDED_MODEL.subn("FROM (SELECT 1 AS x) AS m", text)
    assert count == 1, f"no embedded model found at the end of:\n{text}"
    return replaced


def parsed(statement: str, text: str, dialect: str) -> exp.Expression:
    """The rendering read back by sqlglot in its dialect (a fingerprint without its model)."""
    return sqlglot.parse_one(without_model(text) if statement == "fingerprint" else text, dialect)


def golden_path(dialect: str, name: str, statement: str) -> Path:
    return GOLDEN / dialect / f"{name}__{statement}.sql"


CASES = [(d, n, s) for d in DIALECTS for n in EXAMPLES for s in STATEMENTS]
IDS = [f"{d}-{n}-{s}" for d, n, s in CASES]


def test_examples_cover_every_statement():
    for dialect in DIALECTS:
        for name in EXAMPLES:
            assert tuple(rendered(name, dialect)) == STATEMENTS


@pytest.mark.parametrize(("dialect", "name", "statement"), CASES, ids=IDS)
def test_golden(dialect: str, name: str, statement: str):
    text = rendered(name, dialect)[statement] + "\n"
    path = golden_path(dialect, name, statement)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return
    assert path.exists(), f"{path} is missing; RUDDER_SYNC_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), (
        f"the {dialect} rendering of {name}/{statement} differs from {path}; if the change is "
        "intended, rerun with RUDDER_SYNC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_no_stale_golden_files():
    expected = {golden_path(*case) for case in CASES}
    found = set(GOLDEN.glob("*/*.sql"))
    if UPDATE:
        for path in found - expected:
            path.unlink()
        return
    assert not found - expected, f"golden files no statement produces: {sorted(found - expected)}"


@pytest.mark.parametrize(("dialect", "name", "statement"), CASES, ids=IDS)
def test_parses_back_in_its_dialect(dialect: str, name: str, statement: str):
    text = rendered(name, dialect)[statement]
    if statement == "fingerprint":
        text = without_model(text)
    parsed = sqlglot.parse(text, read=dialect)
    assert len(parsed) == 1, f"{len(parsed)} statements in the {dialect} {statement}"
    tree = parsed[0]
    assert tree is not None
    if statement in ("fingerprint", "delta", "window_delta"):
        assert isinstance(tree, exp.Create)
    elif statement == "base_rows":
        assert isinstance(tree, exp.Union)  # three parts, each able to use an index
    else:
        assert isinstance(tree, exp.Select)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", EXAMPLES)
def test_dialect_spellings(dialect: str, name: str):
    """What each warehouse needs: its hash as text, its text type, its identifier quotes."""
    sync = example_sync(name, dialect)
    texts = rendered(name, dialect)
    fingerprint = without_model(texts["fingerprint"])
    tree = sqlglot.parse_one(fingerprint, read=dialect)
    # PostgreSQL: its 64-bit hashtextextended, as text. Elsewhere MD5 as hex text; BigQuery's MD5
    # returns BYTES, so it must be wrapped in TO_HEX.
    if dialect == "postgres":
        pattern = r"\bCAST\(\s*HASHTEXTEXTENDED\(.*,\s*0\s*\)\s*AS TEXT\s*\)"
        assert re.search(pattern, fingerprint, re.DOTALL)
        assert "MD5(" not in fingerprint
    else:
        assert fingerprint.count("MD5(") == 1
    if dialect == "bigquery":
        assert re.search(r"\bTO_HEX\(\s*MD5\(", fingerprint)
    else:
        assert "TO_HEX" not in fingerprint
    # Text casts: the dialect's own text type, and nothing else.
    casts = {cast.to.sql(dialect) for cast in tree.find_all(exp.Cast)}
    assert casts == {TEXT_TYPE[dialect]}
    # Identifiers quoted the dialect's way, every column of the sync included.
    quote = "`{}`" if dialect in BACKTICKS else '"{}"'
    escaped = (lambda c: c) if dialect in BACKTICKS else (lambda c: c.replace('"', '""'))
    for column in {sync.primary_key, *sync.carried_columns}:
        assert f"m.{quote.format(escaped(column))}" in fingerprint, column
    for statement, role in (
        ("fingerprint", "model"),
        ("delta", "delta"),
        ("delta", "snapshot"),
        ("delta", "pending"),
        ("delta", "rejected_rows"),
        ("changed_rows", "delta"),
        ("base_rows", "snapshot"),
    ):
        qualified = f"{quote.format(SCHEMA)}.{quote.format(f'{name}__{role}')}"
        assert qualified in texts[statement], (statement, role)
    # Read back in the dialect, each of those names is a quoted identifier, never a string.
    names = {sync.primary_key, *sync.carried_columns, SCHEMA}
    for statement, text in texts.items():
        tree = parsed(statement, text, dialect)
        strings = {node.this for node in tree.find_all(exp.Literal) if node.is_string}
        assert not names & strings, (statement, names & strings)
        quoted = {node.name for node in tree.find_all(exp.Identifier) if node.quoted}
        assert SCHEMA in quoted
        if statement == "fingerprint":
            assert names <= quoted
    for statement in ("delta", "window_delta"):
        assert "FULL OUTER JOIN" in texts[statement]


# --- faults the renderings once had ---------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_model_ending_in_semicolon_and_comment_is_embedded_as_one_statement(dialect: str):
    """`...; -- comment` at the model's end: its `;` must not stay inside `FROM ( ... ) AS m`."""
    text = rendered("people", dialect)["fingerprint"]
    parsed = sqlglot.parse(text, read=dialect)
    assert len(parsed) == 1 and isinstance(parsed[0], exp.Create)


@pytest.mark.parametrize("dialect", ["snowflake", "redshift"])
def test_regexp_replace_has_no_flags_argument(dialect: str):
    """PostgreSQL's 'g' is a start position there (and both replace every match anyway)."""
    for name in EXAMPLES:
        assert ", 'g')" not in rendered(name, dialect)["fingerprint"]


def test_databricks_suspect_pattern_is_java_regex():
    """Java regexes have no POSIX classes: `[[:alnum:]]` would be the set of ':alnum'."""
    assert r"'[\\p{L}\\p{N}\\p{P}\\p{S}]'" in rendered("orders", "databricks")["fingerprint"]
    for name in EXAMPLES:
        assert "[:alnum:]" not in rendered(name, "databricks")["fingerprint"]


# --- the Snowflake rendering, run on fakesnow ---------------------------------------------------

SNOWFLAKE_TABLES = """
create table "rudder_sync"."orders__snapshot" (
    __rs_pk varchar, __rs_hash varchar, __rs_version bigint, __rs_deleted boolean,
    __rs_user_id varchar, __rs_anonymous_id varchar, __rs_props varchar,
    __rs_committed_at timestamp_tz, __rs_wpk varchar, __rs_whash varchar
);
create table "rudder_sync"."orders__pending" (__rs_pk varchar, __rs_wpk varchar);
create table "rudder_sync"."orders__rejected_rows" (__rs_pk varchar, __rs_wpk varchar);
create table __rs_keys (__rs_pk varchar);
create table users (
    id integer, user_id varchar, anon_id varchar, email varchar, plan varchar,
    country varchar, updated_at timestamp_tz, event_id varchar
);
insert into users values
    (1, 'u1', 'a1', 'one@x.io', 'free', 'DE', '2024-05-01 12:00:00', 'e1'),
    (2, 'u2', 'a2', 'two@x.io', 'free', 'DE', '2024-05-01 12:00:00', 'e2'),
    (3, 'u3', null, 'three@x.io', 'free', 'DE', '2024-05-01 12:00:00', 'e3'),
    (4, 'u4', 'a4', 'four@x.io', 'free', 'DE', '2024-05-01 12:00:00', 'e4'),
    (5, 'u5', 'a5', 'five@x.io', 'team', 'FR', '2024-05-01 12:00:00', 'e5'),
    (6, 'u6', 'a6', 'six@x.io', 'free', 'FR', '2024-05-01 12:00:00', 'e6')
"""
# What happens between the committed run and this one: 2 changes plan, 3 moves (country is not
# carried: no change), 4 is deleted, 7 and 8 sign up, 8 twice (a repeated key), one row has no
# key. In the state: 5 was committed without a warehouse hash (as after switching from local
# state), 6 has a pending change, 9 was deleted long ago.
SNOWFLAKE_CHANGES = """
update users set plan = 'pro' where id = 2;
update users set country = 'US' where id = 3;
delete from users where id = 4;
insert into users values
    (7, 'u7', 'a7', 'seven@x.io', 'free', 'DE', '2024-06-01 00:00:00', 'e7'),
    (8, 'u8', 'a8', 'eight@x.io', 'free', 'DE', '2024-06-01 00:00:00', 'e8'),
    (8, 'u8', 'a8', 'eight@x.io', 'pro', 'DE', '2024-06-01 00:00:00', 'e8'),
    (null, 'u0', 'a0', 'nokey@x.io', 'free', 'DE', '2024-06-01 00:00:00', 'e0');
update "rudder_sync"."orders__snapshot" set __rs_whash = null where __rs_wpk = '5';
insert into "rudder_sync"."orders__pending" values ('pk6', '6');
insert into "rudder_sync"."orders__snapshot" values
    ('pk9', 'h9', 1, true, 'u9', 'a9', '{}', '2024-04-01 00:00:00', '9', 'w9');
"""
# The committed snapshot: every row of the model as the fingerprint saw it.
SNOWFLAKE_COMMIT = """
insert into "rudder_sync"."orders__snapshot"
select 'pk' || __rs_wpk, 'h' || __rs_wpk, 1, false, user_id, anon_id, '{"plan":"' || plan || '"}',
       '2024-05-02 00:00:00', __rs_wpk, __rs_whash
from "rudder_sync"."orders__model"
"""


@pytest.fixture
def fakesnow_cursor():
    fakesnow = pytest.importorskip("fakesnow")
    import snowflake.connector

    with (
        warnings.catch_warnings(),
        fakesnow.patch(),
        snowflake.connector.connect(database="db", schema="public") as conn,
    ):
        warnings.simplefilter("ignore")  # fakesnow's notes on Arrow copies
        cursor = conn.cursor()
        cursor.execute('create schema "rudder_sync"')
        yield cursor


def run_all(cursor: Any, script: str) -> None:
    for statement in filter(str.strip, script.split(";")):
        cursor.execute(statement)


def test_snowflake_rendering_finds_the_delta_on_fakesnow(fakesnow_cursor):
    """fingerprint, delta, changed_rows and base_rows, run in order."""
    cursor = fakesnow_cursor
    texts = rendered("orders", "snowflake")
    fingerprint = texts["fingerprint"]
    run_all(cursor, SNOWFLAKE_TABLES)
    cursor.execute(fingerprint)
    cursor.execute(SNOWFLAKE_COMMIT)
    cursor.execute('select __rs_wpk, __rs_whash from "rudder_sync"."orders__model"')
    committed = dict(cursor.fetchall())
    assert set(committed) == {"1", "2", "3", "4", "5", "6"}
    assert all(re.fullmatch("[0-9a-f]{32}", value) for value in committed.values())
    assert len(set(committed.values())) == 6

    run_all(cursor, SNOWFLAKE_CHANGES)
    cursor.execute('drop table "rudder_sync"."orders__model"')
    cursor.execute(fingerprint)
    cursor.execute('select __rs_wpk, __rs_whash from "rudder_sync"."orders__model"')
    now = cursor.fetchall()
    assert {k: h for k, h in now if k in ("1", "3", "5")} == {
        k: committed[k] for k in ("1", "3", "5")
    }, "an unchanged row (or a change of a column that is not carried) changed its hash"
    assert dict(now)["2"] != committed["2"]

    cursor.execute(texts["delta"])
    cursor.execute('select __rs_wpk, __rs_removed from "rudder_sync"."orders__delta"')
    delta = dict(cursor.fetchall())
    assert delta == {
        "2": False,  # changed
        "4": True,  # removed
        "5": False,  # committed without a warehouse hash
        "6": False,  # held by a pending change
        "7": False,  # added
        "8": False,  # added, twice
    }

    cursor.execute(texts["changed_rows"])
    columns = [c[0].lower() for c in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    assert sorted((r["__rs_wpk"] or "-", r["plan"]) for r in rows) == [
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
    cursor.execute("insert into __rs_keys values ('pk2'), ('pk5'), ('pk6'), ('pk7'), ('pk8')")
    cursor.execute(texts["base_rows"])
    columns = [c[0].lower() for c in cursor.description]
    base = {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}
    assert set(base) == {"pk2", "pk4", "pk5", "pk6"}
    assert {pk: row["__rs_props"] for pk, row in base.items()} == {
        "pk2": None,
        "pk4": '{"plan":"free"}',
        "pk5": None,
        "pk6": None,
    }
    assert columns == [
        "__rs_pk",
        "__rs_hash",
        "__rs_version",
        "__rs_deleted",
        "__rs_user_id",
        "__rs_anonymous_id",
        "__rs_props",
        "__rs_committed_at",
    ]


def test_snowflake_window_delta_on_fakesnow(fakesnow_cursor):
    """Two windows fingerprinted; the window delta finds the keys that differ.

    The suspect flags are set to 0 but one: a suspect row's key leaves whatever its hash.
    """
    cursor = fakesnow_cursor
    texts = rendered("orders", "snowflake")
    run_all(cursor, SNOWFLAKE_TABLES)
    fingerprint = texts["fingerprint"]
    model = '"rudder_sync"."orders__model"'
    first, second = '"rudder_sync"."orders__w_2024_01_01"', '"rudder_sync"."orders__w_2024_01_02"'
    cursor.execute(fingerprint.replace(model, first))
    run_all(
        cursor,
        """update users set plan = 'pro' where id = 2;
        update users set country = 'US' where id = 3;
        delete from users where id = 4;
        insert into users values (7, 'u7', 'a7', 'seven@x.io', 'free', 'DE', null, 'e7'),
                                 (6, 'u6', 'a6', 'six@x.io', 'free', 'FR', null, 'e6')""",
    )
    cursor.execute(fingerprint.replace(model, second))
    for window in (first, second):
        cursor.execute(f"update {window} set __rs_suspect = 0")
    cursor.execute(f"update {second} set __rs_suspect = 1 where __rs_wpk = '5'")
    cursor.execute(texts["window_delta"])
    cursor.execute('select __rs_wpk from "rudder_sync"."orders__delta"')
    # 2 changed, 4 removed, 5 suspect, 6 repeated, 7 added; 1 and 3 (country not carried) stay.
    assert sorted(k for (k,) in cursor.fetchall()) == ["2", "4", "5", "6", "7"]


def test_snowflake_fingerprint_and_suspect_flag_on_fakesnow(fakesnow_cursor):
    """The verbatim Snowflake fingerprint runs; it flags a row without any ID (or with only
    blanks, quotes or a JSON null) and no other: one missing ID of two is not suspect."""
    cursor = fakesnow_cursor
    run_all(cursor, SNOWFLAKE_TABLES)
    run_all(
        cursor,
        """insert into users values
            (10, null, null, 'ten@x.io', 'free', 'DE', null, 'e10'),
            (11, '  ', '""', 'eleven@x.io', 'free', 'DE', null, 'e11'),
            (12, 'null', null, 'twelve@x.io', 'free', 'DE', null, 'e12'),
            (13, null, 'Zoë', 'thirteen@x.io', 'free', 'DE', null, 'e13')""",
    )
    cursor.execute(rendered("orders", "snowflake")["fingerprint"])
    cursor.execute('select __rs_wpk, __rs_suspect from "rudder_sync"."orders__model"')
    # user 3 has no anonymous ID but a user ID, 13 the reverse: neither is suspect.
    expected = {str(i): 0 for i in (*range(1, 7), 13)} | {"10": 1, "11": 1, "12": 1}
    assert dict(cursor.fetchall()) == expected
