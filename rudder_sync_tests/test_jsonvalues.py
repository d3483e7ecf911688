"""Type-by-type checks of the SQL in rudder_sync.jsonvalues against real DuckDB tables.

Every test runs with the session TimeZone set to America/New_York, so any result that
depended on the session time zone instead of UTC would show up as a wrong value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pytest

from rudder_sync.jsonvalues import (
    column_types,
    id_sql,
    json_object_sql,
    json_value_sql,
    quote_ident,
    quote_literal,
    timestamp_sql,
)


@dataclass(frozen=True)
class Raw:
    """Expected exact JSON text of a value (used where the digits themselves matter)."""

    text: str


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'America/New_York'")
    yield c
    c.close()


def _make_table(conn: duckdb.DuckDBPyConnection, type_sql: str, values: list[str]) -> None:
    conn.execute(f"CREATE OR REPLACE TABLE t (i INTEGER, v {type_sql})")
    for i, value in enumerate(values):
        conn.execute(f"INSERT INTO t VALUES ({i}, {value})")


def _column_json(conn: duckdb.DuckDBPyConnection, table: str = "t") -> list[str]:
    """JSON object text for column v of each row, in order of column i."""
    types = column_types(conn, table)
    sql = json_object_sql([("v", quote_ident("v"), types["v"])])
    return [row[0] for row in conn.execute(f"SELECT {sql} FROM {table} ORDER BY i").fetchall()]


def _check(texts: list[str], expected: list[Any]) -> None:
    assert len(texts) == len(expected)
    for text, want in zip(texts, expected, strict=True):
        parsed = orjson.loads(text)  # must be valid JSON in every case
        if isinstance(want, Raw):
            assert text == '{"v":' + want.text + "}"
        else:
            # dumps() tells 1 from 1.0 and keeps key order, unlike ==.
            assert orjson.dumps(parsed) == orjson.dumps({"v": want}), text


CONTROL = "".join(chr(i) for i in range(32)) + "\x7f"

# (id, DuckDB type, SQL values, expected JSON values)
CASES: list[tuple[str, str, list[str], list[Any]]] = [
    ("boolean", "BOOLEAN", ["true", "false", "NULL"], [True, False, None]),
    ("tinyint", "TINYINT", ["-128", "127", "NULL"], [-128, 127, None]),
    ("smallint", "SMALLINT", ["-32768", "32767"], [-32768, 32767]),
    ("integer", "INTEGER", ["-2147483648", "2147483647"], [-2147483648, 2147483647]),
    (
        "bigint",
        "BIGINT",
        ["-9223372036854775808", "9223372036854775807"],
        [Raw("-9223372036854775808"), Raw("9223372036854775807")],
    ),
    ("utinyint", "UTINYINT", ["0", "255"], [0, 255]),
    ("usmallint", "USMALLINT", ["65535"], [65535]),
    ("uinteger", "UINTEGER", ["4294967295"], [4294967295]),
    ("ubigint", "UBIGINT", ["18446744073709551615"], [Raw("18446744073709551615")]),
    (
        "hugeint",
        "HUGEINT",
        [
            "170141183460469231731687303715884105727",
            "-170141183460469231731687303715884105727",
            "-170141183460469231731687303715884105728",
            "0",
        ],
        [
            Raw("170141183460469231731687303715884105727"),
            Raw("-170141183460469231731687303715884105727"),
            Raw("-170141183460469231731687303715884105728"),
            Raw("0"),
        ],
    ),
    (
        "uhugeint",
        "UHUGEINT",
        ["340282366920938463463374607431768211455"],
        [Raw("340282366920938463463374607431768211455")],
    ),
    (
        "bignum",
        "BIGNUM",
        ["'123456789012345678901234567890123456789012345678901'", "'-1' || repeat('0', 60)"],
        [Raw("123456789012345678901234567890123456789012345678901"), Raw("-1" + "0" * 60)],
    ),
    (
        "float",
        "FLOAT",
        [
            "0.1",
            "1.5",
            "16777216",
            "'-3.4028235e38'",
            "'nan'",
            "'inf'",
            "'-inf'",
            "NULL",
        ],
        [0.1, 1.5, 16777216.0, Raw("-3.4028235e38"), None, None, None, None],
    ),
    (
        "double",
        "DOUBLE",
        ["0.1", "1.0", "1e300", "'5e-324'", "9007199254740993", "'nan'", "'inf'", "'-inf'"],
        [0.1, 1.0, 1e300, 5e-324, 9007199254740992.0, None, None, None],
    ),
    (
        "decimal_4_2",
        "DECIMAL(4,2)",
        ["0.50", "-0.05", "99.99", "1"],
        [Raw(x) for x in ["0.50", "-0.05", "99.99", "1.00"]],
    ),
    (
        "decimal_15_0",
        "DECIMAL(15,0)",
        ["999999999999999", "-1"],
        [Raw("999999999999999"), Raw("-1")],
    ),
    (
        "decimal_18_18",
        "DECIMAL(18,18)",
        ["-0.000000000000000001", "0.999999999999999999"],
        [Raw("-0.000000000000000001"), Raw("0.999999999999999999")],
    ),
    (
        "decimal_38_18",
        "DECIMAL(38,18)",
        [
            "12345678901234567890.123456789012345678",
            "-99999999999999999999.999999999999999999",
            "1.5",
            "0",
        ],
        [
            Raw("12345678901234567890.123456789012345678"),
            Raw("-99999999999999999999.999999999999999999"),
            Raw("1.500000000000000000"),
            Raw("0.000000000000000000"),
        ],
    ),
    (
        "decimal_38_0",
        "DECIMAL(38,0)",
        ["99999999999999999999999999999999999999"],
        [Raw("99999999999999999999999999999999999999")],
    ),
    (
        "varchar",
        "VARCHAR",
        [
            "''",
            quote_literal("plain"),
            quote_literal(CONTROL),
            quote_literal('quote " back \\ slash / ok'),
            quote_literal("emoji 😀 é 中文 \u2028\u2029 \ufeff"),
            "'NaN'",
            "NULL",
        ],
        [
            "",
            "plain",
            CONTROL,
            'quote " back \\ slash / ok',
            "emoji 😀 é 中文 \u2028\u2029 \ufeff",
            "NaN",
            None,
        ],
    ),
    ("enum", "ENUM('red', 'green')", ["'green'", "NULL"], ["green", None]),
    (
        "date",
        "DATE",
        [
            "'2024-02-29'",
            "'1960-01-01'",
            "'0001-01-01'",
            "'9999-12-31'",
            "'infinity'",
            "'-infinity'",
            "'10000-01-01'",
            "'0044-03-15 (BC)'",
        ],
        ["2024-02-29", "1960-01-01", "0001-01-01", "9999-12-31", None, None, None, None],
    ),
    (
        "time",
        "TIME",
        ["'00:00:00'", "'23:59:59.999999'", "'01:02:03.5'", "'24:00:00'"],
        ["00:00:00.000000", "23:59:59.999999", "01:02:03.500000", "24:00:00.000000"],
    ),
    (
        "time_ns",
        "TIME_NS",
        ["'01:02:03.123456789'", "'01:02:03'"],
        ["01:02:03.123456", "01:02:03.000000"],
    ),
    (
        "timetz",
        "TIMETZ",
        ["'01:02:03.5+05:30'", "'23:00:00-08'"],
        ["01:02:03.5+05:30", "23:00:00-08"],
    ),
    (
        "timestamp",
        "TIMESTAMP",
        [
            "'2024-01-02 03:04:05.123456'",
            "'1960-06-30 23:59:59'",
            "'0001-01-01 00:00:00'",
            "'infinity'",
            "'-infinity'",
            "'0010-01-01 (BC)'",
            "'10000-01-01'",
        ],
        [
            "2024-01-02T03:04:05.123456Z",
            "1960-06-30T23:59:59.000000Z",
            "0001-01-01T00:00:00.000000Z",
            None,
            None,
            None,
            None,
        ],
    ),
    ("timestamp_s", "TIMESTAMP_S", ["'2024-01-02 03:04:05'"], ["2024-01-02T03:04:05.000000Z"]),
    (
        "timestamp_ms",
        "TIMESTAMP_MS",
        ["'1969-12-31 23:59:59.999'"],
        ["1969-12-31T23:59:59.999000Z"],
    ),
    (
        "timestamp_ns",
        "TIMESTAMP_NS",
        ["'2024-01-02 03:04:05.999999999'", "'1960-01-01 00:00:00.000000001'", "'infinity'"],
        ["2024-01-02T03:04:05.999999Z", "1960-01-01T00:00:00.000000Z", None],
    ),
    (
        "timestamptz",
        "TIMESTAMPTZ",
        [
            "'2024-07-01 12:00:00+00'",
            "'2024-01-02 03:04:05.5 America/Los_Angeles'",
            "'1950-01-01 00:00:00+01'",
            "'infinity'",
        ],
        [
            "2024-07-01T12:00:00.000000Z",
            "2024-01-02T11:04:05.500000Z",
            "1949-12-31T23:00:00.000000Z",
            None,
        ],
    ),
    (
        "interval",
        "INTERVAL",
        [
            "INTERVAL '0 seconds'",
            "INTERVAL '1 day 2 hours'",
            "INTERVAL '14 months'",
            "INTERVAL '-1 month 3 days -4 hours'",
            "INTERVAL '1 month -30 days'",
            "INTERVAL '0.000001 seconds'",
            "INTERVAL '-0.5 seconds'",
            "INTERVAL '100 hours 1.25 seconds'",
            "INTERVAL '90 minutes'",
            "NULL",
        ],
        [
            "PT0S",
            "P1DT2H",
            "P1Y2M",
            "P-1M3DT-4H",
            "P1M-30D",
            "PT0.000001S",
            "PT-0.5S",
            "PT100H1.25S",
            "PT1H30M",
            None,
        ],
    ),
    (
        "uuid",
        "UUID",
        ["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"],
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    ),
    (
        "blob",
        "BLOB",
        ["'\\x00\\xFF\\xFE'::BLOB", "''::BLOB", "'abc'::BLOB", "'\\xC3\\x28'::BLOB"],
        ["AP/+", "", "YWJj", "wyg="],
    ),
    ("bit", "BIT", ["'0101'", "'1'"], ["0101", "1"]),
    (
        "json",
        "JSON",
        [
            """'{"a": [1, 2.5, "x"], "b": {"c": null}}'""",
            "'null'",
            """'"s"'""",
            """'[NaN, "NaN", {"x": -Infinity}, "a\\"NaN,NaN", Infinity]'""",
            "'12345678901234567890123'",
            "NULL",
        ],
        [
            {"a": [1, 2.5, "x"], "b": {"c": None}},
            None,
            "s",
            [None, "NaN", {"x": None}, 'a"NaN,NaN', None],
            Raw("12345678901234567890123"),
            None,
        ],
    ),
    (
        "list",
        "DOUBLE[]",
        ["[1.5, NULL, 'nan'::DOUBLE, 'inf'::DOUBLE]", "[]", "NULL"],
        [[1.5, None, None, None], [], None],
    ),
    ("list_plain", "INTEGER[]", ["[1, NULL, 3]"], [[1, None, 3]]),
    ("array", "DOUBLE[2]", ["[1.0, '-inf'::DOUBLE]", "NULL"], [[1.0, None], None]),
    (
        "struct",
        'STRUCT("a b" INTEGER, "Q""uote" VARCHAR, d DATE, f FLOAT)',
        [
            """{'a b': 1, 'Q"uote': 'x', 'd': DATE '1900-01-01', 'f': 'nan'}""",
            "{'a b': NULL, 'Q\"uote': NULL, 'd': NULL, 'f': NULL}",
            "NULL",
        ],
        [
            {"a b": 1, 'Q"uote': "x", "d": "1900-01-01", "f": None},
            {"a b": None, 'Q"uote': None, "d": None, "f": None},
            None,
        ],
    ),
    (
        "map_double",
        "MAP(INTEGER, DOUBLE)",
        ["MAP {1: 1.5::DOUBLE, 2: 'nan'::DOUBLE}", "MAP {}", "NULL"],
        [{"1": 1.5, "2": None}, {}, None],
    ),
    (
        "map_date_key",
        "MAP(DATE, BLOB)",
        ["MAP {DATE '2020-01-02': '\\x01'::BLOB}"],
        [{"2020-01-02": "AQ=="}],
    ),
    (
        "union",
        "UNION(num INTEGER, s VARCHAR, d DOUBLE, dt DATE)",
        [
            "union_value(num := 7)",
            "union_value(s := 'txt')",
            "union_value(d := 'nan'::DOUBLE)",
            "union_value(dt := DATE '1969-07-20')",
            "NULL",
        ],
        [7, "txt", None, "1969-07-20", None],
    ),
    (
        "nested_list_struct_map",
        "STRUCT(m MAP(VARCHAR, DOUBLE[]), t TIMESTAMPTZ, b BLOB, i INTERVAL)[]",
        [
            "[{'m': MAP {'k': [1.5, 'inf'::DOUBLE], 'e': []}, "
            "'t': TIMESTAMPTZ '2024-03-10 01:30:00-05', 'b': '\\xFF'::BLOB, "
            "'i': INTERVAL '36 hours'}, NULL]",
        ],
        [
            [
                {
                    "m": {"k": [1.5, None], "e": []},
                    "t": "2024-03-10T06:30:00.000000Z",
                    "b": "/w==",
                    "i": "PT36H",
                },
                None,
            ]
        ],
    ),
    (
        "variant",
        "VARIANT",
        ["['nan'::DOUBLE, 1.5]::VARIANT", "{'a': 'x'}::VARIANT", "NULL"],
        [[None, 1.5], {"a": "x"}, None],
    ),
    ("geometry", "GEOMETRY", ["'POINT(1 2)'"], ["POINT (1 2)"]),
]


@pytest.mark.parametrize(
    ("type_sql", "values", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_json_rules(
    conn: duckdb.DuckDBPyConnection, type_sql: str, values: list[str], expected: list[Any]
) -> None:
    _make_table(conn, type_sql, values)
    _check(_column_json(conn), expected)


@pytest.mark.parametrize("precision", range(1, 39))
def test_decimal_every_precision_keeps_exact_digits(
    conn: duckdb.DuckDBPyConnection, precision: int
) -> None:
    scale = precision // 2
    digits = ("1234567890" * 4)[:precision]
    value = digits[: precision - scale] + ("." + digits[precision - scale :] if scale else "")
    _make_table(conn, f"DECIMAL({precision},{scale})", [f"'{value}'", f"'-{value}'"])
    _check(_column_json(conn), [Raw(value), Raw("-" + value)])


def test_null_type_column(conn: duckdb.DuckDBPyConnection) -> None:
    types = column_types(conn, "SELECT NULL AS v")
    assert types["v"].id == "null"
    sql = json_object_sql([("v", "v", types["v"])])
    assert conn.execute(f"SELECT {sql} FROM (SELECT NULL AS v)").fetchall() == [('{"v":null}',)]


def test_value_sql_inside_to_json_struct_pack(conn: duckdb.DuckDBPyConnection) -> None:
    """The documented use: json_value_sql values placed in to_json(struct_pack(...))."""
    _make_table(conn, "STRUCT(x DOUBLE, d DECIMAL(38,18))[]", ["[{'x': 'nan', 'd': 0.1}]"])
    dtype = column_types(conn, "t")["v"]
    sql = f"to_json(struct_pack(v := {json_value_sql('v', dtype)}))"
    text = conn.execute(f"SELECT {sql} FROM t").fetchall()[0][0]
    assert text == '{"v":[{"x":null,"d":0.100000000000000000}]}'


def test_unnamed_struct_stays_an_array(conn: duckdb.DuckDBPyConnection) -> None:
    """row(...) values (TUPLE types) are written as arrays, as DuckDB does, elements converted."""
    conn.execute("CREATE TABLE t AS SELECT 0 AS i, row(1, 'nan'::DOUBLE, DATE '1960-01-01') AS v")
    assert column_types(conn, "t")["v"].id == "tuple"
    _check(_column_json(conn), [[1, None, "1960-01-01"]])


def test_passthrough_types_are_left_alone() -> None:
    for type_sql in ("INTEGER", "VARCHAR", "HUGEINT", "DECIMAL(20,2)", "INTEGER[]", "UUID"):
        assert json_value_sql("col", duckdb.sqltype(type_sql)) == "col"


def test_nested_lambdas_get_distinct_names(conn: duckdb.DuckDBPyConnection) -> None:
    _make_table(
        conn, "MAP(VARCHAR, DOUBLE[][])[]", ["[MAP {'a': [[1.0::DOUBLE, 'nan'::DOUBLE], NULL]}]"]
    )
    dtype = column_types(conn, "t")["v"]
    sql = json_value_sql("v", dtype)
    names = re.findall(r"lambda (\w+):", sql)
    # outer list, map values, list, inner list: one lambda each, all nested, all distinct
    assert names == ["_rs_v0", "_rs_v1", "_rs_v2", "_rs_v3"]
    _check(_column_json(conn), [[{"a": [[1.0, None], None]}]])


def test_all_types_in_one_object(conn: duckdb.DuckDBPyConnection) -> None:
    """One row with a column of every case type: the object keeps column order and parses."""
    cols = ", ".join(
        f"CAST({vals[0]} AS {typ}) AS {quote_ident(name)}" for name, typ, vals, _ in CASES
    )
    conn.execute(f"CREATE TABLE wide AS SELECT {cols}")
    types = column_types(conn, "wide")
    sql = json_object_sql([(name, quote_ident(name), t) for name, t in types.items()])
    obj = orjson.loads(conn.execute(f"SELECT {sql} FROM wide").fetchall()[0][0])
    assert list(obj) == [c[0] for c in CASES]


# ---------------------------------------------------------------------------- keys and quoting

AWKWARD_KEYS = [
    "",
    "a",
    "A",
    "with space",
    'quo"te',
    "apo'strophe",
    "dot.ted",
    "ünï😀",
    "back\\slash",
    "new\nline",
    "tab\there",
    "nul\x00byte",
    "-- comment",
    "$1",
]


def test_json_object_with_awkward_keys(conn: duckdb.DuckDBPyConnection) -> None:
    cols = [f"c{i}" for i in range(len(AWKWARD_KEYS))]
    select = ", ".join(f"{i} AS {quote_ident(c)}" for i, c in enumerate(cols))
    conn.execute(f"CREATE TABLE keys AS SELECT {select}")
    types = column_types(conn, "keys")
    assert list(types) == cols
    sql = json_object_sql(
        [(key, quote_ident(col), types[col]) for key, col in zip(AWKWARD_KEYS, cols, strict=True)]
    )
    text = conn.execute(f"SELECT {sql} FROM keys").fetchall()[0][0]
    obj = orjson.loads(text)
    assert list(obj.items()) == [(k, i) for i, k in enumerate(AWKWARD_KEYS)]


def test_json_object_empty_and_duplicates(conn: duckdb.DuckDBPyConnection) -> None:
    assert conn.execute(f"SELECT {json_object_sql([])}").fetchall() == [("{}",)]
    int_type = duckdb.sqltype("INTEGER")
    with pytest.raises(ValueError, match="duplicate"):
        json_object_sql([("k", "1", int_type), ("k", "2", int_type)])


@pytest.mark.parametrize(
    "text", ["", "plain", "a'b", "''", "back\\slash", "\\x00", "nul\x00x", "😀"]
)
def test_quote_literal_round_trips(conn: duckdb.DuckDBPyConnection, text: str) -> None:
    assert conn.execute(f"SELECT {quote_literal(text)}").fetchall() == [(text,)]


@pytest.mark.parametrize("name", ["a", 'q"q', "with space", "select", "ünï", "a.b"])
def test_quote_ident_round_trips(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    assert column_types(conn, f"SELECT 1 AS {quote_ident(name)}") == {
        name: duckdb.sqltype("INTEGER")
    }


def test_quote_ident_rejects_nul() -> None:
    with pytest.raises(ValueError):
        quote_ident("a\x00b")


# ---------------------------------------------------------------------------- timestamp_sql

TIMESTAMP_CASES: list[tuple[str, str, list[str], list[str | None]]] = [
    (
        "timestamptz",
        "TIMESTAMPTZ",
        ["'2024-01-02 03:04:05.123456+00'", "'2024-06-01 00:00:00 Asia/Kolkata'", "'-infinity'"],
        ["2024-01-02T03:04:05.123456Z", "2024-05-31T18:30:00.000000Z", None],
    ),
    (
        "timestamp",
        "TIMESTAMP",
        ["'2024-01-02 03:04:05'", "'1901-12-13 20:45:52.000001'", "NULL"],
        ["2024-01-02T03:04:05.000000Z", "1901-12-13T20:45:52.000001Z", None],
    ),
    ("timestamp_s", "TIMESTAMP_S", ["'1970-01-01 00:00:00'"], ["1970-01-01T00:00:00.000000Z"]),
    (
        "timestamp_ms",
        "TIMESTAMP_MS",
        ["'2024-01-02 03:04:05.007'"],
        ["2024-01-02T03:04:05.007000Z"],
    ),
    (
        "timestamp_ns",
        "TIMESTAMP_NS",
        ["'2024-12-31 23:59:59.999999999'"],
        ["2024-12-31T23:59:59.999999Z"],
    ),
    (
        "date",
        "DATE",
        ["'2024-01-02'", "'1900-02-28'", "'infinity'", "'0001-01-01'"],
        [
            "2024-01-02T00:00:00.000000Z",
            "1900-02-28T00:00:00.000000Z",
            None,
            "0001-01-01T00:00:00.000000Z",
        ],
    ),
    (
        "varchar",
        "VARCHAR",
        [
            "'2024-01-02'",
            "'2024-01-02 03:04:05'",
            "' 2024-01-02 03:04:05.25 '",
            "'2024-01-02T03:04:05Z'",
            "'2024-01-02T03:04:05.5+02:00'",
            "'2024-01-02 03:04:05-0800'",
            "'2024-01-02 03:04:05 America/Los_Angeles'",
            "'2024-01-02 03:04:05.123456789'",
            "'infinity'",
            "'garbage'",
            "''",
            "NULL",
        ],
        [
            "2024-01-02T00:00:00.000000Z",
            "2024-01-02T03:04:05.000000Z",
            "2024-01-02T03:04:05.250000Z",
            "2024-01-02T03:04:05.000000Z",
            "2024-01-02T01:04:05.500000Z",
            "2024-01-02T11:04:05.000000Z",
            "2024-01-02T11:04:05.000000Z",
            "2024-01-02T03:04:05.123456Z",
            None,
            None,
            None,
            None,
        ],
    ),
]


@pytest.mark.parametrize(
    ("type_sql", "values", "expected"),
    [c[1:] for c in TIMESTAMP_CASES],
    ids=[c[0] for c in TIMESTAMP_CASES],
)
def test_timestamp_sql(
    conn: duckdb.DuckDBPyConnection, type_sql: str, values: list[str], expected: list[str | None]
) -> None:
    _make_table(conn, type_sql, values)
    sql = timestamp_sql("v", column_types(conn, "t")["v"])
    assert [r[0] for r in conn.execute(f"SELECT {sql} FROM t ORDER BY i").fetchall()] == expected


def test_timestamp_sql_rejects_numbers() -> None:
    with pytest.raises(TypeError):
        timestamp_sql("v", duckdb.sqltype("BIGINT"))


# ---------------------------------------------------------------------------- id_sql

ID_CASES: list[tuple[str, str, list[str], list[str | None]]] = [
    (
        "varchar",
        "VARCHAR",
        [
            "'u1'",
            "''",
            "'   '",
            "chr(9) || chr(10) || chr(11)",
            "chr(160) || chr(12288)",
            "' padded '",
            "NULL",
        ],
        ["u1", None, None, None, None, " padded ", None],
    ),
    ("bigint", "BIGINT", ["-9223372036854775808", "42"], ["-9223372036854775808", "42"]),
    ("ubigint", "UBIGINT", ["18446744073709551615"], ["18446744073709551615"]),
    (
        "hugeint",
        "HUGEINT",
        ["-170141183460469231731687303715884105728"],
        ["-170141183460469231731687303715884105728"],
    ),
    (
        "uhugeint",
        "UHUGEINT",
        ["340282366920938463463374607431768211455"],
        ["340282366920938463463374607431768211455"],
    ),
    (
        "double",
        "DOUBLE",
        ["42.0", "1.5", "-0.0", "1e20", "'nan'", "'inf'", "'-inf'", "1e300", "NULL"],
        ["42", "1.5", "0", "100000000000000000000", None, None, None, "1e+300", None],
    ),
    ("float", "FLOAT", ["42", "0.1", "'nan'"], ["42", "0.1", None]),
    (
        "decimal",
        "DECIMAL(38,18)",
        ["42", "1.5", "-0.25", "12345678901234567890.123456789012345678"],
        ["42", "1.5", "-0.25", "12345678901234567890.123456789012345678"],
    ),
    ("decimal_small", "DECIMAL(2,2)", ["-0.5", "0"], ["-0.5", "0"]),
    (
        "uuid",
        "UUID",
        ["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"],
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    ),
    ("enum", "ENUM('x', ' ')", ["'x'", "' '"], ["x", None]),
    ("json", "JSON", ["""'"abc"'""", "'12'", "'null'", """'"  "'"""], ["abc", "12", None, None]),
    ("timestamptz", "TIMESTAMPTZ", ["'2024-01-02 03:04:05+00'"], ["2024-01-02T03:04:05.000000Z"]),
    ("boolean", "BOOLEAN", ["true"], ["true"]),
    ("date", "DATE", ["'1960-01-01'"], ["1960-01-01"]),
    ("blob", "BLOB", ["''::BLOB", "'ab'::BLOB"], [None, "ab"]),
]


@pytest.mark.parametrize(
    ("type_sql", "values", "expected"), [c[1:] for c in ID_CASES], ids=[c[0] for c in ID_CASES]
)
def test_id_sql(
    conn: duckdb.DuckDBPyConnection, type_sql: str, values: list[str], expected: list[str | None]
) -> None:
    _make_table(conn, type_sql, values)
    sql = id_sql("v", column_types(conn, "t")["v"])
    assert [r[0] for r in conn.execute(f"SELECT {sql} FROM t ORDER BY i").fetchall()] == expected


# ---------------------------------------------------------------------------- column_types


def test_column_types_of_names_and_queries(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute('CREATE TABLE src ("b c" INTEGER, a DECIMAL(10,2), s STRUCT(x INTEGER))')
    conn.execute("CREATE VIEW src_v AS SELECT * FROM src")
    want = ["b c", "a", "s"]
    for relation in ["src", "src_v", "main.src", "SELECT * FROM src", "FROM src;", '"src"']:
        types = column_types(conn, relation)
        assert list(types) == want, relation
        assert str(types["a"]) == "DECIMAL(10,2)"
    assert list(column_types(conn, "WITH q AS (SELECT 1 AS y) SELECT * FROM q")) == ["y"]
    with pytest.raises(duckdb.CatalogException):
        column_types(conn, "SELECT * FROM missing_table")


def test_column_types_does_not_run_the_query(conn: duckdb.DuckDBPyConnection) -> None:
    # Would take far longer than the test timeout if it were executed.
    slow = "SELECT sum(a.range * b.range) AS s FROM range(100000000) a, range(100000000) b"
    assert list(column_types(conn, slow)) == ["s"]


# ---------------------------------------------------------------------------- size


def test_runs_over_many_rows(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        """
        CREATE TABLE big AS
        SELECT range AS i,
               'user_' || range AS uid,
               range * 1.5 AS amount,
               CAST(range AS DECIMAL(38, 6)) / 7 AS exact,
               CASE WHEN range % 1000 = 0 THEN 'nan'::DOUBLE ELSE range / 3 END AS ratio,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(range) AS at,
               [{'k': range, 'm': MAP {'x': range * 0.5}}] AS nested,
               INTERVAL (range) SECOND AS dur
        FROM range(200000)
        """
    )
    types = column_types(conn, "big")
    body = json_object_sql([(n, quote_ident(n), t) for n, t in types.items()])
    ids = id_sql("uid", types["uid"])
    rows = conn.execute(f"SELECT {ids}, {body} FROM big").fetchall()
    assert len(rows) == 200000
    for uid, text in rows[::997]:
        obj = orjson.loads(text)
        assert uid == f"user_{obj['i']}"
