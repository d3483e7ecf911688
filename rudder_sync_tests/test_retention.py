"""Bounded state (issue 23, item 4): `delivery_log_retention` prunes the delivery log.

Real runs of a real project against the test gateway, on a real state file (and on the real
PostgreSQL server for in-warehouse state). Time passes by ageing the logged rows through SQL on
the state between runs, as ten days would; a change still pending (rejected, quarantined) keeps
its key's history.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from rudder_sync.component import RudderstackSyncAttributes, RudderstackSyncComponent
from rudder_sync.config import ConfigError, load_config
from rudder_sync.state import state_path

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, Project, failure_text, rudderstack_for, sql, write_project
from .postgres import PgDatabase, write_pg_project
from .test_quarantine import REASON, bad_plan
from .test_resync import run_with, state_rows

LOG = "select pk, status from delivery_log order by pk, logged_at"
AGE_LOG = "update delivery_log set logged_at = logged_at - interval 10 day"


def _project(tmp_path: Path, project_keys: dict[str, Any], **sync_keys: Any) -> Project:
    """Users 1..3, user 2's events rejected by the gateway (quarantined after 2 attempts)."""
    project = write_project(
        tmp_path, {"traits": {**IDENTIFY_SYNC, "max_attempts": 2, **sync_keys}}, users=3
    )
    document = yaml.safe_load(project.config_path.read_text())
    project.config_path.write_text(yaml.safe_dump({**document, **project_keys}))
    sql(project.warehouse, "update users set plan = 'bad' where id = 2")
    return project


def _age_log(project: Project) -> None:
    """Ten days pass for what the state logged so far."""
    path = state_path(project.state_dir, "traits", dry_run=False)
    with duckdb.connect(str(path)) as conn:
        conn.execute(AGE_LOG)


def _run(project: Project, gateway: TestGateway) -> None:
    result = run_with(project, "traits", rudderstack_for(gateway.url))
    assert result.success, failure_text(result)


@pytest.mark.parametrize(
    ("project_keys", "sync_keys"),
    [({"delivery_log_retention": "2d"}, {}), ({}, {"delivery_log_retention": "48h"})],
    ids=["project_level", "sync_level"],
)
def test_old_rows_are_pruned_but_a_quarantined_change_keeps_its_history(
    tmp_path: Path, gateway: TestGateway, project_keys: dict, sync_keys: dict
) -> None:
    project = _project(tmp_path, project_keys, **sync_keys)
    gateway.reject_events_where(bad_plan, REASON)
    _run(project, gateway)
    assert state_rows(project, "traits", LOG) == [
        ("1", "delivered"),
        ("2", "rejected"),
        ("3", "delivered"),
    ]
    _age_log(project)
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")
    _run(project, gateway)
    # 1 and 3's rows of ten days ago are gone; 2 is quarantined now and keeps both attempts
    assert state_rows(project, "traits", LOG) == [
        ("1", "delivered"),
        ("2", "rejected"),
        ("2", "rejected"),
    ]
    assert state_rows(project, "traits", "select __rs_pk, __rs_attempts from pending") == [("2", 2)]

    # once its row is fixed and delivered, its old history goes with the next prune
    gateway.reject_events_where(lambda event: False, REASON)
    sql(project.warehouse, "update users set plan = 'free' where id = 2")
    _run(project, gateway)
    _age_log(project)
    sql(project.warehouse, "update users set plan = 'team' where id = 3")
    _run(project, gateway)
    assert state_rows(project, "traits", LOG) == [("3", "delivered")]


def test_a_pending_change_keeps_its_keys_history(tmp_path: Path, gateway: TestGateway) -> None:
    """A change rejected once (not quarantined) is still pending: its key's rows stay."""
    project = _project(tmp_path, {}, delivery_log_retention="1d", max_attempts=None)
    gateway.reject_events_where(bad_plan, REASON)
    _run(project, gateway)
    _age_log(project)
    _run(project, gateway)
    assert state_rows(project, "traits", LOG) == [("2", "rejected"), ("2", "rejected")]


def test_null_keeps_every_row(tmp_path: Path, gateway: TestGateway) -> None:
    project = _project(tmp_path, {"delivery_log_retention": "1d"}, delivery_log_retention=None)
    gateway.reject_events_where(bad_plan, REASON)
    _run(project, gateway)
    _age_log(project)
    sql(project.warehouse, "update users set plan = 'pro' where id = 1")
    _run(project, gateway)
    assert len(state_rows(project, "traits", LOG)) == 5


@pytest.mark.parametrize(
    ("where", "value"),
    [("project", "30 days"), ("sync", "1y"), ("sync", 0), ("project", "-1d")],
)
def test_a_bad_retention_fails_at_load_in_one_line(tmp_path: Path, where: str, value: Any) -> None:
    keys = {"delivery_log_retention": value}
    project = _project(
        tmp_path, keys if where == "project" else {}, **(keys if where == "sync" else {})
    )
    with pytest.raises(ConfigError) as caught:
        load_config(project.config_path)
    message = str(caught.value)
    assert "\n" not in message and "'delivery_log_retention'" in message
    assert "30d" in message and "null" in message
    assert ("sync 'traits'" in message) is (where == "sync")


def test_in_warehouse_state_is_pruned_too(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    pg.sql("update users set plan = 'bad' where id = 2")
    sync = dict(IDENTIFY_SYNC, max_attempts=2, delivery_log_retention="2d")
    project = write_pg_project(
        tmp_path, pg, {"traits": sync}, monkeypatch, state_schema="rudder_sync"
    )
    gateway.reject_events_where(bad_plan, REASON)
    log = "select pk, status from rudder_sync.traits__delivery_log order by pk, logged_at"
    _run(project, gateway)  # type: ignore[arg-type]
    assert pg.sql(log) == [("1", "delivered"), ("2", "rejected"), ("3", "delivered")]
    pg.sql(
        AGE_LOG.replace("delivery_log", "rudder_sync.traits__delivery_log").replace(
            "interval 10 day", "interval '10 days'"
        )
    )
    pg.sql("update users set plan = 'pro' where id = 1")
    _run(project, gateway)  # type: ignore[arg-type]
    assert pg.sql(log) == [("1", "delivered"), ("2", "rejected"), ("2", "rejected")]
    indexes = pg.sql("select indexname from pg_indexes where tablename = 'traits__delivery_log'")
    assert indexes == [("traits__delivery_log_time",)]


def test_the_component_takes_the_key_at_both_levels(tmp_path: Path) -> None:
    """The Component's top level takes it as the sync YAML does; its schema has it (a sync's
    own key comes from `SyncConfig`)."""
    syncs = {
        "traits": dict(IDENTIFY_SYNC),
        "kept": dict(IDENTIFY_SYNC, delivery_log_retention=None),
    }
    project = RudderstackSyncComponent(syncs=syncs, delivery_log_retention="12h").project(tmp_path)
    assert project.syncs["traits"].delivery_log_retention == timedelta(hours=12)
    assert project.syncs["kept"].delivery_log_retention is None
    default = RudderstackSyncComponent(syncs={"traits": dict(IDENTIFY_SYNC)}).project(tmp_path)
    assert default.syncs["traits"].delivery_log_retention == timedelta(days=30)
    assert "delivery_log_retention" in RudderstackSyncAttributes.model_json_schema()["properties"]
    with pytest.raises(ConfigError, match="delivery_log_retention"):
        RudderstackSyncComponent(syncs=syncs, delivery_log_retention="soon").project(tmp_path)
