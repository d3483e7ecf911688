"""What the UI says about a sync's engine and state: asset kinds, the snapshot's `state`, a move.

Kinds are read from the definitions `dagster dev` loads; the state metadata and the move from
real runs on the real PostgreSQL server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, Definitions

from rudder_sync.config import load_config
from rudder_sync.definitions import build_definitions

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, asset_metadata, rudderstack_for, run_sync, write_project
from .postgres import SYNC_URL_ENV_VAR, PgDatabase, write_pg_project

SCHEMA = "rs_state"


def kinds(defs: Definitions, sync: str) -> dict[str, set[str]]:
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    return {step: set(specs[AssetKey([sync, step])].kinds) for step in ("snapshot", "diff")}


def test_kinds_name_the_engine_of_the_model_and_of_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    duck = write_project(tmp_path / "duck", {"users": IDENTIFY_SYNC}, users=1)
    defs = build_definitions(duck.config())
    assert kinds(defs, "users") == {"snapshot": {"duckdb"}, "diff": {"duckdb", "pandas"}}

    # The definitions only check the URL's form: no server is reached while they load.
    monkeypatch.setenv(SYNC_URL_ENV_VAR, "postgresql://u:p@127.0.0.1:9/db")
    for state_schema, diff in ((None, "duckdb"), (SCHEMA, "postgres")):
        extra = {"state_schema": state_schema} if state_schema else {}
        root = tmp_path / f"pg_{state_schema}"
        root.mkdir()
        config = root / "rudder_sync.yaml"
        warehouse = {"type": "postgres", "url": {"env": SYNC_URL_ENV_VAR}, **extra}
        config.write_text(
            yaml.safe_dump({"warehouse": warehouse, "syncs": {"users": IDENTIFY_SYNC}})
        )
        defs = build_definitions(load_config(config))
        assert kinds(defs, "users") == {"snapshot": {"postgres"}, "diff": {diff, "pandas"}}


def test_turning_on_state_schema_says_the_state_moved_and_where_it_is(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    project = write_pg_project(tmp_path, pg, {"users": IDENTIFY_SYNC}, monkeypatch)
    local = run_sync(project, "users", rudderstack_for(gateway.url))
    snapshot = asset_metadata(local, "users", "snapshot")
    assert snapshot["state"] == str(project.state_dir) and "state_moved" not in snapshot

    document = yaml.safe_load(project.config_path.read_text())
    document["warehouse"]["state_schema"] = SCHEMA
    project.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    moved = run_sync(project, "users", rudderstack_for(gateway.url))
    snapshot = asset_metadata(moved, "users", "snapshot")
    port = pg.url.split("@", 1)[1].split("/", 1)[0]
    where = f"postgres {port}/{pg.name} schema {SCHEMA} (users__*)"
    assert snapshot["state"] == where
    local_file = project.state_dir / "users.duckdb"
    assert snapshot["state_moved"] == f"moved its state from {local_file} into {where}"
    said = [line for line in moved.run_logs if "moved its state" in line]
    assert said == [
        f"sync 'users': moved its state from {local_file} into {where} (the warehouse sets "
        "'state_schema')"
    ]

    again = run_sync(project, "users", rudderstack_for(gateway.url))
    snapshot = asset_metadata(again, "users", "snapshot")
    assert snapshot["state"] == where and "state_moved" not in snapshot
    assert not [line for line in again.run_logs if "moved its state" in line]
    assert len(gateway.events) == 3  # the move sent nothing again
