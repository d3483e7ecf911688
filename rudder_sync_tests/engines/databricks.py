"""Databricks: Spark SQL on a local pyspark (`local[2]`, one JVM for the session).

Databricks SQL is Spark SQL; what runs here is the SQL rudder_sync renders for Databricks, on
plain Spark tables (parquet: Delta's jars come from Maven, which is not reachable here, so
statements that need Delta, such as MERGE, do not run). databricks-sql-connector does not talk to
Spark's own Thrift server: it sends `Authorization: Bearer` where Hive's HTTP servlet parses only
Basic, and, that rewritten by a proxy, it refuses the server's protocol version
(HIVE_CLI_SERVICE_PROTOCOL_V9; it requires Databricks' SPARK_CLI_SERVICE_PROTOCOL_V2 or later).
So the connector layer stays on recorded results (test_vendor_warehouses.py) and Spark is reached
through pyspark.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from . import SETUP, missing


@pytest.fixture(scope="session")
def spark_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SparkSession in UTC, its warehouse in a temporary directory."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        missing("pyspark (the Databricks stand-in)", "pip install -e '.[test]'")
    if shutil.which("java") is None:
        missing("a Java runtime for Spark (java)", f"sudo {SETUP}")
    root = tmp_path_factory.mktemp("spark")
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("rudder_sync_tests")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={root}")
        .config("spark.sql.ansi.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()
