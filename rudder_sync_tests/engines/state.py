"""The engines in-warehouse state (`state_schema`) runs on, as one fixture for its scenario table.

`state_engine` is parametrised by engine:

* `postgres`: the test PostgreSQL server through ADBC (the reference);
* `snowflake`: fakesnow's server (Snowflake's REST protocol on DuckDB, snowflake.py here)
  through the real snowflake-connector-python;
* `redshift`: the real redshift_connector through the start-up proxy to the test PostgreSQL
  server (Redshift speaks PostgreSQL's protocol);
* `bigquery`: bqemulator (BigQuery's REST API on DuckDB, bigquery.py here) through the real
  google-cloud-bigquery client, a project of its own per test (the emulator makes any);
* `databricks`: Spark 3.5 with an Iceberg catalog (databricks.py here) through `SparkConnection`,
  the stand-in for databricks-sql-connector (which cannot reach a local Spark).

Each gives a fresh database with the model's data, a way to run SQL there (the scenarios' changes
and their checks of the state tables), and the sync YAML's warehouse section. The changes are
written once, in SQL every engine runs (no `generate_series`: rows are generated here).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..helpers import Project
from ..postgres import SYNC_URL_ENV_VAR

SCHEMA = "rudder_sync"
SECRET_ENV = "RUDDER_SYNC_TEST_STATE_ENGINE_SECRET"
SECRET = "state-Engine-pw-42"
USERS_DDL = (
    "create table users (id integer, user_id varchar(200), anon_id varchar(200), "
    "email varchar(200), plan varchar(200), country varchar(200), updated_at timestamptz, "
    "event_id varchar(200))"
)
_SELECT = re.compile(r"^\s*select\s+(?P<columns>.+?)\s+from\s+(?P<rest>.+)$", re.I | re.S)


@dataclass
class StateEngine:
    """One engine for the scenarios: its SQL, its YAML and its database."""

    kind: str
    execute: Callable[[str], list[tuple]]
    warehouse: dict[str, Any]
    #: the sync YAML's environment (the warehouse's secret or URL)
    env: dict[str, str] = field(default_factory=dict)

    def sql(self, *statements: str) -> list[tuple]:
        """Run statements in order (each committed); the last one's rows."""
        rows: list[tuple] = []
        for statement in statements:
            rows = self.execute(statement)
        return rows

    def users(self, ids: range | list[int], plan: str = "free", country: str = "DE") -> str:
        """An INSERT of users with these IDs, as `seed_users` makes them (on BigQuery generated
        there: bqemulator takes minutes to translate 25,000 rows of VALUES)."""
        base = datetime(2024, 5, 1, 12, tzinfo=UTC)
        if self.kind == "bigquery":
            each = "UNNEST([" + ", ".join(str(i) for i in ids) + "])"
            if isinstance(ids, range) and ids.step == 1 and len(ids):
                each = f"UNNEST(GENERATE_ARRAY({ids.start}, {ids.stop - 1}))"
            text = "CAST(i AS STRING)"
            return (
                f"INSERT INTO `{BIGQUERY_DATASET}`.users SELECT i, CONCAT('u', {text}), "
                f"CONCAT('a', {text}), CONCAT('user', {text}, '@example.com'), '{plan}', "
                f"'{country}', TIMESTAMP_ADD(TIMESTAMP '{base.isoformat()}', INTERVAL i HOUR), "
                f"CONCAT('e', {text}) FROM {each} AS i"
            )
        values = ", ".join(
            f"({i}, 'u{i}', 'a{i}', 'user{i}@example.com', '{plan}', '{country}', "
            f"'{(base + timedelta(hours=i)).isoformat()}', 'e{i}')"
            for i in ids
        )
        return f"insert into users values {values}"

    def insert_users(self, ids: range) -> None:
        """Users with these IDs, 1,000 a statement: fakesnow translates one statement of 25,000
        rows of VALUES in about a minute, the Snowflake connector's read timeout."""
        for start in range(ids.start, ids.stop, 1000):
            self.sql(self.users(range(start, min(ids.stop, start + 1000))))

    def seed_users(self, count: int) -> None:
        self.sql(USERS_DDL)
        self.insert_users(range(1, count + 1))

    def model(self, sql: str) -> str:
        """A model as it must be written on this engine: Snowflake folds unquoted names to
        upper case, so its columns are named as the sync names them; BigQuery names a table with
        its dataset."""
        if self.kind == "bigquery":
            return re.sub(r"\bfrom (users\w*)", rf"from {BIGQUERY_DATASET}.\1", sql)
        if self.kind != "snowflake":
            return sql
        match = _SELECT.match(sql.strip().rstrip(";"))
        assert match, sql
        columns = [c.strip() for c in match.group("columns").split(",")]
        named = ", ".join(f'{c} as "{c}"' for c in columns)
        return f"select {named} from {match.group('rest')}"

    def table(self, role: str, sync: str) -> str:
        return f'"{SCHEMA}"."{sync}__{role}"'

    def write_project(
        self,
        root: Path,
        syncs: dict[str, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch,
        state_schema: str | None = SCHEMA,
    ) -> Project:
        root.mkdir(parents=True, exist_ok=True)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        warehouse = dict(self.warehouse)
        if state_schema:
            warehouse["state_schema"] = state_schema
        own = {name: dict(sync, model=self.model(sync["model"])) for name, sync in syncs.items()}
        path = root / "rudder_sync.yaml"
        document = {"warehouse": warehouse, "state": "state", "syncs": own}
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return Project(root=root, config_path=path)


def _postgres(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    pg = request.getfixturevalue("pg")
    yield StateEngine(
        "postgres",
        pg.sql,
        {"type": "postgres", "url": {"env": SYNC_URL_ENV_VAR}},
        {SYNC_URL_ENV_VAR: pg.url},
    )


def _redshift(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    engine = request.getfixturevalue("redshift_engine")
    pg = request.getfixturevalue("pg")
    warehouse = {
        "type": "redshift",
        **engine.yaml_keys(pg.name),
        "password": {"env": SECRET_ENV},
        "ssl": False,
    }
    yield StateEngine("redshift", pg.sql, warehouse, {SECRET_ENV: SECRET})


def _snowflake(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    engine = request.getfixturevalue("snowflake_engine")
    database = f"STATE_{uuid.uuid4().hex[:8].upper()}"
    conn = engine.connect(autocommit=True)
    cursor = conn.cursor()
    cursor.execute(f"create database {database}")
    cursor.execute(f"use database {database}")
    cursor.execute("create schema app")
    cursor.execute("use schema app")

    def execute(statement: str) -> list[tuple]:
        cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    warehouse = {
        "type": "snowflake",
        "account": "rudder",
        "user": "rudder_sync",
        "password": {"env": SECRET_ENV},
        "database": database,
        "schema": "APP",
        **engine.yaml_keys(),
    }
    try:
        yield StateEngine("snowflake", execute, warehouse, {SECRET_ENV: SECRET})
    finally:
        conn.close()


BIGQUERY_DATASET = "app"
_INFORMATION_SCHEMA = re.compile(
    r"from information_schema\.tables where table_schema = '(\w+)'", re.IGNORECASE
)


def _bigquery(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    """A project of its own (fresh datasets), the model's tables in dataset `app` (the default
    dataset of the scenarios' statements, which are PostgreSQL's, transpiled)."""
    from google.cloud import bigquery

    from rudder_sync.warehouse_state.bigquery_store import transpile

    engine = request.getfixturevalue("bigquery_engine")
    project = f"rs-{uuid.uuid4().hex[:12]}"
    client = engine.client(project)
    client.create_dataset(BIGQUERY_DATASET)
    config = bigquery.QueryJobConfig(default_dataset=f"{project}.{BIGQUERY_DATASET}")

    def execute(statement: str) -> list[tuple]:
        if _INFORMATION_SCHEMA.search(statement):  # BigQuery's is one per dataset (and
            # bqemulator fails such a query when given a default dataset)
            sql = _INFORMATION_SCHEMA.sub(
                r"from \1.INFORMATION_SCHEMA.TABLES where true", statement
            )
            return [tuple(row.values()) for row in client.query(sql).result()]
        if "`" not in statement:  # PostgreSQL's SQL (else BigQuery's already, as `users`)
            statement = re.sub(r"STRING\(\d+\)", "STRING", transpile(statement))
        rows = client.query(statement, job_config=config).result()
        return [tuple(row.values()) for row in rows]

    warehouse = {"type": "bigquery", **engine.yaml_keys(), "project": project}
    try:
        yield StateEngine("bigquery", execute, warehouse)
    finally:
        client.close()


DATABRICKS_SCHEMA = "app"
_TIME_TEXT = re.compile(r"'(\d{4}-\d\d-\d\dT[0-9:.]+(?:[+-]\d\d:\d\d)?)'")
_SHOW_TABLES = re.compile(
    r"select table_name from information_schema\.tables where table_schema = '(\w+)'",
    re.IGNORECASE,
)


def _databricks(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    """The test session's Spark (one JVM) with its Iceberg catalog, reached through
    `SparkConnection`, the stand-in for databricks-sql-connector (engines/databricks.py): the
    model's tables in schema `app`, the state's in `rudder_sync`, both emptied first (the
    scenarios run one after another in a process, each with a Spark of its own)."""
    from databricks import sql as dbsql

    from .databricks import ICEBERG_CATALOG, SparkConnection

    spark = request.getfixturevalue("spark_engine")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(dbsql, "connect", lambda **kwargs: SparkConnection(spark, **kwargs))
    for schema in (DATABRICKS_SCHEMA, SCHEMA):  # Iceberg's Hadoop catalog drops no CASCADE
        namespace = f"{ICEBERG_CATALOG}.{schema}"
        try:
            tables = spark.sql(f"show tables in {namespace}").collect()
        except Exception:  # noqa: BLE001, S112 - no such namespace (yet)
            continue
        for row in tables:
            spark.sql(f"drop table {namespace}.`{row.tableName}` purge")
        spark.sql(f"drop namespace {namespace}")
    spark.sql(f"create namespace {ICEBERG_CATALOG}.{DATABRICKS_SCHEMA}")
    conn = SparkConnection(spark, catalog=ICEBERG_CATALOG, schema=DATABRICKS_SCHEMA)

    def execute(statement: str) -> list[tuple]:
        import sqlglot

        shown = _SHOW_TABLES.search(statement)
        if shown:  # Spark's catalogs have no information_schema
            cursor = conn.cursor().execute(f"show tables in {shown.group(1)}")
            return [(row[1],) for row in cursor.fetchall()]
        sql = sqlglot.transpile(statement, read="postgres", write="databricks")[0]
        # times written as text ('2024-06-01T00:00:00+00:00'), which PostgreSQL casts on insert
        # and Spark's store assignment does not: as TIMESTAMP literals
        sql = _TIME_TEXT.sub(r"TIMESTAMP'\1'", sql)
        cursor = conn.cursor().execute(sql)
        return cursor.fetchall() if cursor.description else []

    warehouse = {
        "type": "databricks",
        "server_hostname": "dbc-1.cloud.databricks.com",
        "http_path": "/sql/1.0/warehouses/rudder",
        "access_token": {"env": SECRET_ENV},
        "catalog": ICEBERG_CATALOG,
        "schema": DATABRICKS_SCHEMA,
    }
    yield StateEngine("databricks", execute, warehouse, {SECRET_ENV: SECRET})


ENGINES = {
    "postgres": _postgres,
    "snowflake": _snowflake,
    "redshift": _redshift,
    "bigquery": _bigquery,
    "databricks": _databricks,
}
# Spark's JVM starts once per test session, on one xdist worker (as test_databricks_spark.py);
# a scenario's ~80 statements a run at ~0.1 s each take minutes there (core history: 185 s on a
# loaded machine), past the suite's 300 s default timeout once the other worker competes
_MARKS = {
    "databricks": [pytest.mark.slow, pytest.mark.xdist_group("engines"), pytest.mark.timeout(900)]
}


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, ())) for name in ENGINES])
def state_engine(request: pytest.FixtureRequest) -> Iterator[StateEngine]:
    """A fresh database on each engine in-warehouse state runs on."""
    yield from ENGINES[request.param](request)
