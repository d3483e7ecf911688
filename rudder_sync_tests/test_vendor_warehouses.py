"""Snowflake, BigQuery, Redshift and Databricks warehouses.

Live, through the real connectors, on the stand-ins of rudder_sync_tests/engines/: Snowflake on
fakesnow's server, BigQuery on bqemulator (query jobs, the Storage Read API and REST),
Redshift's code path on PostgreSQL. Recorded: the Arrow schemas and batches (or, for Redshift, the
Python rows and type OIDs) the connectors hand over, built here as those connectors build them,
through each engine's own normalisation into DuckDB and the JSON rules; Databricks only so (its
connector does not reach Spark, see engines/databricks.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from rudder_sync.jsonvalues import json_object_sql, quote_ident
from rudder_sync.warehouses import (
    WarehouseError,
    WarehouseSettingsError,
    build_warehouse,
    parse_warehouse,
)
from rudder_sync.warehouses.base import stream
from rudder_sync.warehouses.sql import bind
from rudder_sync.warehouses.vendor import batches_of

# One xdist worker runs every test of the vendor engines (with --dist loadgroup), so that each
# stand-in (rudder_sync_tests/engines/) starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

PASSWORD = "Fs-Secret-42x"
TOKEN = "dapi-Secret-0123456789"


def land(reader: pa.RecordBatchReader) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """The caller's step: the model's rows into a DuckDB table; its column types."""
    con = duckdb.connect()
    con.execute("create table t as select * from reader")
    return con, {name: kind for name, kind, *_ in con.execute("describe t").fetchall()}


def rendered(con: duckdb.DuckDBPyConnection, order: str) -> list[dict]:
    """Each row of t rendered by the JSON rules (docs/json-values.md)."""
    rel = con.table("t")
    fields = [(c, quote_ident(c), t) for c, t in zip(rel.columns, rel.dtypes, strict=True)]
    rows = con.execute(f"select {json_object_sql(fields)} from t order by {order}").fetchall()
    return [json.loads(row[0]) for row in rows]


# --- Snowflake, live on fakesnow -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fakesnow_server(snowflake_engine):
    """The session's fakesnow server (rudder_sync_tests/engines/snowflake.py) with DB1.S1.USERS."""
    kwargs = snowflake_engine.connect_args
    conn = snowflake_engine.connect(database="DB1", schema="S1")
    cur = conn.cursor()
    cur.execute("create database if not exists DB1")
    cur.execute("create schema if not exists DB1.S1")
    cur.execute(
        "create or replace table DB1.S1.USERS (id number(38,0), amount number(12,2), "
        "big number(38,10), attrs variant, tags array, obj object, seen_tz timestamp_tz, "
        "seen_ltz timestamp_ltz, updated_at timestamp_ntz, born date, at_time time, "
        "email varchar, score float, active boolean, raw binary, small number(9,0))"
    )
    cur.execute(
        "insert into DB1.S1.USERS select 1, 12.50, 1234567890123456789012345678.0123456789, "
        "parse_json('{\"plan\":\"pro\",\"n\":[1,2.5]}'), array_construct('a','b'), "
        "object_construct('k', 2), '2024-01-02 03:04:05.123456 +02:00'::timestamp_tz, "
        "'2024-01-02 03:04:05'::timestamp_ltz, '2024-01-02 03:04:05'::timestamp_ntz, "
        "'1960-01-01'::date, '01:02:03'::time, 'a@x.io', 1.5, true, to_binary('00ff','HEX'), 5"
    )
    cur.execute(
        "insert into DB1.S1.USERS (id, amount, updated_at, email) values "
        "(2, 0.10, '2024-02-10 00:00:00'::timestamp_ntz, 'b@x.io')"
    )
    conn.close()
    return {k: v for k, v in kwargs.items() if k not in ("user", "password", "account")}


@pytest.fixture
def snowflake_wh(fakesnow_server, snowflake_engine, monkeypatch):
    """The resource the sync YAML builds, fakesnow's endpoint given by the YAML's keys."""
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", PASSWORD)
    settings = parse_warehouse(
        {
            "type": "snowflake",
            "account": "fakesnow",
            "user": "rudder",
            "password": {"env": "SNOWFLAKE_PASSWORD"},
            "database": "DB1",
            "schema": "S1",
            "statement_timeout_seconds": 30,
            **snowflake_engine.yaml_keys(),
        },
        "sync.yaml",
        Path("."),
    )
    kwargs = settings.resource_kwargs()
    assert kwargs["password"] == dg.EnvVar("SNOWFLAKE_PASSWORD")
    assert kwargs["schema_name"] == "S1"
    assert (kwargs["host"], kwargs["protocol"]) == ("127.0.0.1", "http")
    cls = type(build_warehouse(settings))
    kwargs["password"] = PASSWORD  # what Dagster resolves the EnvVar to at run time
    return cls(**kwargs)


def test_snowflake_rows_land_in_duckdb_with_their_types(snowflake_wh):
    port = snowflake_wh.port
    assert (
        snowflake_wh.describe()
        == f"snowflake account fakesnow database DB1.S1 via 127.0.0.1:{port}"
    )
    with snowflake_wh.read_model("select * from users") as reader:
        con, types = land(reader)
    assert types == {
        "ID": "DECIMAL(38,0)",
        "AMOUNT": "DECIMAL(12,2)",
        "BIG": "DECIMAL(38,10)",
        "ATTRS": "JSON",
        "TAGS": "JSON",
        "OBJ": "JSON",
        "SEEN_TZ": "TIMESTAMP WITH TIME ZONE",
        "SEEN_LTZ": "TIMESTAMP WITH TIME ZONE",
        "UPDATED_AT": "TIMESTAMP",
        "BORN": "DATE",
        "AT_TIME": "TIME",
        "EMAIL": "VARCHAR",
        "SCORE": "DOUBLE",
        "ACTIVE": "BOOLEAN",
        "RAW": "BLOB",
        "SMALL": "BIGINT",
    }
    first, second = rendered(con, "ID")
    assert first == {
        "ID": 1,
        "AMOUNT": 12.5,
        "BIG": 1234567890123456789012345678.0123456789,
        "ATTRS": {"plan": "pro", "n": [1, 2.5]},
        "TAGS": ["a", "b"],
        "OBJ": {"k": 2},
        "SEEN_TZ": "2024-01-02T01:04:05.123456Z",
        "SEEN_LTZ": "2024-01-02T03:04:05.000000Z",
        "UPDATED_AT": "2024-01-02T03:04:05.000000Z",
        "BORN": "1960-01-01",
        "AT_TIME": "01:02:03.000000",
        "EMAIL": "a@x.io",
        "SCORE": 1.5,
        "ACTIVE": True,
        "RAW": "AP8=",
        "SMALL": 5,
    }
    assert second["AMOUNT"] == 0.1 and second["ATTRS"] is None
    # exact digits, as the JSON text has them
    text = con.execute(f"select {json_object_sql([('b', 'BIG', con.table('t').dtypes[2])])} "
                       "from t where ID = 1").fetchone()[0]  # fmt: skip
    assert '"b":1234567890123456789012345678.0123456789' in text


def test_snowflake_partition_bounds_are_bound_by_the_server(snowflake_wh):
    sql = (
        "select id, email from users where updated_at >= $partition_start "
        "and updated_at < $partition_end and email <> '50% off'"
    )
    window = {
        "partition_start": datetime(2024, 2, 1, tzinfo=UTC),
        "partition_end": datetime(2024, 3, 1, tzinfo=UTC),
    }
    with snowflake_wh.read_model(sql, window) as reader:
        rows = reader.read_all().to_pylist()
    assert rows == [{"ID": 2, "EMAIL": "b@x.io"}]
    query, args = bind(sql, window, "qmark")
    assert "?" in query and "'50% off'" in query and len(args) == 2


def test_snowflake_empty_result_keeps_the_schema(snowflake_wh):
    with snowflake_wh.read_model("select id, attrs, seen_tz from users where 1 = 0") as reader:
        con, types = land(reader)
    assert types == {"ID": "DECIMAL(38,0)", "ATTRS": "JSON", "SEEN_TZ": "TIMESTAMP WITH TIME ZONE"}
    assert con.execute("select count(*) from t").fetchone() == (0,)


def test_snowflake_model_error_names_the_warehouse_and_the_fix(snowflake_wh):
    with pytest.raises(WarehouseError) as caught, snowflake_wh.read_model("select * from nope"):
        pass
    message = str(caught.value)
    assert message.startswith("the model failed on snowflake account fakesnow database DB1.S1 via ")
    assert "NOPE" in message and "Fix: check the database, schema and table names" in message
    assert PASSWORD not in message


def test_snowflake_unreachable_account_names_the_fix_and_hides_the_password(fakesnow_server):
    from rudder_sync.warehouses.snowflake import SnowflakeWarehouse

    wh = SnowflakeWarehouse(
        account="fakesnow",
        user="rudder",
        password=PASSWORD,
        database="DB1",
        connect_args={**fakesnow_server, "port": 9, "login_timeout": 2},
    )
    assert PASSWORD not in wh.describe() and PASSWORD not in repr(wh)
    with pytest.raises(WarehouseError) as caught, wh.read_model("select 1"):
        pass
    message = str(caught.value)
    assert message.startswith("cannot connect to snowflake account fakesnow database DB1: ")
    assert "Fix: check 'account'" in message and PASSWORD not in message


def test_snowflake_from_dagster_snowflake_resource(fakesnow_server, monkeypatch):
    """dagster-snowflake's resource, nested in ours, its password an EnvVar, in a Dagster run."""
    dagster_snowflake = pytest.importorskip("dagster_snowflake")
    from rudder_sync.warehouses.snowflake import SnowflakeWarehouse

    monkeypatch.setenv("SF_PASSWORD", PASSWORD)
    resource = dagster_snowflake.SnowflakeResource(
        account="fakesnow",
        user="rudder",
        password=dg.EnvVar("SF_PASSWORD"),
        database="DB1",
        schema="S1",
        additional_snowflake_connection_args=fakesnow_server,
    )
    warehouse = SnowflakeWarehouse.from_dagster(resource, statement_timeout_seconds=60)
    seen = {}

    @dg.asset
    def snapshot(warehouse: dg.ResourceParam[dg.ConfigurableResource]) -> None:
        with warehouse.read_model("select id, tags from users order by id") as reader:
            con, types = land(reader)
        seen["types"] = types
        seen["rows"] = rendered(con, "ID")
        seen["describe"] = warehouse.describe()

    result = dg.materialize([snapshot], resources={"warehouse": warehouse})
    assert result.success
    assert seen["types"] == {"ID": "DECIMAL(38,0)", "TAGS": "JSON"}
    assert seen["rows"] == [{"ID": 1, "TAGS": ["a", "b"]}, {"ID": 2, "TAGS": None}]
    assert seen["describe"] == "snowflake account fakesnow database DB1.S1"


# --- settings: keys, secrets, missing extras ------------------------------------------------------

VENDORS = {
    "snowflake": (
        {"account": "xy12345", "user": "u", "password": {"env": "WH_SECRET"}},
        "password",
        "snowflake.connector",
    ),
    "bigquery": (
        {"project": "p", "location": "EU", "gcp_credentials": {"env": "WH_SECRET"}},
        "gcp_credentials",
        "google.cloud.bigquery",
    ),
    "redshift": (
        {"host": "h.example", "database": "dev", "user": "u", "password": {"env": "WH_SECRET"}},
        "password",
        "redshift_connector",
    ),
    "databricks": (
        {
            "server_hostname": "dbc-1.cloud.databricks.com",
            "http_path": "/sql/1.0/warehouses/abc",
            "access_token": {"env": "WH_SECRET"},
            "catalog": "main",
            "schema": "analytics",
        },
        "access_token",
        "databricks.sql",
    ),
}


@pytest.mark.parametrize("kind", VENDORS)
def test_settings_build_the_resource_and_describe_hides_the_secret(kind, monkeypatch):
    keys, secret_key, _ = VENDORS[kind]
    monkeypatch.setenv("WH_SECRET", TOKEN)
    settings = parse_warehouse({"type": kind, **keys}, "sync.yaml", Path("."))
    warehouse = build_warehouse(settings)
    assert warehouse.kind == kind and warehouse.dialect
    assert kind in warehouse.describe()
    assert TOKEN not in warehouse.describe() and TOKEN not in repr(warehouse)
    # written literally, the secret is refused with the fix
    with pytest.raises(WarehouseSettingsError, match=f"key '{secret_key}' is a secret"):
        parse_warehouse({"type": kind, **keys, secret_key: TOKEN}, "sync.yaml", Path("."))


@pytest.mark.parametrize("kind", VENDORS)
def test_settings_unknown_key_and_missing_extra(kind, monkeypatch):
    keys, _, driver = VENDORS[kind]
    monkeypatch.setenv("WH_SECRET", TOKEN)
    with pytest.raises(WarehouseSettingsError, match="unknown key 'hots'"):
        parse_warehouse({"type": kind, **keys, "hots": "x"}, "sync.yaml", Path("."))
    monkeypatch.setitem(sys.modules, driver, None)  # as if the extra were not installed
    with pytest.raises(WarehouseSettingsError) as caught:
        parse_warehouse({"type": kind, **keys}, "sync.yaml", Path("."))
    assert f"pip install 'rudder_sync[{kind}]'" in str(caught.value)


def test_importing_rudder_sync_needs_no_vendor_driver():
    code = (
        "import sys\n"
        "for m in ('snowflake', 'google.cloud.bigquery', 'redshift_connector', 'databricks'):\n"
        "    sys.modules[m] = None\n"
        "import rudder_sync, rudder_sync.warehouses, rudder_sync.warehouses.snowflake\n"
        "import rudder_sync.warehouses.bigquery, rudder_sync.warehouses.redshift\n"
        "import rudder_sync.warehouses.databricks\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# --- BigQuery, recorded -------------------------------------------------------------------------


def test_bigquery_recorded_result_lands_in_duckdb():
    pytest.importorskip("google.cloud.bigquery")
    from google.cloud.bigquery import SchemaField
    from google.cloud.bigquery._pandas_helpers import bq_to_arrow_schema

    from rudder_sync.warehouses.bigquery import exact_columns, normalised_schema

    fields = [
        SchemaField("id", "INT64"),
        SchemaField("amount", "NUMERIC"),
        SchemaField("huge", "BIGNUMERIC"),
        SchemaField("attrs", "JSON"),
        SchemaField("place", "GEOGRAPHY"),
        SchemaField("local", "DATETIME"),
        SchemaField("seen", "TIMESTAMP"),
        SchemaField("born", "DATE"),
        SchemaField("tags", "STRING", mode="REPEATED"),
        SchemaField("addr", "RECORD", fields=[SchemaField("city", "STRING")]),
    ]
    # what to_arrow_iterable yields: the connector's own Arrow schema for these fields
    wire = bq_to_arrow_schema(fields)
    huge = Decimal("12345678901234567890123456789012345678.12345678901234567890123456789012345678")
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "id": 7,
                "amount": Decimal("12.500000000"),
                "huge": huge,
                "attrs": '{"plan":"pro","n":1}',
                "place": "POINT(1 2)",
                "local": datetime(2024, 1, 2, 3, 4, 5),
                "seen": datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
                "born": date(2000, 2, 29),
                "tags": ["a", "b"],
                "addr": {"city": "Berlin"},
            }
        ],
        schema=wire,
    )
    assert wire.field("huge").type == pa.decimal256(76, 38)
    schema = normalised_schema(fields)
    reader = stream(schema, batches_of([batch], schema, exact_columns(fields)))
    con, types = land(reader)
    assert types == {
        "id": "BIGINT",
        "amount": "DECIMAL(38,9)",
        "huge": "JSON",
        "attrs": "JSON",
        "place": "VARCHAR",
        "local": "TIMESTAMP",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "born": "DATE",
        "tags": "VARCHAR[]",
        "addr": "STRUCT(city VARCHAR)",
    }
    (row,) = rendered(con, "id")
    assert row["attrs"] == {"plan": "pro", "n": 1}
    assert row["seen"] == "2024-01-02T03:04:05.123456Z" and row["local"].startswith("2024-01-02T")
    assert row["addr"] == {"city": "Berlin"} and row["place"] == "POINT(1 2)"
    text = con.execute("select huge::varchar from t").fetchone()[0]
    assert text == str(huge)  # every one of the 76 digits


def test_bigquery_parameters_are_named_timestamps():
    pytest.importorskip("google.cloud.bigquery")
    from rudder_sync.warehouses.bigquery import query_parameter

    start = datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    query, values = bind(
        "select * from `p.d.t` where ts >= $partition_start and ts < $partition_end",
        {"partition_start": start, "partition_end": start + timedelta(days=1)},
        "at",
    )
    assert query == "select * from `p.d.t` where ts >= @partition_start and ts < @partition_end"
    params = [query_parameter(k, v) for k, v in dict(values).items()]
    assert [p.to_api_repr()["parameterType"]["type"] for p in params] == ["TIMESTAMP"] * 2
    assert params[0].to_api_repr()["parameterValue"]["value"].startswith("2024-01-01 00:00:00")


def test_bigquery_bad_credentials_name_the_fix_without_the_secret():
    pytest.importorskip("google.cloud.bigquery")
    from rudder_sync.warehouses.bigquery import BigQueryWarehouse

    key = {"type": "service_account", "client_email": "x@p.iam", "private_key": TOKEN}
    encoded = base64.b64encode(json.dumps(key).encode()).decode()
    wh = BigQueryWarehouse(project="p", location="EU", gcp_credentials=encoded)
    assert wh.describe() == "bigquery project p location EU" and encoded not in repr(wh)
    with pytest.raises(WarehouseError) as caught:
        wh.client()
    message = str(caught.value)
    assert message.startswith("cannot connect to bigquery project p location EU: ")
    assert "Fix: check 'project', 'credentials_file' or the credentials" in message
    assert TOKEN not in message and encoded not in message


def test_bigquery_from_dagster_refuses_other_resources():
    from rudder_sync.warehouses.bigquery import BigQueryWarehouse
    from rudder_sync.warehouses.duckdb import DuckDBWarehouse

    with pytest.raises(WarehouseError, match="is not a dagster_gcp.BigQueryResource"):
        BigQueryWarehouse.from_dagster(DuckDBWarehouse(database=":memory:"))


# --- Redshift, recorded ---------------------------------------------------------------------------


def test_redshift_recorded_rows_land_in_duckdb():
    from rudder_sync.warehouses.redshift import arrow_schema, record_batch

    # cursor.description as redshift_connector gives it: (name, type OID, None x5)
    description = [
        (name, oid, None, None, None, None, None)
        for name, oid in [
            ("id", 20),
            ("amount", 1700),
            ("attrs", 4000),
            ("seen", 1184),
            ("updated_at", 1114),
            ("born", 1082),
            ("email", 1043),
            ("active", 16),
            ("score", 701),
            ("shape", 3000),
            ("raw", 6551),
        ]
    ]
    schema = arrow_schema(description)
    rows = [
        (
            1,
            Decimal("12.50"),
            '{"plan":"pro"}',
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            datetime(2024, 1, 2, 3, 4, 5),
            date(2024, 1, 2),
            "a@x.io",
            True,
            1.5,
            "0101000000000000000000F03F0000000000000040",
            b"\x00\xff",
        ),
        (2, Decimal("0E-10"), None, None, None, None, None, None, None, None, None),
        (3, Decimal("NaN"), "[1,2]", None, None, None, None, False, None, None, None),
    ]
    reader = stream(schema, batches_of([record_batch(rows, schema)], schema))
    con, types = land(reader)
    assert types == {
        "id": "BIGINT",
        "amount": "JSON",
        "attrs": "JSON",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "updated_at": "TIMESTAMP",
        "born": "DATE",
        "email": "VARCHAR",
        "active": "BOOLEAN",
        "score": "DOUBLE",
        "shape": "VARCHAR",
        "raw": "BLOB",
    }
    one, two, three = rendered(con, "id")
    assert one["amount"] == 12.5 and one["attrs"] == {"plan": "pro"}
    assert one["seen"] == "2024-01-02T03:04:05.000000Z" and one["raw"] == "AP8="
    assert con.execute("select amount::varchar from t order by id").fetchall() == [
        ("12.50",),
        ("0.0000000000",),
        (None,),
    ]
    assert two["attrs"] is None and three["attrs"] == [1, 2] and three["amount"] is None


def test_redshift_parameters_are_driver_bound_format():
    query, args = bind(
        "select * from t where ts >= $partition_start and note like '5%' and ts < $partition_end",
        {"partition_start": 1, "partition_end": 2},
        "format",
    )
    assert query == "select * from t where ts >= %s and note like '5%%' and ts < %s"
    assert args == [1, 2]


def test_redshift_unreachable_host_names_the_fix_and_hides_the_password():
    pytest.importorskip("redshift_connector")
    from rudder_sync.warehouses.redshift import RedshiftWarehouse

    wh = RedshiftWarehouse(
        host="127.0.0.1", port=9, database="dev", user="u", password=PASSWORD,
        connect_args={"timeout": 2},
    )  # fmt: skip
    assert wh.describe() == "redshift 127.0.0.1:9/dev" and PASSWORD not in repr(wh)
    with pytest.raises(WarehouseError) as caught, wh.read_model("select 1"):
        pass
    message = str(caught.value)
    assert message.startswith("cannot connect to redshift 127.0.0.1:9/dev: ")
    assert "Fix: check 'host'" in message and PASSWORD not in message


# --- Databricks, recorded -------------------------------------------------------------------------


def test_databricks_recorded_result_lands_in_duckdb():
    from rudder_sync.warehouses.databricks import normalised_schema

    # what fetchmany_arrow returns with the connector's native Arrow types
    wire = pa.schema(
        [
            ("id", pa.int64()),
            ("amount", pa.decimal128(38, 18)),
            ("seen", pa.timestamp("us", tz="Etc/UTC")),
            ("local", pa.timestamp("us")),
            ("attrs", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("addr", pa.struct([("city", pa.string()), ("zip", pa.int32())])),
            ("counts", pa.map_(pa.string(), pa.int64())),
        ]
    )
    description = [
        (name, kind, None, None, None, None, None)
        for name, kind in [
            ("id", "bigint"),
            ("amount", "decimal"),
            ("seen", "timestamp"),
            ("local", "timestamp_ntz"),
            ("attrs", "variant"),
            ("tags", "array"),
            ("addr", "struct"),
            ("counts", "map"),
        ]
    ]
    table = pa.Table.from_pylist(
        [
            {
                "id": 1,
                "amount": Decimal("12345678901234567890.123456789012345678"),
                "seen": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                "local": datetime(2024, 1, 2, 3, 4, 5),
                "attrs": '{"plan":"pro"}',
                "tags": ["a"],
                "addr": {"city": "Berlin", "zip": 10115},
                "counts": [("logins", 3)],
            }
        ],
        schema=wire,
    )
    schema = normalised_schema(wire, description)
    con, types = land(stream(schema, batches_of([table], schema)))
    assert types == {
        "id": "BIGINT",
        "amount": "DECIMAL(38,18)",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "attrs": "JSON",
        "tags": "VARCHAR[]",
        "addr": "STRUCT(city VARCHAR, zip INTEGER)",
        "counts": "MAP(VARCHAR, BIGINT)",
    }
    (row,) = rendered(con, "id")
    assert row["attrs"] == {"plan": "pro"} and row["counts"] == {"logins": 3}
    assert row["seen"] == "2024-01-02T03:04:05.000000Z"
    assert row["addr"] == {"city": "Berlin", "zip": 10115}
    assert con.execute("select amount::varchar from t").fetchone()[0] == (
        "12345678901234567890.123456789012345678"
    )


def test_databricks_parameters_are_native_named():
    from rudder_sync.warehouses.databricks import _parameters

    start = datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    query, values = bind(
        "select * from t where ts >= $partition_start and ts < $partition_end",
        {"partition_start": start, "partition_end": start},
        "colon",
    )
    assert query == "select * from t where ts >= :partition_start and ts < :partition_end"
    bound = _parameters(dict(values))
    assert bound["partition_start"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert type(bound["partition_start"]) is datetime


def test_databricks_unreachable_host_names_the_fix_and_hides_the_token():
    pytest.importorskip("databricks.sql")
    from rudder_sync.warehouses.databricks import DatabricksWarehouse

    wh = DatabricksWarehouse(
        server_hostname="127.0.0.1:9",
        http_path="/sql/1.0/warehouses/abc",
        access_token=TOKEN,
        connect_args={"_retry_stop_after_attempts_count": 1, "_socket_timeout": 2},
    )
    assert TOKEN not in wh.describe() and TOKEN not in repr(wh)
    with pytest.raises(WarehouseError) as caught, wh.read_model("select 1"):
        pass
    message = str(caught.value)
    assert message.startswith("cannot connect to databricks 127.0.0.1:9/sql/1.0/warehouses/abc")
    assert "Fix: check 'server_hostname'" in message and TOKEN not in message


# --- shared: chunks of different Arrow types, one schema ------------------------------------------


def test_chunks_of_different_arrow_types_become_one_schema_and_bounded_batches():
    """Snowflake (and others) may send one column as ns in one chunk and us in the next,
    int64 here and decimal there; a chunk larger than BATCH_ROWS is cut."""
    from rudder_sync.warehouses.base import BATCH_ROWS

    schema = pa.schema(
        [("id", pa.decimal128(38, 0)), ("seen", pa.timestamp("us", tz="UTC")), ("v", pa.json_())]
    )
    first = pa.table(
        {
            "id": pa.array(range(BATCH_ROWS + 1), pa.int64()),
            "seen": pa.array([1_700_000_000_123_456_789] * (BATCH_ROWS + 1),
                             pa.timestamp("ns", tz="Etc/UTC")),
            "v": pa.array(['{"a":1}'] * (BATCH_ROWS + 1), pa.large_string()),
        }
    )  # fmt: skip
    second = pa.table(
        {
            "id": pa.array([Decimal("99999999999999999999999999999999999999")],
                           pa.decimal128(38, 0)),
            "seen": pa.array([datetime(9999, 12, 31, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
            "v": pa.array(["[1]"], pa.string()),
        }
    )  # fmt: skip
    batches = list(batches_of([first, schema.empty_table(), second], schema))
    assert [b.num_rows for b in batches] == [BATCH_ROWS, 1, 1]
    assert all(b.schema == schema for b in batches)
    con, types = land(stream(schema, iter(batches)))
    assert types == {"id": "DECIMAL(38,0)", "seen": "TIMESTAMP WITH TIME ZONE", "v": "JSON"}
    assert con.execute("select count(*), max(id)::varchar from t").fetchone() == (
        BATCH_ROWS + 2,
        "99999999999999999999999999999999999999",
    )
    # nanoseconds truncated to DuckDB's microseconds, the instant kept in UTC
    assert con.execute("select min(seen) from t").fetchone()[0] == datetime(
        2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC
    )


def _key_file(tmp_path: Path, passphrase: bytes) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return path


def test_snowflake_key_pair_settings_reach_the_connector(fakesnow_server, tmp_path, monkeypatch):
    """private_key_file + private_key_passphrase: the connector reads the encrypted key and logs
    in with a JWT (fakesnow does not check it); a wrong passphrase fails before any login."""
    path = _key_file(tmp_path, PASSWORD.encode())
    monkeypatch.setenv("SNOWFLAKE_KEY_PASSPHRASE", PASSWORD)
    raw = {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "rudder",
        "private_key_file": str(path),
        "private_key_passphrase": {"env": "SNOWFLAKE_KEY_PASSPHRASE"},
        "database": "DB1",
        "schema": "S1",
    }
    settings = parse_warehouse(raw, "sync.yaml", Path("."))
    kwargs = {**settings.resource_kwargs(), "private_key_passphrase": PASSWORD}
    cls = type(build_warehouse(settings))
    with cls(**kwargs, connect_args=fakesnow_server).read_model("select 1 as one") as reader:
        assert reader.read_all().to_pylist() == [{"ONE": 1}]
    wrong = cls(**{**kwargs, "private_key_passphrase": "not-it-123"}, connect_args=fakesnow_server)
    with pytest.raises(WarehouseError) as caught, wrong.read_model("select 1"):
        pass
    message = str(caught.value)
    assert message.startswith("cannot connect to snowflake account fakesnow database DB1.S1: ")
    assert (
        "Fix: check 'private_key_file' (a PKCS#8 PEM file) and 'private_key_passphrase'" in message
    )
    assert "not-it-123" not in message and PASSWORD not in message


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("snowflake", "select v:plan::string as plan from t where ts >= $partition_start"),
        ("bigquery", "select * from `p.d.t` where ts >= $partition_start"),
        ("redshift", "select json_extract_path_text(s, 'a') from t where ts >= $partition_start"),
        ("databricks", "select * from main.a.t where ts >= $partition_start"),
    ],
)
def test_models_are_checked_in_each_engines_dialect(kind, model):
    from rudder_sync.warehouses import resource_class
    from rudder_sync.warehouses.sql import ModelSqlError, check_query

    dialect = resource_class(kind).dialect
    check_query(model, dialect)
    with pytest.raises(ModelSqlError, match="must be a SELECT"):
        check_query("delete from t where ts < $partition_start", dialect)


# --- BigQuery through the real client, against a recorded REST exchange ---------------------------


class RecordedBigQuery:
    """BigQuery's REST API answering one query: jobs.insert (dry run and real), jobs.get and
    getQueryResults with the recorded schema and rows (`f`/`v` rows, TIMESTAMP as int64
    microseconds, as BigQuery sends them to this client). Records every request."""

    def __init__(self, schema: list[dict], rows: list[list]):
        self.schema, self.rows, self.requests, self.jobs = schema, rows, [], {}

    def __enter__(self) -> RecordedBigQuery:
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, body))
                project = re.match(r"/bigquery/v2/projects/([^/]+)/jobs", self.path).group(1)
                job = dict(body)
                ref = job.setdefault("jobReference", {})
                ref.update(projectId=project, location="EU")
                ref.setdefault("jobId", f"job{len(fake.jobs)}")
                word = job["configuration"]["query"]["query"].split()[0].upper()
                job["status"] = {"state": "DONE"}
                kind = "SELECT" if word in ("SELECT", "WITH") else word
                job["statistics"] = {"query": {"statementType": kind}}
                fake.jobs[ref["jobId"]] = job
                self._send(job)

            def do_GET(self):
                fake.requests.append(("GET", self.path, None))
                match = re.match(r"/bigquery/v2/projects/[^/]+/(queries|jobs)/([^/?]+)", self.path)
                job = fake.jobs[match.group(2)]
                if match.group(1) == "jobs":
                    return self._send(job)
                self._send(
                    {
                        "jobReference": job["jobReference"],
                        "jobComplete": True,
                        "schema": {"fields": fake.schema},
                        "totalRows": str(len(fake.rows)),
                        "rows": [{"f": [{"v": v} for v in row]} for row in fake.rows],
                    }
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def warehouse(self, **kwargs):
        from google.auth.credentials import AnonymousCredentials

        from rudder_sync.warehouses.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(
            project="p",
            location="EU",
            client_args={
                "credentials": AnonymousCredentials(),
                "client_options": {"api_endpoint": self.url},
            },
            **kwargs,
        )


BQ_SCHEMA = [
    {"name": "id", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "amount", "type": "NUMERIC", "mode": "NULLABLE"},
    {"name": "huge", "type": "BIGNUMERIC", "mode": "NULLABLE"},
    {"name": "attrs", "type": "JSON", "mode": "NULLABLE"},
    {"name": "place", "type": "GEOGRAPHY", "mode": "NULLABLE"},
    {"name": "seen", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "local", "type": "DATETIME", "mode": "NULLABLE"},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {
        "name": "addr",
        "type": "RECORD",
        "mode": "NULLABLE",
        "fields": [{"name": "city", "type": "STRING", "mode": "NULLABLE"}],
    },
]
BQ_ROWS = [
    [
        "7",
        "12.5",
        "123456789012345678901234567890.123456789",
        '{"plan":"pro","n":[1,2.5]}',
        "POINT(1 2)",
        "1704164645123456",
        "2024-01-02T03:04:05.500000",
        [{"v": "a"}, {"v": "b"}],
        {"f": [{"v": "Berlin"}]},
    ],
    ["8", None, None, None, None, None, None, [], None],
]


def test_bigquery_model_runs_through_the_client_with_dry_run_parameters_and_timeout():
    pytest.importorskip("google.cloud.bigquery")
    sql = "select * from `p.d.users` where seen >= $partition_start and seen < $partition_end"
    window = {
        "partition_start": datetime(2024, 1, 1, tzinfo=UTC),
        "partition_end": datetime(2024, 1, 8, tzinfo=UTC),
    }
    with RecordedBigQuery(BQ_SCHEMA, BQ_ROWS) as bq:
        with bq.warehouse(statement_timeout_seconds=90).read_model(sql, window) as reader:
            con, types = land(reader)
        posts = [body for method, _, body in bq.requests if method == "POST"]
    assert types == {
        "id": "BIGINT",
        "amount": "DECIMAL(38,9)",
        "huge": "JSON",
        "attrs": "JSON",
        "place": "VARCHAR",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "tags": "VARCHAR[]",
        "addr": "STRUCT(city VARCHAR)",
    }
    first, second = rendered(con, "id")
    assert first["attrs"] == {"plan": "pro", "n": [1, 2.5]}
    assert first["seen"] == "2024-01-02T03:04:05.123456Z"
    assert first["local"] == "2024-01-02T03:04:05.500000Z"
    assert first["tags"] == ["a", "b"] and first["addr"] == {"city": "Berlin"}
    assert second["huge"] is None and second["tags"] == []
    huge = con.execute("select huge::varchar from t where id = 7").fetchone()[0]
    assert huge == "123456789012345678901234567890.12345678900000000000000000000000000000"
    # first a dry run, then the job: named TIMESTAMP parameters, the job timeout
    dry, real = (body["configuration"] for body in posts)
    assert dry["dryRun"] is True and not real.get("dryRun")
    assert real["query"]["query"] == sql.replace("$", "@")
    assert real["query"]["parameterMode"] == "NAMED"
    assert [
        (p["name"], p["parameterType"]["type"], p["parameterValue"]["value"][:19])
        for p in real["query"]["queryParameters"]
    ] == [
        ("partition_start", "TIMESTAMP", "2024-01-01 00:00:00"),
        ("partition_end", "TIMESTAMP", "2024-01-08 00:00:00"),
    ]
    assert real["jobTimeoutMs"] == "90000"


def test_bigquery_refuses_a_model_that_is_not_a_select_before_running_it():
    pytest.importorskip("google.cloud.bigquery")
    with RecordedBigQuery(BQ_SCHEMA, []) as bq:
        with (
            pytest.raises(WarehouseError) as caught,
            bq.warehouse().read_model("delete from `p.d.users` where true"),
        ):
            pass
        posts = [body for method, _, body in bq.requests if method == "POST"]
    assert str(caught.value) == (
        "the model failed on bigquery project p location EU: it is a DELETE statement. "
        "Fix: models must be a SELECT; they run read-only."
    )
    assert len(posts) == 1 and posts[0]["configuration"]["dryRun"] is True


# --- Redshift's code path, live on PostgreSQL --------------------------------------------------


@pytest.fixture
def redshift_on_postgres(redshift_engine):
    """A RedshiftWarehouse whose redshift_connector reaches the test PostgreSQL server through
    the start-up proxy of rudder_sync_tests/engines/redshift.py."""
    from rudder_sync.warehouses.redshift import RedshiftWarehouse
    from rudder_sync_tests.postgres import execute

    url = redshift_engine.server_url
    sequence = f"rs_seq_{datetime.now().strftime('%H%M%S%f')}"
    execute(url, f"create sequence {sequence}")
    yield (
        RedshiftWarehouse(
            **redshift_engine.yaml_keys("postgres"),
            password=PASSWORD,
            ssl=False,
            statement_timeout_seconds=1,
        ),
        sequence,
    )
    execute(url, f"drop sequence {sequence}")


def test_redshift_code_path_live_on_postgres(redshift_on_postgres):
    """The real redshift_connector runs begin read only / set statement_timeout / declare with
    bound parameters / fetch forward; PostgreSQL stands in for Redshift (same OIDs and
    protocol). Several fetches, when a result exceeds one batch, are not covered here."""
    warehouse, sequence = redshift_on_postgres
    sql = (
        "select g as id, (g * 1.25)::numeric(12,2) as amount, "
        "timestamptz '2024-01-02 03:04:05.5+02' as seen, timestamp '2024-01-02 03:04:05' as at, "
        "'x%' as s, json_build_object('a', g, 'b', array[1.5]) as j, date '1960-01-01' as d "
        "from generate_series(1, 5) g where g >= $partition_start and g < $partition_end "
        "and '50%' like '5%'"
    )
    with warehouse.read_model(sql, {"partition_start": 2, "partition_end": 4}) as reader:
        con, types = land(reader)
    assert types == {
        "id": "INTEGER",
        "amount": "JSON",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "at": "TIMESTAMP",
        "s": "VARCHAR",
        "j": "JSON",
        "d": "DATE",
    }
    assert rendered(con, "id") == [
        {
            "id": g,
            "amount": g * 1.25,
            "seen": "2024-01-02T01:04:05.500000Z",
            "at": "2024-01-02T03:04:05.000000Z",
            "s": "x%",
            "j": {"a": g, "b": [1.5]},
            "d": "1960-01-01",
        }
        for g in (2, 3)
    ]
    assert con.execute("select amount::varchar from t order by id").fetchall() == [
        ("2.50",),
        ("3.75",),
    ]
    with warehouse.read_model("select 1 as one where false") as reader:
        assert reader.read_all().num_rows == 0 and reader.schema.names == ["one"]


@pytest.mark.parametrize(
    ("model", "words", "fix"),
    [
        ("select pg_sleep(5)", "statement timeout", "ran longer than statement_timeout_seconds=1"),
        ("select nextval('{seq}')", "read-only transaction", "models run in a read-only"),
        ("select * from no_such_table", "does not exist", "check 'database' and the table names"),
    ],
)
def test_redshift_code_path_errors_live_on_postgres(redshift_on_postgres, model, words, fix):
    warehouse, sequence = redshift_on_postgres
    with (
        pytest.raises(WarehouseError) as caught,
        warehouse.read_model(model.format(seq=sequence)) as reader,
    ):
        reader.read_all()
    message = str(caught.value)
    assert message.startswith(f"the model failed on redshift 127.0.0.1:{warehouse.port}/postgres")
    assert words in message and fix in message and PASSWORD not in message


# --- endpoints as keys ----------------------------------------------------------------------------


def test_snowflake_endpoint_keys_reach_the_connector_and_plain_http_needs_loopback(monkeypatch):
    monkeypatch.setenv("WH_SECRET", TOKEN)
    keys = {
        "type": "snowflake",
        "account": "xy12345",
        "user": "u",
        "password": {"env": "WH_SECRET"},
    }
    private = {**keys, "host": "xy12345.privatelink.snowflakecomputing.com", "port": 443}
    warehouse = build_warehouse(parse_warehouse(private, "sync.yaml", Path(".")))
    args = warehouse.process_config_and_initialize()._connect_args()
    assert (args["host"], args["port"]) == ("xy12345.privatelink.snowflakecomputing.com", 443)
    assert "protocol" not in args  # the connector's default: https
    with pytest.raises(WarehouseSettingsError) as caught:
        parse_warehouse({**private, "protocol": "http"}, "sync.yaml", Path("."))
    assert str(caught.value) == (
        "sync.yaml: warehouse: key 'protocol' is http (no TLS), allowed only for a loopback "
        "'host' (a local emulator). Fix: remove 'protocol' (https), or set 'host: 127.0.0.1'."
    )
    with pytest.raises(WarehouseSettingsError, match="key 'protocol'"):
        parse_warehouse({**keys, "protocol": "ftp"}, "sync.yaml", Path("."))
    local = {**keys, "host": "127.0.0.1", "port": 8080, "protocol": "http"}
    assert parse_warehouse(local, "sync.yaml", Path(".")).protocol == "http"


BQ_KEYS = {"type": "bigquery", "project": "p"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"credentials": "anonymous"},
            "key 'credentials: anonymous' is allowed only with a loopback 'api_endpoint'",
        ),
        (
            {"credentials": "anonymous", "api_endpoint": "https://bq.example.com"},
            "key 'credentials: anonymous' is allowed only with a loopback 'api_endpoint'",
        ),
        (
            {
                "credentials": "anonymous",
                "api_endpoint": "http://127.0.0.1:9050",
                "storage_api_endpoint": "bq-storage.example.com:443",
            },
            "key 'credentials: anonymous' is allowed only with a loopback 'api_endpoint'",
        ),
        ({"api_endpoint": "http://bq.example.com"}, "key 'api_endpoint' is plain http"),
        ({"api_endpoint": "bq.example.com"}, "key 'api_endpoint' is 'bq.example.com', not a URL"),
        ({"storage_api_endpoint": "http://h:1"}, "key 'storage_api_endpoint' is 'http://h:1'"),
        (
            {"credentials": "anonymous", "credentials_file": "/k.json"},
            "set at most one of 'credentials_file', 'gcp_credentials' and 'credentials'",
        ),
        ({"credentials": "none"}, "key 'credentials'"),
    ],
)
def test_bigquery_endpoint_keys_are_checked_at_load_time(extra, message):
    with pytest.raises(WarehouseSettingsError) as caught:
        parse_warehouse({**BQ_KEYS, **extra}, "sync.yaml", Path("."))
    text = str(caught.value)
    assert text.startswith("sync.yaml: warehouse: ") and message in text and "Fix: " in text
    assert "\n" not in text


def test_bigquery_endpoint_keys_build_an_anonymous_client_on_loopback(monkeypatch):
    monkeypatch.setenv("BQ_API", "http://localhost:9050")
    raw = {
        **BQ_KEYS,
        "credentials": "anonymous",
        "api_endpoint": {"env": "BQ_API"},
        "storage_api_endpoint": "[::1]:9060",
    }
    warehouse = build_warehouse(parse_warehouse(raw, "sync.yaml", Path(".")))
    resolved = warehouse.process_config_and_initialize()
    assert resolved.describe() == "bigquery project p via http://localhost:9050"
    client = resolved.client()
    from google.auth.credentials import AnonymousCredentials

    assert isinstance(client._credentials, AnonymousCredentials)
    assert client._connection.API_BASE_URL == "http://localhost:9050"
    storage = resolved.storage_client(client)
    assert storage._transport.grpc_channel._channel.target() == b"dns:///[::1]:9060"  # plaintext
    storage._transport.close()


# --- BigQuery, live on bqemulator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bq_types(bigquery_engine):
    """A dataset with a table of each BigQuery type the emulator has (no GEOGRAPHY: see
    rudder_sync_tests/engines/bqemulator_launcher.py)."""
    dataset = "types_" + datetime.now().strftime("%H%M%S%f")
    bigquery_engine.run(
        f"create schema `{dataset}`",
        f"""create table `{dataset}`.t (id INT64, amount NUMERIC, big BIGNUMERIC, score FLOAT64,
            active BOOL, email STRING, seen TIMESTAMP, local DATETIME, born DATE, at_time TIME,
            raw BYTES, attrs JSON, tags ARRAY<STRING>, addr STRUCT<city STRING, zip INT64>)""",
        f"""insert into `{dataset}`.t values
            (1, 12.5, 1.25, 1.5, true, 'a@x.io', timestamp '2024-01-02 03:04:05.123456+02',
             datetime '1960-01-02 03:04:05', date '1960-01-01', time '01:02:03',
             from_hex('00ff'), json '{{"plan":"pro","n":[1,2.5]}}', ['a', 'b'],
             struct('Berlin', 10115)),
            (2, null, null, null, null, null, null, null, null, null, null, null, [], null)""",
    )
    return dataset


def _bq_warehouse(bigquery_engine, **keys):
    settings = parse_warehouse(
        {"type": "bigquery", **bigquery_engine.yaml_keys(), **keys}, "sync.yaml", Path(".")
    )
    return build_warehouse(settings)


class StorageSpy:
    """Counts the Storage Read API sessions the warehouse's client opens."""

    def __init__(self, monkeypatch):
        from rudder_sync.warehouses.bigquery import BigQueryWarehouse

        self.sessions = []
        original = BigQueryWarehouse.storage_client

        def storage_client(warehouse, client):
            storage = original(warehouse, client)
            if storage is not None:
                create = storage.create_read_session

                def spy(*args, **kwargs):
                    session = create(*args, **kwargs)
                    self.sessions.append(session.table)
                    return session

                storage.create_read_session = spy
            return storage

        monkeypatch.setattr(BigQueryWarehouse, "storage_client", storage_client)


@pytest.mark.parametrize("storage", [True, False], ids=["storage_read_api", "rest"])
def test_bigquery_rows_land_in_duckdb_through_the_real_client(
    bigquery_engine, bq_types, monkeypatch, storage
):
    """The model runs as a query job on the emulator; its rows come through the Storage Read
    API (gRPC, Arrow) when `storage_api_endpoint` is set, else over REST; the same either way."""
    spy = StorageSpy(monkeypatch)
    keys = {} if storage else {"storage_api_endpoint": None}
    warehouse = _bq_warehouse(bigquery_engine, **keys)
    with warehouse.read_model(f"select * from `{bq_types}`.t") as reader:
        con, types = land(reader)
    assert len(spy.sessions) == (1 if storage else 0)
    assert types == {
        "id": "BIGINT",
        "amount": "DECIMAL(38,9)",
        "big": "DECIMAL(38,9)",  # the emulator reports BIGNUMERIC as NUMERIC
        "score": "DOUBLE",
        "active": "BOOLEAN",
        "email": "VARCHAR",
        "seen": "TIMESTAMP WITH TIME ZONE",
        "local": "TIMESTAMP",
        "born": "DATE",
        "at_time": "TIME",
        "raw": "BLOB",
        "attrs": "JSON",
        "tags": "VARCHAR[]",
        "addr": "STRUCT(city VARCHAR, zip BIGINT)",
    }
    first, second = rendered(con, "id")
    assert first == {
        "id": 1,
        "amount": 12.5,
        "big": 1.25,
        "score": 1.5,
        "active": True,
        "email": "a@x.io",
        "seen": "2024-01-02T01:04:05.123456Z",
        "local": "1960-01-02T03:04:05.000000Z",
        "born": "1960-01-01",
        "at_time": "01:02:03.000000",
        "raw": "AP8=",
        "attrs": {"plan": "pro", "n": [1, 2.5]},
        "tags": ["a", "b"],
        "addr": {"city": "Berlin", "zip": 10115},
    }
    assert second["attrs"] is None and second["tags"] == [] and second["addr"] is None


def test_bigquery_storage_api_takes_messages_over_grpcs_default_4_mb(bigquery_engine, monkeypatch):
    """gRPC refuses a received message over 4 MB unless its channel says otherwise, and the
    emulator's Storage Read API sends a result in large messages (1M rows of
    bench_warehouse_diff's model failed with 'Received message larger than max (5338161 vs.
    4194304)'): the plaintext channel of a loopback endpoint lifts the cap, as the client's own
    transport does, and a ~10 MB result arrives whole."""
    spy = StorageSpy(monkeypatch)
    warehouse = _bq_warehouse(bigquery_engine)
    sql = "select x, repeat('x', 200) as pad from unnest(generate_array(1, 50000)) as x"
    with warehouse.read_model(sql) as reader:
        table = reader.read_all()
    assert len(spy.sessions) == 1
    assert table.num_rows == 50_000
    assert sum(table.column("x").to_pylist()) == 50_000 * 50_001 // 2
    assert table.nbytes > 10_000_000


def test_bigquery_partition_bounds_are_named_timestamp_parameters_on_the_emulator(
    bigquery_engine, bq_types
):
    sql = (
        f"select id, email from `{bq_types}`.t where seen >= $partition_start "
        "and seen < $partition_end and email <> '50% off'"
    )
    window = {
        "partition_start": datetime(2024, 1, 2, 1, tzinfo=UTC),
        "partition_end": datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
    }
    with _bq_warehouse(bigquery_engine).read_model(sql, window) as reader:
        assert reader.read_all().to_pylist() == []  # the end bound is exclusive
    window["partition_end"] = datetime(2024, 1, 2, 2, tzinfo=UTC)
    with _bq_warehouse(bigquery_engine).read_model(sql, window) as reader:
        assert reader.read_all().to_pylist() == [{"id": 1, "email": "a@x.io"}]


def test_bigquery_emulator_refuses_a_write_before_it_runs_and_names_a_missing_table(
    bigquery_engine, bq_types
):
    warehouse = _bq_warehouse(bigquery_engine)
    with (
        pytest.raises(WarehouseError) as caught,
        warehouse.read_model(f"delete from `{bq_types}`.t where true"),
    ):
        pass
    assert "it is a DELETE statement. Fix: models must be a SELECT" in str(caught.value)
    with _bq_warehouse(bigquery_engine).read_model(
        f"select count(*) as n from `{bq_types}`.t"
    ) as r:
        assert r.read_all().to_pylist() == [{"n": 2}]  # the dry run deleted nothing
    with (
        pytest.raises(WarehouseError) as caught,
        warehouse.read_model(f"select * from `{bq_types}`.nope"),
    ):
        pass
    assert str(caught.value).startswith("the model failed on bigquery project rudder-test via ")
