"""json_fields_sql: nested objects and exclude_nulls, rendered by a real DuckDB."""

from __future__ import annotations

import duckdb
import orjson
import pytest

from rudder_sync.jsonvalues import column_types, json_fields_sql, json_object_sql, json_value_sql

ROW = """
select 1 as i, null::varchar as n, 'x' as s, 'nan'::double as d, [1, null] as l,
       {'a': null} as st, json('null') as j, 1.50::decimal(4, 2) as dec
"""


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(f"create table t as {ROW}")
    return connection


def _render(conn: duckdb.DuckDBPyConnection, fields: list, exclude_nulls: bool = False) -> str:
    types = column_types(conn, "t")
    sql_fields = [(path, json_value_sql(column, types[column])) for path, column in fields]
    return conn.execute(f"select {json_fields_sql(sql_fields, exclude_nulls)} from t").fetchone()[0]


def test_flat_fields_match_json_object_sql_byte_for_byte(conn: duckdb.DuckDBPyConnection) -> None:
    types = column_types(conn, "t")
    flat = json_object_sql([(c, c, t) for c, t in types.items()])
    expected = conn.execute(f"select {flat} from t").fetchone()[0]
    assert _render(conn, [((c,), c) for c in types]) == expected


def test_paths_nest_objects_in_first_seen_order(conn: duckdb.DuckDBPyConnection) -> None:
    text = _render(conn, [(("a", "x"), "i"), (("b",), "s"), (("a", "y", "z"), "dec")])
    assert text == '{"a":{"x":1,"y":{"z":1.50}},"b":"x"}'


def test_exclude_nulls_drops_null_fields_and_emptied_objects(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    fields = [
        (("i",), "i"),
        (("n",), "n"),
        (("d",), "d"),  # NaN becomes null, then is left out
        (("j",), "j"),  # JSON null
        (("o", "n"), "n"),  # an object left empty goes too
        (("l",), "l"),  # nulls inside values are kept
        (("st",), "st"),
        (('k"\n',), "s"),
    ]
    text = _render(conn, fields, exclude_nulls=True)
    assert orjson.loads(text) == {"i": 1, "l": [1, None], "st": {"a": None}, 'k"\n': "x"}
    assert _render(conn, [(("n",), "n")], exclude_nulls=True) == "{}"
    assert _render(conn, [], exclude_nulls=True) == "{}"


def test_a_path_inside_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="inside the value"):
        json_fields_sql([(("a",), "1"), (("a", "b"), "2")])
    with pytest.raises(ValueError, match="duplicate JSON key"):
        json_fields_sql([(("a", "b"), "1"), (("a", "b"), "2")])


WIDE = """
select 42::tinyint as ti, (2::hugeint ** 100)::hugeint as hi, 18446744073709551615::ubigint as ub,
       12345678901234567890.123456789012345678::decimal(38, 18) as d38, 0.50::decimal(4, 2) as d4,
       0.1::double as dbl, 0.1::float as fl, 'inf'::double as inf, date '1900-01-02' as dt,
       timestamptz '2024-01-02 03:04:05.5+02' as tstz, interval '1 month 3 days' as iv,
       '\\x00\\xFF'::blob as bl, 'é "q" 🙂' as s, true as b, time '01:02:03' as tm,
       [1.50::decimal(18, 2), null] as li, {'x': 2.50::decimal(18, 2), 'y': 'nan'::double} as st,
       map {'k': 1.25::decimal(18, 2)} as mp, json('{"a": [1, 2.50]}') as js,
       uuid '6ba7b810-9dad-11d1-80b4-00c04fd430c8' as u, null::integer as nl
"""


def test_a_nested_value_is_written_exactly_as_a_flat_one() -> None:
    """Nesting writes values as text, not through json_object: the same JSON either way."""
    conn = duckdb.connect()
    conn.execute(f"create table w as {WIDE}")
    types = column_types(conn, "w")
    for column, dtype in types.items():
        value = json_value_sql(column, dtype)
        flat = json_fields_sql([((column,), value)])
        nested = json_fields_sql([(("n", column), value)])
        got_flat, got_nested = conn.execute(f"select {flat}, {nested} from w").fetchone()
        assert got_nested == '{"n":' + got_flat + "}", column
    exact = conn.execute(
        f"select {json_fields_sql([(('n', 'd38'), 'd38'), (('n', 'hi'), 'hi')])} from w"
    ).fetchone()[0]
    assert exact == (
        '{"n":{"d38":12345678901234567890.123456789012345678,"hi":1267650600228229401496703205376}}'
    )
