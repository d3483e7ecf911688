"""Warehouses the models run on: one small protocol, one module per engine.

`WarehouseResource.read_model(sql, params)` streams a model's rows as Arrow record batches; that is
all the rest of rudder_sync sees. DuckDB (embedded default) and PostgreSQL (ADBC) are core; the
vendor connectors of Snowflake, BigQuery, Redshift and Databricks are extras, imported only when a
sync uses them. Nothing outside this package imports a driver.
"""

from __future__ import annotations

import importlib

from .base import WarehouseError, WarehouseResource
from .duckdb import DuckDBWarehouse
from .postgres import PostgresWarehouse
from .settings import (
    SETTINGS,
    DuckDBSettings,
    PostgresSettings,
    WarehouseSettings,
    WarehouseSettingsError,
    parse_warehouse,
)

__all__ = [
    "DuckDBSettings",
    "PostgresSettings",
    "DuckDBWarehouse",
    "PostgresWarehouse",
    "WarehouseError",
    "WarehouseResource",
    "WarehouseSettings",
    "WarehouseSettingsError",
    "build_warehouse",
    "parse_warehouse",
    "SETTINGS",
]

# type -> (module, class) of its resource; modules of the extras are imported on first use.
RESOURCES: dict[str, tuple[str, str]] = {
    "duckdb": (".duckdb", "DuckDBWarehouse"),
    "postgres": (".postgres", "PostgresWarehouse"),
    "snowflake": (".snowflake", "SnowflakeWarehouse"),
    "bigquery": (".bigquery", "BigQueryWarehouse"),
    "redshift": (".redshift", "RedshiftWarehouse"),
    "databricks": (".databricks", "DatabricksWarehouse"),
}


def resource_class(kind: str) -> type[WarehouseResource]:
    module, name = RESOURCES[kind]
    return getattr(importlib.import_module(module, __name__), name)


def build_warehouse(settings: WarehouseSettings) -> WarehouseResource:
    """The resource for a validated `warehouse:` section (secrets stay `EnvVar`s)."""
    return resource_class(settings.type)(**settings.resource_kwargs())
