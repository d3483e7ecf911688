"""Shared test helpers: a real DuckDB warehouse, a sync YAML, and real Dagster runs of a sync.

Also the models that several test files share: the seeded model of the fault-injection and crash
tests (a committed baseline, then known changes, and the oracle that checks what was delivered),
and the week of SCD-2 history of the partitioned syncs (DuckDB and PostgreSQL).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult, TableMetadataValue, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ProjectConfig, SyncConfig, load_config
from rudder_sync.events import iter_event_columns
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import OutgoingEvent, RudderstackResource
from rudder_sync.state import SyncState, state_path
from rudder_sync.warehouses import build_warehouse

from .gateway import TestGateway

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))  # the dagster CLI of this venv


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without rudder_sync's or Dagster's settings, plus ``extra``: what
    a fresh shell has (no DAGSTER_HOME, so each CLI call gets a throwaway instance)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_HOME"))}
    env.update(extra)
    return env


def job_execute(
    job: str, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`dagster job execute` of one of our jobs in a subprocess, its output captured."""
    return subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", job, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


WRITE_KEY = "test-write-key"

USERS_DDL = """
create or replace table users (
    id integer, user_id varchar, anon_id varchar, email varchar, plan varchar,
    country varchar, updated_at timestamptz, event_id varchar
)
"""

TRACK_SYNC: dict[str, Any] = {
    "model": "select id, user_id, anon_id, email, plan, country, updated_at, event_id from users",
    "primary_key": "id",
    "type": "track",
    "user_id": "user_id",
    "anonymous_id": "anon_id",
    "mapping": {"email": "email", "plan": "plan"},
    "events": {
        "added": "User Signed Up",
        "changed": "User Changed Subscription",
        "removed": "User Deleted Account",
    },
}

IDENTIFY_SYNC: dict[str, Any] = {
    "model": "select id, user_id, anon_id, email, plan, country from users",
    "primary_key": "id",
    "type": "identify",
    "user_id": "user_id",
    "anonymous_id": "anon_id",
    "mapping": {"email": "email", "plan": "plan"},
}


def seed_users(warehouse: Path, count: int = 5) -> None:
    """Users 1..count, each with a user ID, an anonymous ID, an email and a plan."""
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute(USERS_DDL)
        conn.execute(
            f"""
            insert into users select i, 'u' || i, 'a' || i, 'user' || i || '@example.com',
                   'free', 'DE', timestamptz '2024-05-01 12:00:00+00' + to_hours(i), 'e' || i
            from range(1, {count} + 1) t(i)
            """
        )


def sql(warehouse: Path, statement: str) -> None:
    """Change the warehouse between runs, as the user's own pipelines would."""
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute(statement)


@dataclass
class Project:
    root: Path
    config_path: Path

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def config(self) -> ProjectConfig:
        return load_config(self.config_path)


def write_project(root: Path, syncs: dict[str, dict[str, Any]], users: int = 5) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "rudder_sync.yaml"
    config_path.write_text(
        yaml.safe_dump({"warehouse": "warehouse.duckdb", "state": "state", "syncs": syncs})
    )
    project = Project(root=root, config_path=config_path)
    if users:
        seed_users(project.warehouse, users)
    return project


def rudderstack_for(url: str | None, key: str = WRITE_KEY, **overrides: Any) -> RudderstackResource:
    """A resource pointed at the test gateway, with short retries so failing tests stay fast."""
    settings: dict[str, Any] = {
        "retry_max_seconds": 2.0,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "request_timeout_seconds": 5.0,
    }
    settings.update(overrides)
    if url is None:
        return RudderstackResource(**settings)
    return RudderstackResource(data_plane_url=url, write_key=key, **settings)


def run_sync(
    project: Project,
    sync_name: str,
    rudderstack: RudderstackResource,
    raise_on_error: bool = True,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    dry_run: bool = False,
    approve_large_change: bool = False,
    diff_config: dict[str, Any] | None = None,
) -> ExecuteInProcessResult:
    """Materialize the sync's three assets in real Dagster, as its job would.

    A partition range runs as one single-run backfill, the way `--partition-range` does.
    """
    tags = {}
    if partition_range:
        tags = {
            "dagster/asset_partition_range_start": partition_range[0],
            "dagster/asset_partition_range_end": partition_range[1],
        }
    config = project.config()
    assets = build_sync_assets(config.syncs[sync_name], config.state)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        assets,
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        raise_on_error=raise_on_error,
        partition_key=partition_key,
        tags=tags,
        run_config={
            "ops": {
                f"{sync_name}__diff": {
                    "config": {"approve_large_change": approve_large_change, **(diff_config or {})}
                },
                f"{sync_name}__events": {"config": {"dry_run": dry_run}},
            }
        },
    )
    result.run_logs = [  # type: ignore[attr-defined]
        _log_text(entry) for entry in instance.all_logs(result.run_id)
    ]
    return result


def _log_text(entry: Any) -> str:
    """A log line, with the error of a failed step (message, cause, stack) when there is one."""
    event = entry.dagster_event
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    return entry.user_message + (f"\n{error.to_string()}" if error else "")


def asset_metadata(result: ExecuteInProcessResult, sync_name: str, step: str) -> dict[str, Any]:
    """The materialization metadata of one asset, as plain values."""
    materializations = result.asset_materializations_for_node(f"{sync_name}__{step}")
    assert materializations, f"no materialization of {sync_name}/{step}"
    return {k: getattr(v, "value", v) for k, v in materializations[-1].metadata.items()}


def table_rows(value: Any) -> list[dict[str, Any]]:
    """The rows of a table metadata value (what the UI renders inline), as dicts."""
    assert isinstance(value, TableMetadataValue), f"not a table: {value!r}"
    return [dict(record.data) for record in value.records]


def events_by(gateway_events: list[dict[str, Any]], key: str = "userId") -> dict[Any, list]:
    grouped: dict[Any, list] = {}
    for event in gateway_events:
        grouped.setdefault(event.get(key), []).append(event)
    return grouped


# -- the seeded model of the fault and crash tests, and what it must deliver ---------------------

SYNC_NAME = "orders"
EVENTS = {"added": "Row Added", "changed": "Row Changed", "removed": "Row Removed"}
CHANGE_OF_EVENT = {name: change for change, name in EVENTS.items()}
SEEDED_SYNC: dict[str, Any] = {
    "model": "select id, user_id, anon_id, email, plan from users",
    "primary_key": "id",
    "type": "track",
    "user_id": "user_id",
    "anonymous_id": "anon_id",
    "mapping": {"email": "email", "plan": "plan"},
    "events": EVENTS,
}
# Small bodies, so that a few hundred events make a few dozen requests.
SMALL_BODIES_KB = 6


@dataclass
class SeededModel:
    """A sync whose baseline is committed and whose warehouse then changed in known ways."""

    project: Project
    expected: set[tuple[int, str]]

    @property
    def state_file(self) -> Path:
        return state_path(self.project.state_dir, SYNC_NAME, dry_run=False)


def seed_model(
    root: Path,
    url: str,
    rows: int,
    added: int,
    pad: int = 0,
    extra: dict[str, dict[str, Any]] | None = None,
    baseline: Callable[[Project], None] | None = None,
) -> SeededModel:
    """Users 1..rows committed as the baseline, then changed: every 4th row's plan, every 10th
    row (from 1) deleted, `added` new rows. Returns what the next run must deliver.

    `pad` lengthens every email (bigger events); `extra` adds other syncs to the project;
    `baseline` replaces the first run (which records the rows and sends nothing).
    """
    project = write_project(root, {SYNC_NAME: SEEDED_SYNC, **(extra or {})}, users=rows)
    padding = f"|| repeat('.', {pad})" if pad else ""
    if pad:
        sql(project.warehouse, f"update users set email = email {padding}")
    if baseline is None:
        run_sync(project, SYNC_NAME, rudderstack_for(url))
    else:
        baseline(project)
    sql(
        project.warehouse,
        f"""
        update users set plan = 'pro' where id % 4 = 0;
        delete from users where id % 10 = 1;
        insert into users select i, 'u' || i, 'a' || i, 'user' || i || '@example.com' {padding},
               'free', 'DE', timestamptz '2024-06-01 00:00:00+00', 'e' || i
        from range({rows + 1}, {rows + added + 1}) t(i);
        """,
    )
    expected = {(i, "removed") for i in range(1, rows + 1) if i % 10 == 1}
    expected |= {(i, "changed") for i in range(1, rows + 1) if i % 4 == 0 and i % 10 != 1}
    expected |= {(i, "added") for i in range(rows + 1, rows + added + 1)}
    return SeededModel(project=project, expected=expected)


def change_key(event: dict[str, Any]) -> tuple[int, str]:
    """(primary key, change type) of a delivered event of the seeded model."""
    return int(event["userId"][1:]), CHANGE_OF_EVENT[event["event"]]


def assert_delivered_exactly(events: list[dict[str, Any]], expected: set[tuple[int, str]]) -> int:
    """Every expected change delivered, nothing else, and repeats only as identical events
    under the same messageId. Returns the number of repeats."""
    first_by_id: dict[str, dict[str, Any]] = {}
    ids_by_change: dict[tuple[int, str], set[str]] = defaultdict(set)
    for event in events:
        message_id = event["messageId"]
        first = first_by_id.setdefault(message_id, event)
        assert event == first, f"messageId {message_id} carried two different events"
        ids_by_change[change_key(event)].add(message_id)
    delivered = set(ids_by_change)
    missing, unexpected = expected - delivered, delivered - expected
    assert not missing, f"{len(missing)} changes never delivered, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected events, e.g. {sorted(unexpected)[:5]}"
    split = {key: ids for key, ids in ids_by_change.items() if len(ids) > 1}
    assert not split, f"changes sent under several messageIds: {list(split.items())[:3]}"
    return len(events) - len(first_by_id)


@contextmanager
def read_state(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The state file, read-only, from this (test) process.

    gc first: after a failed delivery a reference cycle can keep the run's cursor open until the
    cyclic GC runs; test_crash.py checks that separately (in-process runs only share a process
    with the test in test_faults.py).
    """
    gc.collect()
    with duckdb.connect(str(path), read_only=True) as conn:
        yield conn


def assert_state_settled(model: SeededModel) -> None:
    """Nothing pending, and the snapshot holds exactly the live keys of the model."""
    with read_state(model.state_file) as conn:
        pending = conn.execute("select count(*) from pending where __rs_send").fetchone()
        live = conn.execute("select count(*) from snapshot where not __rs_deleted").fetchone()
    with duckdb.connect(str(model.project.warehouse), read_only=True) as conn:
        rows = conn.execute("select count(*) from users").fetchone()
    assert pending == (0,)
    assert live == rows


def state_digest(model: SeededModel) -> dict[str, list[tuple[Any, ...]]]:
    """What a run must not change when it delivers nothing: snapshot, delivery log, meta."""
    with read_state(model.state_file) as conn:
        return {
            "snapshot": conn.execute(
                "select __rs_pk, __rs_hash, __rs_version, __rs_deleted, __rs_props "
                "from snapshot order by __rs_pk"
            ).fetchall(),
            "delivered": conn.execute(
                "select * from delivery_log where status = 'delivered' order by all"
            ).fetchall(),
            "meta": conn.execute("select * from meta order by key").fetchall(),
        }


def pending_message_ids(model: SeededModel) -> dict[tuple[int, str], str]:
    with read_state(model.state_file) as conn:
        rows = conn.execute(
            "select __rs_pk, __rs_change, __rs_message_id from pending where __rs_send"
        ).fetchall()
    return {(int(pk), change): message_id for pk, change, message_id in rows}


def failure_text(result: ExecuteInProcessResult) -> str:
    """The messages of the run's failed steps."""
    return "\n".join(
        event.event_specific_data.error.message  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure
    )


def wait_until_idle(gateway: TestGateway, timeout: float = 15.0) -> None:
    """Wait until every request the gateway started (slow ones included) has been answered."""
    deadline = time.monotonic() + timeout
    while len(gateway.requests) < gateway._request_count:
        assert time.monotonic() < deadline, "the gateway never finished its requests"
        time.sleep(0.02)


# The test gateway on a chosen address (port 0: any), optionally behind TLS.
FixedPortGateway = TestGateway


# -- a week of SCD-2 history, replayed window by window by the partitioned syncs -----------------

SCD2_MODEL = (
    "select id, user_id, email, plan from users_history "
    "where valid_from < $partition_end and (valid_to is null or valid_to >= $partition_end)"
)
HISTORY_SYNC: dict[str, Any] = {
    "model": SCD2_MODEL,
    "primary_key": "id",
    "type": "track",
    "user_id": "user_id",
    "mapping": {"email": "email", "plan": "plan"},
    "events": {"added": "Signed Up", "changed": "Plan Changed", "removed": "Account Deleted"},
    "send_initial_results": True,
    "partitions": {"start": "2024-01-01", "cadence": "daily"},
}

# u1 and u3 exist before the first window; u2 signs up on Jan 3; u1 upgrades on Jan 5;
# u3 is deleted on Jan 6; u4 signs up and is deleted within Jan 4 (never visible at a window end).
HISTORY = """
create or replace table users_history as select * from (values
 (1, 'u1', 'u1@x.io', 'free', timestamptz '2023-12-31 00:00+00', timestamptz '2024-01-05 12:00+00'),
 (1, 'u1', 'u1@x.io', 'pro',  timestamptz '2024-01-05 12:00+00', null),
 (2, 'u2', 'u2@x.io', 'free', timestamptz '2024-01-03 10:00+00', null),
 (3, 'u3', 'u3@x.io', 'team', timestamptz '2023-12-30 00:00+00', timestamptz '2024-01-06 08:00+00'),
 (4, 'u4', 'u4@x.io', 'free', timestamptz '2024-01-04 01:00+00', timestamptz '2024-01-04 02:00+00')
) t(id, user_id, email, plan, valid_from, valid_to)
"""

HISTORY_EXPECTED = {  # window -> (userId, event, plan) sent for it
    "2024-01-01": [("u1", "Signed Up", "free"), ("u3", "Signed Up", "team")],
    "2024-01-02": [],
    "2024-01-03": [("u2", "Signed Up", "free")],
    "2024-01-04": [],
    "2024-01-05": [("u1", "Plan Changed", "pro")],
    "2024-01-06": [("u3", "Account Deleted", "team")],
    "2024-01-07": [],
}


def window_end(day: str) -> str:
    return f"2024-01-{int(day[-2:]) + 1:02d}T00:00:00.000000Z"


def events_by_window(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, str]]]:
    """Events grouped by the window whose end is their timestamp."""
    grouped: dict[str, list[tuple[str, str, str]]] = {day: [] for day in HISTORY_EXPECTED}
    ends = {window_end(day): day for day in HISTORY_EXPECTED}
    for event in events:
        day = ends[event["timestamp"]]
        grouped[day].append((event["userId"], event["event"], event["properties"]["plan"]))
    return {day: sorted(rows) for day, rows in grouped.items()}


def outgoing_events(
    state: SyncState, sync: SyncConfig, window: str | None = None
) -> list[OutgoingEvent]:
    """The events the events step would send, one by one."""
    return [event for run in iter_event_columns(state, sync, window) for event in run]
