"""A real PostgreSQL server for the tests: one fresh database per test, and a sync project on it.

`.ci/run` starts the server (`.ci/postgres start`) and exports RUDDER_SYNC_TEST_PG_URL. In CI a
missing server fails the Postgres tests; on a developer machine they skip with the command to run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from rudder_sync.config import ProjectConfig, load_config

PG_URL_ENV_VAR = "RUDDER_SYNC_TEST_PG_URL"
#: the env var the test projects' YAML reads the database URL from
SYNC_URL_ENV_VAR = "RUDDER_SYNC_TEST_DB_URL"
HOW_TO_RUN = (
    f"no PostgreSQL server for the tests ({PG_URL_ENV_VAR} is not set). Start one with "
    f'`eval "$(.ci/postgres start /tmp/rudder-sync-pg)"` and run pytest again in that shell.'
)

USERS_DDL = """
create table users (
    id integer, user_id text, anon_id text, email text, plan text,
    country text, updated_at timestamptz, event_id text
)
"""


def server_url() -> str:
    """The server's URL, or a skip (a failure in CI) that says how to start one."""
    url = os.environ.get(PG_URL_ENV_VAR, "").strip()
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(HOW_TO_RUN, pytrace=False)
    pytest.skip(HOW_TO_RUN)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def execute(url: str, *statements: str, params: Any = None) -> list[tuple]:
    """Run statements (one per call to the server) in autocommit; the last one's rows."""
    import adbc_driver_postgresql.dbapi as adbc

    rows: list[tuple] = []
    with adbc.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement, params)
            rows = cursor.fetchall() if cursor.description else []
    return rows


@dataclass
class PgDatabase:
    """A fresh database on the test server."""

    url: str
    name: str

    def sql(self, *statements: str) -> list[tuple]:
        return execute(self.url, *statements)

    def seed_users(self, count: int) -> None:
        self.sql(
            USERS_DDL,
            f"""
            insert into users select i, 'u' || i, 'a' || i, 'user' || i || '@example.com',
                   'free', 'DE', timestamptz '2024-05-01 12:00:00+00' + make_interval(hours => i),
                   'e' || i
            from generate_series(1, {count}) as t(i)
            """,
        )


@pytest.fixture
def pg() -> Iterator[PgDatabase]:
    """A new, empty database for one test, dropped afterwards."""
    server = server_url()
    name = f"rs_{uuid.uuid4().hex[:12]}"
    execute(server, f"create database {name}")
    database = PgDatabase(url=with_database(server, name), name=name)
    try:
        yield database
    finally:
        execute(server, f"drop database if exists {name} with (force)")


@dataclass
class PgProject:
    """A sync YAML whose warehouse is the test database (its URL read from the environment)."""

    root: Path
    config_path: Path
    db: PgDatabase

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def config(self) -> ProjectConfig:
        return load_config(self.config_path)


def write_pg_project(
    root: Path,
    db: PgDatabase,
    syncs: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch | None = None,
    **warehouse: Any,
) -> PgProject:
    """The YAML reads the URL as {env: RUDDER_SYNC_TEST_DB_URL}, which is set for this test."""
    root.mkdir(parents=True, exist_ok=True)
    if monkeypatch is not None:
        monkeypatch.setenv(SYNC_URL_ENV_VAR, db.url)
    config_path = root / "rudder_sync.yaml"
    document = {
        "warehouse": {"type": "postgres", "url": {"env": SYNC_URL_ENV_VAR}, **warehouse},
        "state": "state",
        "syncs": syncs,
    }
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return PgProject(root=root, config_path=config_path, db=db)
