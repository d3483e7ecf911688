"""The shell paths users rely on: `dagster job execute` and the README's demo command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .gateway import TestGateway
from .helpers import (
    DAGSTER,
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    cli_env,
    job_execute,
    sql,
    write_project,
)

pytestmark = pytest.mark.slow  # every test runs `dagster job execute` in a subprocess


def test_job_execute_twice_with_a_change_in_between(tmp_path: Path, gateway: TestGateway) -> None:
    sync = dict(TRACK_SYNC, send_initial_results=True)
    project = write_project(tmp_path, {"user_events": sync, "user_traits": IDENTIFY_SYNC}, users=3)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    first = job_execute("user_events", env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]

    sql(project.warehouse, "update users set plan = 'team' where id = 3")
    sql(project.warehouse, "delete from users where id = 1")
    second = job_execute("user_events", env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    later = sorted((e["userId"], e["event"]) for e in gateway.events[3:])
    assert later == [("u1", "User Deleted Account"), ("u3", "User Changed Subscription")]
    assert WRITE_KEY not in first.stdout + first.stderr + second.stdout + second.stderr
    assert gateway.schema_errors == []


def test_job_fails_at_load_time_on_a_config_error(tmp_path: Path) -> None:
    sync = dict(IDENTIFY_SYNC, events={"added": "X"})
    project = write_project(tmp_path, {"user_traits": sync}, users=1)
    result = job_execute(
        "user_traits", cli_env(RUDDER_SYNC_CONFIG=str(project.config_path)), tmp_path
    )
    assert result.returncode != 0
    sentence = "sync 'user_traits': key 'events' is for track syncs only"
    # Our sentence leads (after Dagster's own warning about the command, printed before our
    # code is imported) and ends the traceback, which has no chain and no config parser frames.
    lines = [line for line in result.stderr.splitlines() if "SupersessionWarning" not in line]
    first = next(line for line in lines if not line.startswith("  "))
    assert first.startswith(f"rudder_sync: {sentence}"), result.stderr[-3000:]
    assert first.endswith("Run `python -m rudder_sync check` to list every problem.")
    assert lines[-1].startswith(f"rudder_sync.errors.ConfigError: {sentence}")
    assert "rudder_sync/config.py" not in result.stderr
    assert "The above exception" not in result.stderr


def test_readme_demo_command_runs_end_to_end_as_a_dry_run(tmp_path: Path) -> None:
    env = cli_env(RUDDER_SYNC_DEMO_DIR=str(tmp_path / "demo"))
    selection = "group:user_events or group:user_traits"  # the README's quick start
    command = [
        DAGSTER,
        "asset",
        "materialize",
        "-m",
        "rudder_sync.definitions",
        "--select",
        selection,
    ]
    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "DRY RUN for sync 'user_events'" in output
    assert "would send (added)" in output and "RUN_SUCCESS" in output
    assert (tmp_path / "demo" / "demo_warehouse.duckdb").exists()
    assert (tmp_path / "demo" / "state" / "user_traits.dry_run.duckdb").exists()

    # a simulated day of changes, then only those changes are built
    subprocess.run([sys.executable, "-m", "rudder_sync.demo"], env=env, check=True, timeout=60)
    again = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0
    assert "added 3 (send 3)" in again.stdout + again.stderr
