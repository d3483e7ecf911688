"""`python -m rudder_sync run`: the same runs as `dagster job execute`, from a faster command.

Each test runs both commands in subprocesses on twin projects (same config, same warehouse rows,
each moved to the same path for its command, each with a DAGSTER_HOME of its own: a sync checks
the instance's record of its deliveries), then reads the instances' run and event records: the
runner's runs must be the CLI's (status, tags, run config, code origin, snapshots, events,
materializations with their metadata keys, check results), and the gateways must receive the
same events.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    Project,
    cli_env,
    job_execute,
    sql,
    write_project,
)

pytestmark = pytest.mark.slow  # every test starts `python -m rudder_sync` in a subprocess

SCHEDULED = dict(TRACK_SYNC, send_initial_results=True)


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m rudder_sync run ARGS` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "rudder_sync", "run", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def home(tmp_path: Path, name: str = "dagster_home") -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    (path / "dagster.yaml").write_text("")
    return path


def env_for(project: Project, dagster_home: Path, gateway: TestGateway | None) -> dict[str, str]:
    extra = {"RUDDER_SYNC_CONFIG": str(project.config_path), "DAGSTER_HOME": str(dagster_home)}
    if gateway is not None:
        extra |= {"RUDDERSTACK_DATA_PLANE_URL": gateway.url, "RUDDERSTACK_WRITE_KEY": WRITE_KEY}
    return cli_env(**extra)


def run_record(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    """What the UI shows of a run, without what differs between any two runs (IDs, times)."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
    materialized: dict[str, list[str]] = {}
    checks: dict[tuple[str, str], tuple[bool, str]] = {}
    failures: list[str] = []
    for event in events:
        data = event.event_specific_data
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = data.materialization  # type: ignore[union-attr]
            key = materialization.asset_key.to_user_string()
            materialized[key] = sorted(materialization.metadata)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            key = (data.asset_key.to_user_string(), data.check_name)  # type: ignore[union-attr]
            checks[key] = (data.passed, str(data.severity))  # type: ignore[union-attr]
        elif event.event_type_value == "STEP_FAILURE":
            failures.append(data.error.cause.message if data.error.cause else data.error.message)  # type: ignore[union-attr]
    return {
        "job": run.job_name,
        "status": run.status,
        "tags": run.tags,
        "run_config": run.run_config,
        "code_origin": run.job_code_origin,
        "snapshots": (run.job_snapshot_id, run.execution_plan_snapshot_id),
        "event_types": [event.event_type_value for event in events],
        "materialized": materialized,
        "checks": checks,
        "failures": failures,
    }


def runs_of(dagster_home: Path) -> list[dict[str, Any]]:
    """Every run in the instance, oldest first."""
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        with DagsterInstance.get() as instance:
            return [run_record(instance, run.run_id) for run in reversed(instance.get_runs())]
    finally:
        if before is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = before


def delivered(gateway: TestGateway) -> list[tuple[Any, ...]]:
    """The events a gateway received, without their messageIds and times."""
    return sorted(
        (e["type"], e.get("event"), e.get("userId"), str(e.get("properties", e.get("traits"))))
        for e in gateway.events
    )


def twins(tmp_path: Path, syncs: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    """Two projects of the same syncs and rows, one for each command, kept aside: `at` moves one
    to `tmp_path / "project"` for its command, so both run at the same paths."""
    kept = []
    for name in ("for_dagster", "for_runner"):
        write_project(tmp_path / "project", syncs, users=3)
        kept.append((tmp_path / "project").rename(tmp_path / name))
    return kept[0], kept[1]


@contextmanager
def at(kept: Path) -> Iterator[Project]:
    """The twin `kept` at the projects' common path, for one command; put back after."""
    where = kept.parent / "project"
    kept.rename(where)
    try:
        yield Project(root=where, config_path=where / "rudder_sync.yaml")
    finally:
        where.rename(kept)


def test_run_records_and_delivers_what_dagster_job_execute_does(
    tmp_path: Path, gateway: TestGateway
) -> None:
    syncs = {
        "user_events": dict(TRACK_SYNC, send_initial_results=True),
        "user_traits": IDENTIFY_SYNC,
    }
    for_dagster, for_runner = twins(tmp_path, syncs)
    dagster_home, runner_home = home(tmp_path, "dagster_home"), home(tmp_path, "runner_home")
    with TestGateway() as runner_gateway:
        for change in (None, "update users set plan = 'team' where id = 3"):
            with at(for_dagster) as project:
                if change:
                    sql(project.warehouse, change)
                    sql(project.warehouse, "delete from users where id = 1")
                dagster = job_execute(
                    "user_events", env_for(project, dagster_home, gateway), tmp_path
                )
            assert dagster.returncode == 0, dagster.stderr[-3000:]
            with at(for_runner) as project:
                if change:
                    sql(project.warehouse, change)
                    sql(project.warehouse, "delete from users where id = 1")
                ours = run_cli(
                    env_for(project, runner_home, runner_gateway), tmp_path, "user_events"
                )
            assert ours.returncode == 0, ours.stderr[-3000:]
            assert ours.stdout.startswith("user_events: succeeded in "), ours.stdout
            assert WRITE_KEY not in ours.stdout + ours.stderr
        assert delivered(runner_gateway) == delivered(gateway)
        assert len(runner_gateway.events) == 5  # 3 added, then 1 changed and 1 removed
        assert runner_gateway.schema_errors == []

    dagster_runs, our_runs = runs_of(dagster_home), runs_of(runner_home)
    assert len(our_runs) == len(dagster_runs) == 2
    for dagster_run, our_run in zip(dagster_runs, our_runs, strict=True):
        assert our_run == dagster_run
        assert our_run["status"] == DagsterRunStatus.SUCCESS
        assert set(our_run["materialized"]) == {
            "user_events/snapshot",
            "user_events/diff",
            "user_events/events",
        }
        assert our_run["checks"] and all(passed for passed, _ in our_run["checks"].values())


def test_a_failing_run_prints_its_reason_on_one_line_and_exits_1(tmp_path: Path) -> None:
    broken = dict(IDENTIFY_SYNC, model="select * from no_such_table", dry_run=True)  # no URL
    for_dagster, for_runner = twins(tmp_path, {"user_traits": broken})
    dagster_home, runner_home = home(tmp_path, "dagster_home"), home(tmp_path, "runner_home")
    with at(for_dagster) as project:
        dagster = job_execute("user_traits", env_for(project, dagster_home, None), tmp_path)
    with at(for_runner) as project:
        ours = run_cli(env_for(project, runner_home, None), tmp_path, "user_traits")
    assert dagster.returncode != 0
    assert ours.returncode == 1
    assert ours.stdout.startswith("user_traits: failed in "), ours.stdout
    last = ours.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("sync 'user_traits': the model failed: Catalog Error: Table with name")
    assert "Traceback" not in ours.stderr

    (dagster_run,), (our_run,) = runs_of(dagster_home), runs_of(runner_home)
    assert our_run == dagster_run
    assert our_run["status"] == DagsterRunStatus.FAILURE
    assert last in our_run["failures"][0]


def test_due_runs_the_scheduled_syncs_once_per_tick_and_all_runs_every_sync(
    tmp_path: Path, gateway: TestGateway
) -> None:
    syncs = {
        "user_events": dict(TRACK_SYNC, schedule="0 0 1 1 *"),  # ticked on January 1st
        "user_traits": IDENTIFY_SYNC,  # no schedule: never due
    }
    project = write_project(tmp_path / "project", syncs, users=3)
    dagster_home = home(tmp_path)
    env = env_for(project, dagster_home, gateway)

    first = run_cli(env, tmp_path, "--due")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [line.split(":")[0] for line in first.stdout.splitlines()] == ["user_events"]
    again = run_cli(env, tmp_path, "--due")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == "no sync is due"

    everything = run_cli(env, tmp_path, "--all")
    assert everything.returncode == 0, everything.stderr[-3000:]
    assert [line.split(":")[0] for line in everything.stdout.splitlines()] == [
        "user_events",
        "user_traits",
    ]
    assert [run["job"] for run in runs_of(dagster_home)] == [
        "user_events",
        "user_events",
        "user_traits",
    ]


def test_usage_and_config_errors_are_one_line(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", {"user_traits": IDENTIFY_SYNC}, users=1)
    env = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path))
    unknown = run_cli(env, tmp_path, "no_such_sync")
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip() == "error: no sync 'no_such_sync' in the config. Syncs: user_traits"
    )

    bad = write_project(tmp_path / "bad", {"t": dict(IDENTIFY_SYNC, events={"added": "X"})}, 1)
    broken = run_cli(cli_env(RUDDER_SYNC_CONFIG=str(bad.config_path)), tmp_path, "t")
    assert broken.returncode == 1
    (line,) = broken.stderr.strip().splitlines()  # the definitions' own line, no traceback
    assert line.startswith("rudder_sync: sync 't': key 'events' is for track syncs only")

    no_home = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path), DAGSTER_HOME=str(tmp_path / "x"))
    homeless = run_cli(no_home, tmp_path, "user_traits")
    assert homeless.returncode == 1
    (line,) = homeless.stderr.strip().splitlines()
    assert line.startswith("error: the Dagster instance did not load: $DAGSTER_HOME")

    typo = tmp_path / "typo.yaml"
    typo.write_text("ops: {user_traits__events: {config: {dry_runn: true}}}\n")
    invalid = run_cli(env, tmp_path, "user_traits", "-c", str(typo))
    assert invalid.returncode == 1
    last = invalid.stderr.strip().splitlines()[-1]
    assert last.startswith("sync 'user_traits': invalid run config: ")
    assert "dry_runn" in last

    config = tmp_path / "run.yaml"
    config.write_text("ops: {user_traits__events: {config: {dry_run: true}}}\n")
    dry = run_cli(env, tmp_path, "user_traits", "-c", str(config), "--tags", '{"team": "growth"}')
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "DRY RUN" in dry.stderr


def test_help_imports_nothing_of_dagster(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from rudder_sync.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'pandas', "
        "'duckdb'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "python -m rudder_sync run" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
