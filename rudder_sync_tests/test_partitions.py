"""Partitioned syncs: a week of SCD-2 history replayed window by window, at historical times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rudder_sync.config import ConfigError, parse_config

from .gateway import TestGateway
from .helpers import (
    HISTORY,
    HISTORY_EXPECTED,
    HISTORY_SYNC,
    WRITE_KEY,
    Project,
    asset_metadata,
    cli_env,
    events_by_window,
    rudderstack_for,
    run_sync,
    sql,
    table_rows,
    window_end,
    write_project,
)


@pytest.fixture
def history(tmp_path: Path) -> Project:
    project = write_project(tmp_path, {"history": HISTORY_SYNC}, users=0)
    sql(project.warehouse, HISTORY)
    return project


def test_week_backfill_sends_exact_events_per_day_at_window_ends(
    history: Project, gateway: TestGateway
) -> None:
    result = run_sync(
        history,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-07"),
    )
    assert events_by_window(gateway.events) == HISTORY_EXPECTED
    assert gateway.schema_errors == []
    diff = asset_metadata(result, "history", "diff")
    assert (diff["added"], diff["changed"], diff["removed"]) == (3, 1, 1)
    events = asset_metadata(result, "history", "events")
    assert events["events_accepted"] == 5
    # Each window's own counts, never running totals.
    accepted = {row["window"]: row["accepted"] for row in table_rows(events["windows"])}
    assert accepted == {day: len(sent) for day, sent in HISTORY_EXPECTED.items()}
    logs = "\n".join(result.run_logs)
    assert "window 2024-01-03 done (3 of 7): 1 events accepted, 0 rejected; run so far: 3" in logs
    assert "window 2024-01-04 done (4 of 7): 0 events accepted" in logs
    diff_windows = table_rows(asset_metadata(result, "history", "diff")["windows"])
    assert [row["window"] for row in diff_windows] == list(HISTORY_EXPECTED)
    assert {row["window"]: row["to_send"] for row in diff_windows} == accepted


def test_rerunning_a_day_resends_identical_events(history: Project, gateway: TestGateway) -> None:
    run_sync(
        history,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-07"),
    )
    first = {e["messageId"]: e for e in gateway.events}
    run_sync(history, "history", rudderstack_for(gateway.url), partition_key="2024-01-05")
    (again,) = gateway.events[5:]
    assert again == first[again["messageId"]]
    assert again["event"] == "Plan Changed"


def test_a_window_depends_only_on_the_model_not_on_run_order(
    history: Project, tmp_path: Path, gateway: TestGateway
) -> None:
    run_sync(history, "history", rudderstack_for(gateway.url), partition_key="2024-01-06")
    alone = list(gateway.events)
    other = write_project(tmp_path / "other", {"history": HISTORY_SYNC}, users=0)
    sql(other.warehouse, HISTORY)
    with TestGateway() as second:
        run_sync(
            other,
            "history",
            rudderstack_for(second.url),
            partition_range=("2024-01-01", "2024-01-07"),
        )
        in_range = [e for e in second.events if e["timestamp"] == window_end("2024-01-06")]
    assert alone == in_range


def test_identify_and_timestamp_column_use_the_rows_time(
    tmp_path: Path, gateway: TestGateway
) -> None:
    sync = {
        "model": "select id, user_id, plan, valid_from from users_history where "
        "valid_from >= $partition_start and valid_from < $partition_end",
        "primary_key": "id",
        "type": "identify",
        "user_id": "user_id",
        "timestamp": "valid_from",
        "mapping": {"plan": "plan"},
        "partitions": {"start": "2024-01-03", "cadence": "daily"},
    }
    project = write_project(tmp_path, {"signups": sync}, users=0)
    sql(
        project.warehouse,
        HISTORY.replace("(1, 'u1', 'u1@x.io', 'pro'", "(5, 'u1', 'u1@x.io', 'pro'"),
    )
    run_sync(
        project,
        "signups",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-03", "2024-01-05"),
    )
    sent = sorted((e["userId"], e["timestamp"]) for e in gateway.events)
    assert sent == [
        ("u1", "2024-01-05T12:00:00.000000Z"),
        ("u2", "2024-01-03T10:00:00.000000Z"),
        ("u4", "2024-01-04T01:00:00.000000Z"),
    ]


def test_run_config_dry_run_counts_a_backfill_without_sending(
    history: Project, gateway: TestGateway
) -> None:
    result = run_sync(
        history,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-07"),
        dry_run=True,
    )
    assert gateway.requests == []
    events = asset_metadata(result, "history", "events")
    assert events["status"] == "dry_run" and events["events_accepted"] == 5
    windows = {row.pop("window"): row for row in table_rows(events["windows"])}
    assert windows["2024-01-05"] == {
        "added": 0,
        "changed": 1,
        "removed": 0,
        "accepted": 1,
        "rejected": 0,
    }
    assert sum(row["accepted"] for row in windows.values()) == 5
    logs = "\n".join(result.run_logs)
    assert "window 2024-01-05 done (5 of 7): 1 events validated, 0 rejected" in logs
    assert "rudderstack dry run: 1 events would be accepted" in logs
    # nothing was recorded as delivered: the real run sends everything
    run_sync(
        history,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-07"),
    )
    assert events_by_window(gateway.events) == HISTORY_EXPECTED


def test_failing_window_stops_the_run_and_names_it(history: Project, gateway: TestGateway) -> None:
    run_sync(
        history,
        "history",
        rudderstack_for(gateway.url),
        partition_range=("2024-01-01", "2024-01-02"),
    )
    gateway.fail_next(503, times=1000)
    result = run_sync(
        history,
        "history",
        rudderstack_for(gateway.url, retry_max_seconds=0.3),
        partition_range=("2024-01-03", "2024-01-07"),
        raise_on_error=False,
    )
    assert not result.success
    assert "window 2024-01-03 (1 of 5) failed" in "\n".join(result.run_logs)


def test_partitioned_and_unpartitioned_syncs_side_by_side(tmp_path: Path) -> None:
    from .helpers import IDENTIFY_SYNC

    project = write_project(tmp_path, {"history": HISTORY_SYNC, "traits": IDENTIFY_SYNC})
    config = project.config()
    assert config.syncs["history"].partitions is not None
    assert config.syncs["traits"].partitions is None


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ({"start": "2024-01-01", "cadence": "yearly"}, "partitions.cadence"),
        ({"start": "2024-01-01", "cadence": "daily", "timezone": "Mars/Olympus"}, "time zone"),
        ({"cadence": "daily"}, "partitions.start"),
    ],
)
def test_bad_partitions_fail_at_load(partitions: dict[str, Any], message: str) -> None:
    raw = {"syncs": {"history": dict(HISTORY_SYNC, partitions=partitions)}}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_partition_parameters_need_partitions() -> None:
    raw = {"syncs": {"history": {k: v for k, v in HISTORY_SYNC.items() if k != "partitions"}}}
    with pytest.raises(ConfigError, match=r"uses \$partition_end but the sync has no 'partitions'"):
        parse_config(raw)


@pytest.mark.slow
def test_cli_range_backfill_and_single_window(history: Project, gateway: TestGateway) -> None:
    dagster = str(Path(sys.executable).with_name("dagster"))
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(history.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    command = [
        dagster,
        "asset",
        "materialize",
        "-m",
        "rudder_sync.definitions",
        "--select",
        "history/snapshot,history/diff,history/events",
        "--partition-range",
        "2024-01-01...2024-01-07",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert events_by_window(gateway.events) == HISTORY_EXPECTED

    single = [
        dagster,
        "job",
        "execute",
        "-m",
        "rudder_sync.definitions",
        "-j",
        "history",
        "--tags",
        '{"dagster/partition": "2024-01-03"}',
    ]
    result = subprocess.run(single, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(e["userId"], e["event"]) for e in gateway.events[5:]] == [("u2", "Signed Up")]
