"""Column types per engine, on its stand-in, as docs/warehouses.md#types-per-engine tabulates them:
numbers with 38 digits, timestamps with and without a zone, dates before 1970, JSON and nested
types, bytes. Each value lands in DuckDB by the engine's own normalisation and is rendered by the
JSON rules (docs/json-values.md), as the events step renders it.

Snowflake's and BigQuery's types run through their real clients in test_vendor_warehouses.py
(fakesnow, bqemulator). Here: Redshift's code path through redshift_connector on PostgreSQL, and
Databricks' types as Spark SQL produces them (pyspark's Arrow, the conversion Spark's servers use)
through this engine's normalisation: the connector itself does not reach Spark.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import duckdb
import pytest

from rudder_sync.jsonvalues import json_object_sql, quote_ident
from rudder_sync.warehouses.base import stream
from rudder_sync.warehouses.vendor import batches_of

from .engines.databricks import to_arrow

# One xdist worker runs every test of the vendor engines (with --dist loadgroup), so that each
# stand-in (rudder_sync_tests/engines/) starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

DIGITS_38 = "12345678901234567890123456789012345678"


def _land(reader: Any) -> tuple[dict[str, str], list[dict[str, Any]], duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("create table t as select * from reader")
    types = {name: kind for name, kind, *_ in con.execute("describe t").fetchall()}
    rel = con.table("t")
    fields = [(c, quote_ident(c), t) for c, t in zip(rel.columns, rel.dtypes, strict=True)]
    rows = con.execute(f"select {json_object_sql(fields)} from t order by id").fetchall()
    return types, [json.loads(row[0]) for row in rows], con


def test_redshift_types_through_redshift_connector(redshift_engine: Any, pg: Any) -> None:
    """PostgreSQL has no SUPER, VARBYTE or GEOGRAPHY: json/jsonb stand in for SUPER (JSON there
    too); VARBYTE's OID (6551) cannot be produced here, so bytes stay on recorded results."""
    from rudder_sync.warehouses.redshift import RedshiftWarehouse

    pg.sql(
        """create table t as select 1 as id, cast('12345678901234567890123456789012345678' as
        numeric(38,0)) as big, 12.50::numeric(12,2) as amount,
        timestamptz '2024-01-02 03:04:05.123456+02' as seen, timestamp '1960-01-02 03:04:05' as
        local, date '1960-01-01' as born, '{"plan":"pro","n":[1,2.5]}'::jsonb as attrs,
        '[1,"a"]'::json as tags, 1.5::float8 as score, true as active,
        'a@x.io'::varchar as email""",
        "insert into t (id) values (2)",
    )
    warehouse = RedshiftWarehouse(
        **redshift_engine.yaml_keys(pg.name), password="unused-trust", ssl=False
    )
    with warehouse.read_model("select * from t") as reader:
        types, (first, second), con = _land(reader)
    assert types == {
        "id": "INTEGER",
        "big": "JSON",  # NUMERIC: its exact digits, as for PostgreSQL
        "amount": "JSON",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "born": "DATE",
        "attrs": "JSON",
        "tags": "JSON",
        "score": "DOUBLE",
        "active": "BOOLEAN",
        "email": "VARCHAR",
    }
    assert first == {
        "id": 1,
        "big": int(DIGITS_38),
        "amount": 12.5,
        "seen": "2024-01-02T01:04:05.123456Z",
        "local": "1960-01-02T03:04:05.000000Z",
        "born": "1960-01-01",
        "attrs": {"plan": "pro", "n": [1, 2.5]},
        "tags": [1, "a"],
        "score": 1.5,
        "active": True,
        "email": "a@x.io",
    }
    assert set(second.values()) == {2, None}
    text = con.execute(
        f"select {json_object_sql([('b', 'big', con.table('t').dtypes[1])])} from t where id = 1"
    ).fetchone()[0]
    assert f'"b":{DIGITS_38}' in text  # every digit on the wire


@pytest.mark.timeout(900)  # the first test may start Spark's JVM
def test_databricks_types_from_spark_sql(spark_engine: Any) -> None:
    from rudder_sync.warehouses.databricks import normalised_schema

    frame = spark_engine.sql(
        f"""select 1L as id, cast('{DIGITS_38}' as decimal(38,0)) as big,
        cast('12.50' as decimal(12,2)) as amount,
        timestamp'2024-01-02 03:04:05.123456+02:00' as seen,
        timestamp_ntz'1960-01-02 03:04:05' as local, date'1960-01-01' as born,
        array('a', 'b') as tags, named_struct('city', 'Berlin', 'zip', 10115) as addr,
        map('logins', 3L) as counts, x'00ff' as raw, 1.5d as score, true as active
        union all
        select 2L, null, null, null, null, null, array(), named_struct('city', null, 'zip', 0),
        map(), null, null, null"""
    )
    table = to_arrow(frame)
    # the cursor description Databricks' connector gives: (name, type name, ...)
    description = [(f.name, f.dataType.typeName()) for f in frame.schema.fields]
    schema = normalised_schema(table.schema, description)
    types, (first, second), con = _land(stream(schema, batches_of([table], schema)))
    assert types == {
        "id": "BIGINT",
        "big": "DECIMAL(38,0)",
        "amount": "DECIMAL(12,2)",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "born": "DATE",
        "tags": "VARCHAR[]",
        "addr": "STRUCT(city VARCHAR, zip INTEGER)",
        "counts": "MAP(VARCHAR, BIGINT)",
        "raw": "BLOB",
        "score": "DOUBLE",
        "active": "BOOLEAN",
    }
    assert first == {
        "id": 1,
        "big": int(DIGITS_38),
        "amount": 12.5,
        "seen": "2024-01-02T01:04:05.123456Z",
        "local": "1960-01-02T03:04:05.000000Z",
        "born": "1960-01-01",
        "tags": ["a", "b"],
        "addr": {"city": "Berlin", "zip": 10115},
        "counts": {"logins": 3},
        "raw": "AP8=",
        "score": 1.5,
        "active": True,
    }
    assert second == dict.fromkeys(first) | {
        "id": 2,
        "tags": [],
        "addr": {"city": None, "zip": 0},
        "counts": {},
    }
    assert con.execute("select big::varchar from t where id = 1").fetchone() == (DIGITS_38,)
    assert Decimal(DIGITS_38) == table.column("big")[0].as_py()
