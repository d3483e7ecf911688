"""Anomaly checks (issue 23 item 3): each run against the sync's own history, in real runs.

Every run gets a throwaway Dagster instance (as `dagster job execute` from cron does), so the
history the checks compare with can only come from the state folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetCheckEvaluation, ExecuteInProcessResult

from rudder_sync.anomaly import CHANGE_COUNT, FEED_STOPPED, ROW_COUNT, load_history
from rudder_sync.config import ConfigError, parse_config

from .alert_receivers import HttpReceiver
from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, Project, rudderstack_for, run_sync, sql, write_project

ANOMALY = {"window": 5, "max_deviation": 0.3, "quiet_runs": 2, "min_history": 3}
GUARD = {"max_removed_fraction": 0.9, "max_changed_fraction": 0.9}


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


def project_with(root: Path, http: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{http.url}/hooks/anomaly")
    sync = dict(IDENTIFY_SYNC, anomaly=ANOMALY, guard=GUARD)
    project = write_project(root, {"traits": sync}, users=100)
    document = yaml.safe_load(project.config_path.read_text())
    document["alerts"] = {
        "ui_url": "http://dagster.test:3000",
        "channels": {"pager": {"webhook": {"url": {"env": "ALERT_WEBHOOK_URL"}}}},
        "on": ["anomaly"],
    }
    project.config_path.write_text(yaml.safe_dump(document))
    return project


def checks(result: ExecuteInProcessResult) -> dict[str, AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def verdict(evaluation: AssetCheckEvaluation) -> Any:
    return evaluation.metadata["verdict"].value


def change_plans(project: Project, count: int, plan: str) -> None:
    """`count` users change plan: `count` changes at the next run."""
    sql(project.warehouse, f"update users set plan = '{plan}' where id <= {count}")


def test_a_model_that_suddenly_shrinks_fails_the_row_and_change_checks_and_alerts_once(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with(tmp_path, http, monkeypatch)
    rudderstack = rudderstack_for(gateway.url)
    first = run_sync(project, "traits", rudderstack)  # 100 rows, 100 added
    assert all(e.passed for e in checks(first).values())
    assert "fewer than 3" in verdict(checks(first)[ROW_COUNT])
    for run, plan in enumerate(("a", "b", "c")):  # 10 changes a run over 100 rows
        change_plans(project, 10, plan)
        usual = run_sync(project, "traits", rudderstack)
        assert all(e.passed for e in checks(usual).values()), run
    history = load_history(project.state_dir, "traits")
    assert [(r["model_rows"], r["changes"]) for r in history] == [(100, 100)] + [(100, 10)] * 3

    sql(project.warehouse, "delete from users where id > 60")  # 40 rows gone at once
    shrunk = run_sync(project, "traits", rudderstack)
    found = checks(shrunk)
    assert not found[ROW_COUNT].passed and not found[CHANGE_COUNT].passed
    assert found[FEED_STOPPED].passed
    assert found[ROW_COUNT].severity.value == "WARN"  # non-blocking: the run delivered
    assert shrunk.success and len({e["userId"] for e in gateway.events}) == 100
    assert verdict(found[ROW_COUNT]) == (
        "60 model rows, median of the last 4 runs 100 (band 70 to 130)"
    )
    assert verdict(found[CHANGE_COUNT]) == "40 changes, median of the last 4 runs 10 (band 7 to 13)"
    assert [r["model_rows"] for r in found[ROW_COUNT].metadata["history"].value] == [100] * 4
    (alert,) = [r.json() for r in http.on("/hooks/")]
    assert alert["condition"] == "anomaly" and alert["status"] == "firing"
    assert "row_count_anomaly: 60 model rows" in alert["what"]
    assert alert["run_url"] == f"http://dagster.test:3000/runs/{shrunk.run_id}"

    change_plans(project, 10, "d")  # still far from the usual row count: no second alert
    still = run_sync(project, "traits", rudderstack)
    assert not checks(still)[ROW_COUNT].passed
    assert len(http.on("/hooks/")) == 1


def test_a_feed_that_stops_producing_changes_fails_feed_stopped_then_recovers(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with(tmp_path, http, monkeypatch)
    rudderstack = rudderstack_for(gateway.url)
    run_sync(project, "traits", rudderstack)
    for plan in ("a", "b", "c"):
        change_plans(project, 10, plan)
        run_sync(project, "traits", rudderstack)
    quiet = run_sync(project, "traits", rudderstack)  # one quiet run: unusual, not stopped
    assert checks(quiet)[FEED_STOPPED].passed and not checks(quiet)[CHANGE_COUNT].passed
    (alert,) = [r.json() for r in http.on("/hooks/")]
    assert alert["status"] == "firing" and "change_count_anomaly: 0 changes" in alert["what"]
    stopped = run_sync(project, "traits", rudderstack)  # two in a row: stopped
    found = checks(stopped)
    assert not found[FEED_STOPPED].passed
    assert verdict(found[FEED_STOPPED]) == (
        "no changes in the last 2 runs, where the median before was 10"
    )
    assert len(http.on("/hooks/")) == 1  # the anomaly is still open: no second alert

    change_plans(project, 10, "e")
    recovered = run_sync(project, "traits", rudderstack)
    assert all(e.passed for e in checks(recovered).values())
    statuses = [r.json()["status"] for r in http.on("/hooks/")]
    assert statuses == ["firing", "resolved"]


def test_anomaly_keys_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'anomaly.window'.*Fix: e.g. 'anomaly: "):
        parse_config({"syncs": {"t": dict(IDENTIFY_SYNC, anomaly={"window": 1})}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'anomaly.windw'|windw"):
        parse_config({"syncs": {"t": dict(IDENTIFY_SYNC, anomaly={"windw": 5})}}, tmp_path)
    partitioned = dict(
        IDENTIFY_SYNC,
        anomaly={},
        partitions={"start": "2024-01-01", "cadence": "daily"},
        model="select * from users where updated_at < $partition_end",
    )
    with pytest.raises(ConfigError, match="key 'anomaly' is for unpartitioned syncs"):
        parse_config({"syncs": {"t": partitioned}}, tmp_path)


def test_a_dry_run_is_checked_but_not_recorded(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with(tmp_path, http, monkeypatch)
    rudderstack = rudderstack_for(gateway.url)
    run_sync(project, "traits", rudderstack)
    dry = run_sync(project, "traits", rudderstack, dry_run=True)
    assert {ROW_COUNT, CHANGE_COUNT, FEED_STOPPED} <= set(checks(dry))
    assert len(load_history(project.state_dir, "traits")) == 1
