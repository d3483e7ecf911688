"""The in-warehouse diff's SQL (`rudder_sync/warehouse_state/sql.py`) in every dialect.

PostgreSQL's rendering runs for real in test_warehouse_state.py, the others on their engines'
stand-ins in test_engine_sql.py; this module pins the text down:

* golden files: every statement of `statements()` for two example syncs (a track sync with a
  mapping; an identify sync whose columns need quoting and whose model ends in `; -- comment`),
  one file per dialect, sync and statement:
  `rudder_sync_tests/golden/warehouse_sql/<dialect>/<sync>__<statement>.sql`;
* each rendering parses back with sqlglot in its own dialect (the fingerprint with its verbatim
  model swapped for a plain select: the model is the user's text, not sqlglot's);
* the per-dialect spellings that matter (the hash, text casts, identifier quotes, FULL OUTER JOIN).

Each dialect's statements are executed on its engine's stand-in in test_engine_sql.py.

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
    "redshift": "VARCHAR(65535)",  # VARCHAR(MAX) spelled so that PostgreSQL runs it too
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
