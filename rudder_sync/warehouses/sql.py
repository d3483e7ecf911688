"""Model SQL in the warehouse's own dialect: its `$name` parameters and the load-time check.

Models name their parameters `$partition_start` / `$partition_end` whatever the warehouse; each
driver binds them its own way (`$1` for ADBC PostgreSQL, `%s` for Redshift, `@name` for BigQuery,
`:name` for Databricks, ...). Values are always bound by the driver, never pasted into the SQL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import ModelSqlError

ParamStyle = Literal["numeric", "format", "pyformat", "qmark", "colon", "at"]

log = logging.getLogger("rudder_sync")

# What can hide a `$name` from the scanner: strings, quoted identifiers, comments, dollar quotes.
_SKIP = (
    r"'(?:[^']|'')*'"  # 'string' with '' escapes
    r'|"(?:[^"]|"")*"'  # "identifier"
    r"|`[^`]*`"  # `identifier` (BigQuery, Databricks)
    r"|--[^\n]*"  # -- comment
    r"|/\*.*?\*/"  # /* comment */
    r"|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?\$(?P=tag)?\$"  # $tag$ dollar-quoted $tag$
)
_TOKENS = re.compile(rf"(?P<skip>{_SKIP})|\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)", re.DOTALL)


# A statement's pieces: what to skip over whole, or one other character.
_PIECES = re.compile(rf"(?P<skip>{_SKIP})|(?P<blank>[\s;])|.", re.DOTALL)


def statement_body(sql: str) -> str:
    """The statement without what may trail it (semicolons, blanks, comments), so that it can be
    wrapped as a subquery: `select ... ; -- note` must not keep its `;` inside `( ... )`."""
    end = 0
    for match in _PIECES.finditer(sql):
        skipped = match.group("skip")
        if match.group("blank") is None and not (skipped and skipped.startswith(("--", "/*"))):
            end = match.end()
    return sql[:end].strip()


def named_parameters(sql: str) -> list[str]:
    """The `$name` parameters a query uses, in order of first use (not those in strings)."""
    seen: dict[str, None] = {}
    for match in _TOKENS.finditer(sql):
        if match.group("name"):
            seen.setdefault(match.group("name"), None)
    return list(seen)


def bind(
    sql: str, params: Mapping[str, Any] | None, style: ParamStyle
) -> tuple[str, list[Any] | dict[str, Any]]:
    """Rewrite `$name` parameters in a driver's style; returns the SQL and the values to bind.

    numeric: `$1` (each name one number); format/qmark: `%s`/`?` per occurrence; pyformat:
    `%(name)s`; colon: `:name`; at: `@name`. In the `%` styles, literal `%` are doubled.
    """
    values = dict(params or {})
    positional: list[Any] = []
    numbers: dict[str, int] = {}
    out: list[str] = []
    last = 0
    percent = style in ("format", "pyformat")
    for match in _TOKENS.finditer(sql):
        out.append(_escape(sql[last : match.start()], percent))
        last = match.end()
        name = match.group("name")
        if not name:
            out.append(_escape(match.group(0), percent))
            continue
        if name not in values:
            raise KeyError(name)
        if style == "numeric":
            if name not in numbers:
                numbers[name] = len(numbers) + 1
                positional.append(values[name])
            out.append(f"${numbers[name]}")
        elif style in ("format", "qmark"):
            positional.append(values[name])
            out.append("%s" if style == "format" else "?")
        elif style == "pyformat":
            out.append(f"%({name})s")
        else:
            out.append((":" if style == "colon" else "@") + name)
    out.append(_escape(sql[last:], percent))
    rewritten = "".join(out)
    if style in ("numeric", "format", "qmark"):
        return rewritten, positional
    used = named_parameters(sql)
    return rewritten, {name: values[name] for name in used}


def _escape(text: str, percent: bool) -> str:
    return text.replace("%", "%%") if percent else text


_QUERY_STARTS = {"SELECT", "WITH", "L_PAREN", "VALUES", "FROM", "TABLE"}
_ONE_STATEMENT = "keep a single SELECT (no trailing statements)"
_READS_ROWS = "write a query that returns rows; the model runs read-only"


def check_query(sql: str, dialect: str) -> set[str]:
    """One statement that reads, in the warehouse's dialect; returns the `$name`s it uses.

    DuckDB judges its own SQL. Other dialects are judged by sqlglot: a statement that sqlglot
    cannot parse but that starts like a query is accepted with a warning, since sqlglot does not
    know every construct of every warehouse and the warehouse judges it at run time.
    """
    if dialect == "duckdb":
        return _check_duckdb(sql)
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    # Parameters become NULL for the check: `$name` means something else in most dialects.
    probe = _TOKENS.sub(lambda m: m.group(0) if m.group("skip") else "NULL", sql)
    try:
        tokens = sqlglot.tokenize(probe, read=dialect)
    except TokenError as exc:
        raise ModelSqlError(f"is not valid SQL: {_first_line(exc)}") from None
    statements: list[list[Any]] = [[]]
    for token in tokens:
        if token.token_type.name == "SEMICOLON":
            statements.append([])
        else:
            statements[-1].append(token)
    statements = [s for s in statements if s]
    if len(statements) != 1:
        raise ModelSqlError(
            f"must be exactly one query, found {len(statements)} statements", _ONE_STATEMENT
        )
    first = statements[0][0]
    if first.token_type.name not in _QUERY_STARTS:
        raise ModelSqlError(f"must be a SELECT query, not {first.text.upper()}", _READS_ROWS)
    try:
        sqlglot.parse_one(probe, read=dialect)
    except ParseError as exc:
        log.warning(
            "could not check a model with sqlglot's %s dialect (%s); the warehouse will judge it "
            "when it runs",
            dialect,
            _first_line(exc),
        )
    return set(named_parameters(sql))


def _check_duckdb(sql: str) -> set[str]:
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ModelSqlError(f"is not valid SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise ModelSqlError(
            f"must be exactly one query, found {len(statements)} statements", _ONE_STATEMENT
        )
    if statements[0].type != duckdb.StatementType.SELECT:
        raise ModelSqlError(f"must be a SELECT query, not {statements[0].type.name}", _READS_ROWS)
    return set(statements[0].named_parameters)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
