"""In-warehouse state (`state_schema`): what only PostgreSQL has, on the real server.

The scenario table every engine runs (core history against local mode, 1 % change, faults,
SIGKILL, guard, dry run, resync, moving in and out, quarantine, partitions) is
test_warehouse_state_engines.py, on PostgreSQL, Snowflake and Redshift. Here: PostgreSQL's
advisory lock, the `state` commands under their former name (`rudder_sync.warehouse_state.move`)
and `drop`, and grants for a role that logs in with a password.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import pytest
import yaml

from rudder_sync.state import state_path
from rudder_sync.warehouse_state import state as warehouse_state_module

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    SEEDED_SYNC,
    SYNC_NAME,
    TRACK_SYNC,
    WRITE_KEY,
    assert_delivered_exactly,
    change_key,
    cli_env,
    failure_text,
    rudderstack_for,
    run_sync,
)
from .postgres import SYNC_URL_ENV_VAR, PgDatabase, PgProject, write_pg_project

SCHEMA = "rudder_sync"
SYNCS = {
    "user_events": dict(
        copy.deepcopy(TRACK_SYNC), send_initial_results=True, timestamp="updated_at"
    ),
    "user_traits": dict(
        copy.deepcopy(IDENTIFY_SYNC),
        # ends like a hand-written file: the model is nested as a subquery all the same
        model="select id, user_id, anon_id, email, plan, country, updated_at from users;\n"
        "-- one row per user\n",
        timestamp="updated_at",
    ),
}
# -- a seeded model on PostgreSQL: a committed baseline, then known changes -----------------------


@dataclass
class PgSeeded:
    project: PgProject
    pg: PgDatabase
    expected: set[tuple[int, str]]

    def table(self, role: str, sync: str = SYNC_NAME) -> str:
        return f'{SCHEMA}."{sync}__{role}"'

    def delivered_by_run(self) -> dict[str, set[tuple[int, str]]]:
        rows = self.pg.sql(
            f"select run_id, pk, change from {self.table('delivery_log')} "
            "where status = 'delivered'"
        )
        runs: dict[str, set[tuple[int, str]]] = {}
        for run_id, pk, change in rows:
            runs.setdefault(run_id, set()).add((int(pk), change))
        return runs

    def assert_settled(self) -> None:
        """Nothing pending; the snapshot holds the model's rows, each with its warehouse hash."""
        assert self.pg.sql(f"select count(*) from {self.table('pending')}") == [(0,)]
        live = self.pg.sql(
            f"select count(*), count(__rs_whash) from {self.table('snapshot')} "
            "where not __rs_deleted"
        )
        assert live == self.pg.sql("select count(*), count(*) from users")


def seed_pg(
    root: Path,
    pg: PgDatabase,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    added: int,
    extra: dict[str, dict[str, Any]] | None = None,
) -> PgSeeded:
    """`helpers.seed_model` on PostgreSQL with state_schema: the same baseline and changes."""
    pg.seed_users(rows)
    syncs = {SYNC_NAME: SEEDED_SYNC, **(extra or {})}
    project = write_pg_project(root, pg, syncs, monkeypatch, state_schema=SCHEMA)
    run_sync(project, SYNC_NAME, rudderstack_for(url))
    pg.sql(
        "update users set plan = 'pro' where id % 4 = 0",
        "delete from users where id % 10 = 1",
        "insert into users select i, 'u' || i, 'a' || i, 'user' || i || '@example.com', "
        f"'free', 'DE', '2024-06-01', 'e' || i from generate_series({rows + 1}, {rows + added}) i",
    )
    expected = {(i, "removed") for i in range(1, rows + 1) if i % 10 == 1}
    expected |= {(i, "changed") for i in range(1, rows + 1) if i % 4 == 0 and i % 10 != 1}
    expected |= {(i, "added") for i in range(rows + 1, rows + added + 1)}
    return PgSeeded(project, pg, expected)


def _job_env(model: PgSeeded, url: str) -> dict[str, str]:
    home = model.project.root / "dagster_home"
    home.mkdir(exist_ok=True)
    return cli_env(
        RUDDER_SYNC_CONFIG=str(model.project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        DAGSTER_HOME=str(home),
        **{SYNC_URL_ENV_VAR: model.pg.url},
    )


def test_a_second_run_of_the_sync_waits_for_the_lock_then_fails_clearly(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=50, added=5)
    monkeypatch.setattr(warehouse_state_module, "LOCK_WAIT_SECONDS", 1.0)
    holder = adbc.connect(pg.url)  # another run of the same sync, holding its lock
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "select pg_advisory_lock(hashtextextended($1, 0))",
                [f"rudder_sync/{SCHEMA}/{SYNC_NAME}"],
            )
            cursor.fetchall()
        started = time.monotonic()
        refused = run_sync(
            model.project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False
        )
        assert not refused.success and time.monotonic() - started >= 1.0
        message = failure_text(refused)
        assert "another run of this sync holds its state" in message and SCHEMA in message
        assert gateway.events == []
    finally:
        holder.close()  # the lock goes with the session
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, model.expected)


# -- switching state_schema on and off -------------------------------------------------------------


def _set_state_schema(project: PgProject, schema: str | None) -> None:
    document = yaml.safe_load(project.config_path.read_text())
    document["warehouse"].pop("state_schema", None)
    if schema:
        document["warehouse"]["state_schema"] = schema
    project.config_path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.slow  # a CLI in a subprocess
def test_switching_off_with_the_move_command_keeps_the_place(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    model = seed_pg(tmp_path, pg, gateway.url, monkeypatch, rows=60, added=10)
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    delivered = len(gateway.events)
    pg.sql("update users set plan = 'team' where id = 2")
    env = _job_env(model, gateway.url)
    command = [sys.executable, "-m", "rudder_sync.warehouse_state.move", "to-local", SYNC_NAME]
    moved = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "moved already" in again.stderr

    # the warehouse state is marked as moved: without the file it went to, it is refused
    local = state_path(model.project.state_dir, SYNC_NAME, False)
    local.rename(local.with_suffix(".away"))
    refused = run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url), raise_on_error=False)
    assert not refused.success and "that file is gone" in failure_text(refused)
    local.with_suffix(".away").rename(local)
    # local mode carries on from the same place: only the new change is sent
    _set_state_schema(model.project, None)
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")]
    # switching on again moves it back, and again nothing is resent
    _set_state_schema(model.project, SCHEMA)
    pg.sql("update users set plan = 'free' where id = 2")
    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert [change_key(e) for e in gateway.events[delivered:]] == [(2, "changed")] * 2
    model.assert_settled()


def test_a_user_without_create_rights_gets_the_grants_to_run(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(5)
    role = f"limited_{pg.name}"
    pg.sql(
        f"create role {role} login password 'limited-pw-1'",
        f"grant select on users to {role}",
    )
    limited = PgDatabase(url=_with_user(pg.url, role, "limited-pw-1"), name=pg.name)
    project = write_pg_project(
        tmp_path, limited, {"traits": SYNCS["user_traits"]}, monkeypatch, state_schema=SCHEMA
    )
    refused = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    message = failure_text(refused)
    assert not refused.success and "may not create its state schema" in message
    assert f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"' in message
    assert "limited-pw-1" not in message
    # the README's way: an administrator creates the schema for that user
    pg.sql(f'CREATE SCHEMA "{SCHEMA}" AUTHORIZATION "{role}"')
    run_sync(project, "traits", rudderstack_for(gateway.url))
    assert len(gateway.events) == 5
    pg.sql(f"drop schema {SCHEMA} cascade", f"drop owned by {role}", f"drop role {role}")


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- partitioned syncs: each window against the window before, inside the warehouse ---------------

HISTORY_ROWS = """insert into users_history values
    (1, 'u1', 'u1@x.io', 'free', '2023-12-31 00:00+00', '2024-01-05 12:00+00'),
    (1, 'u1', 'u1@x.io', 'pro',  '2024-01-05 12:00+00', null),
    (2, 'u2', 'u2@x.io', 'free', '2024-01-03 10:00+00', null),
    (3, 'u3', 'u3@x.io', 'team', '2023-12-30 00:00+00', '2024-01-06 08:00+00'),
    (4, 'u4', 'u4@x.io', 'free', '2024-01-04 01:00+00', '2024-01-04 02:00+00'),
    (5, null, 'n@x.io',  'free', '2023-12-30 00:00+00', null),
    (6, ' ',  'b@x.io',  'free', '2023-12-30 00:00+00', '2024-01-03 00:00+00'),
    (6, 'u6', 'b@x.io',  'free', '2024-01-03 00:00+00', null),
    (2, 'u2', 'd@x.io',  'free', '2024-01-04 00:00+00', '2024-01-04 12:00+00')"""


@pytest.mark.slow  # a CLI in a subprocess
def test_a_removed_sync_keeps_its_tables_until_the_drop_command(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    syncs = {"traits": SYNCS["user_traits"], "traits__b": SYNCS["user_traits"]}
    project = write_pg_project(tmp_path, pg, syncs, monkeypatch, state_schema=SCHEMA)
    for name in syncs:
        run_sync(project, name, rudderstack_for(gateway.url))
    run_sync(project, "traits", rudderstack_for(None))  # a dry run: its own tables
    env = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path), **{SYNC_URL_ENV_VAR: pg.url})
    command = [sys.executable, "-m", "rudder_sync.warehouse_state.move", "drop", "traits"]

    def tables() -> set[str]:
        rows = pg.sql(f"select tablename from pg_tables where schemaname = '{SCHEMA}'")
        return {name for (name,) in rows}

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "still in the config" in refused.stderr
    document = yaml.safe_load(project.config_path.read_text())
    del document["syncs"]["traits"]
    project.config_path.write_text(yaml.safe_dump(document))
    listed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "add --yes" in listed.stdout
    assert {"traits__snapshot", "traits__dry_run__snapshot"} <= tables()
    dropped = subprocess.run(
        [*command, "--yes"], env=env, capture_output=True, text=True, timeout=60
    )
    assert dropped.returncode == 0, dropped.stderr
    assert {t for t in tables() if not t.startswith("traits__b__")} == set()
    assert "traits__b__snapshot" in tables()  # another sync's tables stay
