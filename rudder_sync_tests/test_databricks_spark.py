"""The Databricks warehouse's read path on a real Spark, through a stand-in for the connector.

databricks-sql-connector cannot reach a local Spark (engines/databricks.py says why), so
`databricks.sql.connect` is replaced by a DB-API adapter over the test session's SparkSession
(`engines.databricks.SparkConnection`): a stand-in for the connector only. Everything of
rudder_sync's runs as it would against Databricks: the connection's keyword arguments, the
session's time zone, `$name` parameters bound as native `:name` ones (times as TIMESTAMP), the
chunked Arrow fetch and the normalised types. The model's table lives in the session's Iceberg
catalog, the table format with row-level SQL (MERGE) the Databricks state store needs here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from rudder_sync.warehouses import databricks as databricks_module
from rudder_sync.warehouses.base import WarehouseError
from rudder_sync.warehouses.databricks import DatabricksWarehouse

from .engines.databricks import ICEBERG_CATALOG, SparkConnection

pytestmark = [pytest.mark.xdist_group("engines"), pytest.mark.timeout(900)]

TOKEN = "dapi-secret-token-42"


@pytest.fixture
def databricks_on_spark(spark_engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """`databricks.sql.connect` reaches the local Spark (the connector cannot: see
    engines/databricks.py); the keyword arguments of each connection, for the test to check."""
    from databricks import sql as dbsql

    calls: list[dict] = []

    def connect(**kwargs: Any) -> SparkConnection:
        calls.append(kwargs)
        return SparkConnection(spark_engine, **kwargs)

    monkeypatch.setattr(dbsql, "connect", connect)
    return calls


def test_a_model_reads_from_spark_through_the_connector_layer(
    spark_engine: Any, databricks_on_spark: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = "app_read"
    table = f"{ICEBERG_CATALOG}.{schema}.users"
    spark_engine.sql(f"create namespace if not exists {ICEBERG_CATALOG}.{schema}")
    spark_engine.sql(f"drop table if exists {table}")
    spark_engine.sql(
        f"create table {table} (id bigint, plan string, amount decimal(38, 2), "
        "seen timestamp, tags array<string>) using iceberg"
    )
    spark_engine.sql(
        f"insert into {table} values "
        "(1, 'free', 1.50, timestamp'2024-01-01 10:00:00+00:00', array('a')), "
        "(2, 'pro', 123456789012345678901234567890123456.78, "
        "timestamp'2024-01-02 10:00:00+00:00', array()), "
        "(3, 'team', null, timestamp'2024-01-03 10:00:00+00:00', array('b', 'c'))"
    )
    # a row-level change, as Delta on Databricks takes one: the catalog's table format has them
    spark_engine.sql(
        f"merge into {table} t using (select 3 as id, 'pro' as plan) s on t.id = s.id "
        "when matched then update set plan = s.plan"
    )
    warehouse = DatabricksWarehouse(
        server_hostname="dbc-1.cloud.databricks.com",
        http_path="/sql/1.0/warehouses/abc",
        access_token=TOKEN,
        catalog=ICEBERG_CATALOG,
        schema_name=schema,
    )
    monkeypatch.setattr(databricks_module, "BATCH_ROWS", 2)  # the fetch loop takes two chunks
    since = datetime(2024, 1, 2, 11, tzinfo=timezone(timedelta(hours=1)))  # 10:00 UTC
    with warehouse.read_model(
        "select id, plan, amount, seen, tags from users where seen >= $since order by id",
        {"since": since},
    ) as reader:
        rows = reader.read_all()
    assert rows.to_pylist() == [
        {
            "id": 2,
            "plan": "pro",
            "amount": Decimal("123456789012345678901234567890123456.78"),
            "seen": datetime(2024, 1, 2, 10, tzinfo=UTC),
            "tags": [],
        },
        {
            "id": 3,
            "plan": "pro",
            "amount": None,
            "seen": datetime(2024, 1, 3, 10, tzinfo=UTC),
            "tags": ["b", "c"],
        },
    ]
    assert str(rows.schema.field("amount").type) == "decimal128(38, 2)"
    (call,) = databricks_on_spark
    assert call["catalog"] == ICEBERG_CATALOG and call["schema"] == schema
    assert call["session_configuration"] == {"TIMEZONE": "UTC"}


def test_a_failing_model_names_the_fix_and_hides_the_token(
    databricks_on_spark: list[dict],
) -> None:
    warehouse = DatabricksWarehouse(
        server_hostname="dbc-1.cloud.databricks.com",
        http_path="/sql/1.0/warehouses/abc",
        access_token=TOKEN,
        catalog=ICEBERG_CATALOG,
    )
    with (
        pytest.raises(WarehouseError, match="TABLE_OR_VIEW_NOT_FOUND") as failed,
        warehouse.read_model(f"select * from nowhere.missing where x = '{TOKEN}'"),
    ):
        pass
    message = str(failed.value)  # the stand-in raises the connector's ServerOperationError
    assert "check the table names, 'catalog' and 'schema'" in message
    assert TOKEN not in message
