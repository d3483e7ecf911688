"""Shared test helpers: a real DuckDB warehouse, a sync YAML, and real Dagster runs of a sync."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ProjectConfig, load_config
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.warehouses import build_warehouse

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
                f"{sync_name}__diff": {"config": {"approve_large_change": approve_large_change}},
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


def events_by(gateway_events: list[dict[str, Any]], key: str = "userId") -> dict[Any, list]:
    grouped: dict[Any, list] = {}
    for event in gateway_events:
        grouped.setdefault(event.get(key), []).append(event)
    return grouped
