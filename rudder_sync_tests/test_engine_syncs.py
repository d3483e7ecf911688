"""A sync whose model lives in a vendor warehouse's stand-in, end to end: the YAML (with the
endpoint keys), the real connector, real Dagster runs against the test gateway.

For Snowflake (fakesnow), BigQuery (bqemulator) and Redshift (PostgreSQL through
redshift_connector), the same history as on a DuckDB file: five users, a run, a plan change, a
deletion and a sign-up, a run. The events must be those the DuckDB project sends (messageId and
detection time aside). Databricks is not here: its connector cannot reach Spark (see
rudder_sync_tests/engines/databricks.py).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .gateway import TestGateway
from .helpers import SEEDED_SYNC, Project, rudderstack_for, run_sync, sql

# One xdist worker runs every test of the vendor engines (with --dist loadgroup), so that each
# stand-in (rudder_sync_tests/engines/) starts once per run.
pytestmark = pytest.mark.xdist_group("engines")

SECRET_ENV = "RUDDER_SYNC_TEST_ENGINE_SECRET"
SECRET = "engine-Secret-31x"
COLUMNS = ("id", "user_id", "anon_id", "email", "plan")
ROWS = [(i, f"u{i}", f"a{i}", f"user{i}@example.com", "free") for i in range(1, 6)]
CHANGES = [
    "update {users} set plan = 'pro' where id = 2",
    "delete from {users} where id = 3",
    "insert into {users} values (9, 'u9', 'a9', 'n@x.io', 'free')",
]


def _values() -> str:
    return ", ".join(f"({i}, '{u}', '{a}', '{e}', '{p}')" for i, u, a, e, p in ROWS)


def _project(root: Path, warehouse: dict[str, Any] | str, model: str) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    sync = dict(copy.deepcopy(SEEDED_SYNC), model=model, send_initial_results=True)
    path = root / "rudder_sync.yaml"
    document = {"warehouse": warehouse, "state": "state", "syncs": {"orders": sync}}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return Project(root=root, config_path=path)


def _history(project: Project, change: Callable[[str], None], gateway: TestGateway) -> list:
    sent = []
    for step in (None, *CHANGES, None):
        if step is None:
            before = len(gateway.events)
            run_sync(project, "orders", rudderstack_for(gateway.url))
            sent.append(gateway.events[before:])
        else:
            change(step)
    return sent


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        ({k: v for k, v in e.items() if k not in ("timestamp", "messageId")} for e in events),
        key=repr,
    )


@pytest.fixture
def on_snowflake(snowflake_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    database = f"SYNC_{uuid.uuid4().hex[:8].upper()}"
    conn = snowflake_engine.connect()
    cursor = conn.cursor()
    cursor.execute(f"create database {database}")
    cursor.execute(f"create schema {database}.app")
    users = f"{database}.app.users"
    cursor.execute(f"create table {users} (id number(38,0), user_id varchar, anon_id varchar, "
                   "email varchar, plan varchar)")  # fmt: skip
    cursor.execute(f"insert into {users} values {_values()}")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    warehouse = {
        "type": "snowflake",
        "account": "rudder",
        "user": "rudder_sync",
        "password": {"env": SECRET_ENV},
        "database": database,
        "schema": "APP",
        **snowflake_engine.yaml_keys(),
    }
    # Snowflake upper-cases unquoted names: the model names its columns as the sync does.
    model = "select " + ", ".join(f'{c} as "{c}"' for c in COLUMNS) + " from users"
    project = _project(tmp_path / "snowflake", warehouse, model)
    yield project, lambda step: cursor.execute(step.format(users=users))
    conn.close()


@pytest.fixture
def on_bigquery(bigquery_engine: Any, tmp_path: Path) -> tuple:
    dataset = f"sync_{uuid.uuid4().hex[:8]}"
    users = f"`{dataset}`.users"
    bigquery_engine.run(
        f"create schema `{dataset}`",
        f"create table {users} (id INT64, user_id STRING, anon_id STRING, email STRING, "
        "plan STRING)",
        f"insert into {users} values {_values()}",
    )
    warehouse = {"type": "bigquery", **bigquery_engine.yaml_keys()}
    model = f"select {', '.join(COLUMNS)} from {users}"
    project = _project(tmp_path / "bigquery", warehouse, model)
    return project, lambda step: bigquery_engine.run(step.format(users=users))


@pytest.fixture
def on_redshift(
    redshift_engine: Any, pg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple:
    pg.sql(
        "create table users (id integer, user_id varchar, anon_id varchar, email varchar, "
        "plan varchar)",
        f"insert into users values {_values()}",
    )
    monkeypatch.setenv(SECRET_ENV, SECRET)
    warehouse = {
        "type": "redshift",
        **redshift_engine.yaml_keys(pg.name),
        "password": {"env": SECRET_ENV},
        "ssl": False,
    }
    model = f"select {', '.join(COLUMNS)} from users"
    project = _project(tmp_path / "redshift", warehouse, model)
    return project, lambda step: pg.sql(step.format(users="users"))


@pytest.mark.parametrize(
    "engine", ["snowflake", pytest.param("bigquery", marks=pytest.mark.slow), "redshift"]
)
def test_a_sync_on_the_engine_sends_what_duckdb_sends(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    project, change = request.getfixturevalue(f"on_{engine}")
    model = f"select {', '.join(COLUMNS)} from users"
    reference = _project(tmp_path / "duckdb", "warehouse.duckdb", model)
    sql(reference.warehouse, "create table users (id integer, user_id varchar, anon_id varchar, "
        f"email varchar, plan varchar); insert into users values {_values()}")  # fmt: skip
    with TestGateway() as on_engine, TestGateway() as on_duckdb:
        sent = _history(project, change, on_engine)
        expected = _history(
            reference, lambda step: sql(reference.warehouse, step.format(users="users")), on_duckdb
        )
        assert on_engine.schema_errors == []
    assert [len(run) for run in sent] == [5, 3]  # 5 added; then changed, removed, added
    assert [_comparable(run) for run in sent] == [_comparable(run) for run in expected]
    assert SECRET not in repr(sent)
