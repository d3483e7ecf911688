"""No silent no-ops (issue 23 item 7): with the user's own config, a destination without URL fails
the run naming the variable, unless the YAML says `dry_run: true` (sync, destination or project)
or the run config asks for a dry run. The packaged demo keeps its dry run.

Real definitions (`build_definitions`, as `dagster job execute -m rudder_sync.definitions` loads
them), real in-process runs, a real gateway on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from rudder_sync import RudderstackSyncComponent
from rudder_sync.component import RudderstackSyncAttributes
from rudder_sync.config import ConfigError, load_config
from rudder_sync.definitions import build_definitions, load_project
from rudder_sync.state import state_path

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    WRITE_KEY,
    Project,
    cli_env,
    failure_text,
    job_execute,
    write_project,
)

VARIABLES = ("RUDDERSTACK_DATA_PLANE_URL", "RUDDERSTACK_WRITE_KEY", "RS_EU_URL", "RS_EU_KEY")
EU = {"eu": {"data_plane_url": {"env": "RS_EU_URL"}, "write_key": {"env": "RS_EU_KEY"}}}


@pytest.fixture(autouse=True)
def no_data_plane(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*VARIABLES, "RUDDER_SYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def project_with(root: Path, sync: dict[str, Any], **top: Any) -> Project:
    project = write_project(root, {"traits": sync}, users=3)
    document = yaml.safe_load(project.config_path.read_text())
    document.update(top)
    project.config_path.write_text(yaml.safe_dump(document))
    return project


def run_job(defs: Definitions, run_config: dict[str, Any] | None = None) -> ExecuteInProcessResult:
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("traits").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config or {}
    )
    result.run_logs = [e.user_message for e in instance.all_logs(result.run_id)]  # type: ignore[attr-defined]
    return result


def failure(result: ExecuteInProcessResult) -> str:
    """The failed step's message, without the exception's class."""
    return failure_text(result).removeprefix("dagster._core.definitions.events.Failure: ").strip()


def steps_done(result: ExecuteInProcessResult) -> list[str]:
    return [e.step_key or "" for e in result.all_events if e.is_step_success]


def test_a_missing_url_fails_the_run_at_its_first_step_naming_the_variable(
    tmp_path: Path,
) -> None:
    project = project_with(tmp_path, IDENTIFY_SYNC)
    result = run_job(build_definitions(project.config()))
    assert not result.success
    assert failure(result) == (
        "sync 'traits': RUDDERSTACK_DATA_PLANE_URL is not set, so nothing would be sent. Fix: "
        "export RUDDERSTACK_DATA_PLANE_URL and RUDDERSTACK_WRITE_KEY to deliver; for a dry run, "
        "add 'dry_run: true' to the sync (or its destination, or the whole config), or run with "
        "run config ops: {traits__events: {config: {dry_run: true}}}."
    )
    assert steps_done(result) == []  # the snapshot failed: no model read, no state written
    assert not project.state_dir.exists() or not any(project.state_dir.glob("traits*.duckdb"))


def test_run_config_dry_run_still_works_without_a_url(tmp_path: Path) -> None:
    project = project_with(tmp_path, IDENTIFY_SYNC)
    dry = {"ops": {"traits__events": {"config": {"dry_run": True}}}}
    result = run_job(build_definitions(project.config()), dry)
    assert result.success, failure_text(result)
    logs = "\n".join(result.run_logs)  # type: ignore[attr-defined]
    assert "DRY RUN for sync 'traits': run config dry_run is true" in logs
    assert state_path(project.state_dir, "traits", dry_run=True).exists()


@pytest.mark.parametrize("level", ["sync", "project", "destination"])
def test_dry_run_true_in_the_yaml_is_a_dry_run_even_with_a_url(
    tmp_path: Path, gateway: TestGateway, no_data_plane: pytest.MonkeyPatch, level: str
) -> None:
    """`dry_run: true` sends nothing even where the URL is set, and says why."""
    for name, value in (("RUDDERSTACK_DATA_PLANE_URL", gateway.url), ("RS_EU_URL", gateway.url)):
        no_data_plane.setenv(name, value)
    no_data_plane.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    no_data_plane.setenv("RS_EU_KEY", WRITE_KEY)
    sync = dict(IDENTIFY_SYNC, **({"dry_run": True} if level == "sync" else {}))
    top: dict[str, Any] = {"dry_run": True} if level == "project" else {}
    if level == "destination":
        sync["destination"] = "eu"
        top["destinations"] = {"eu": {**EU["eu"], "dry_run": True}}
    project = project_with(tmp_path, sync, **top)
    result = run_job(build_definitions(project.config()))
    assert result.success, failure_text(result)
    logs = "\n".join(result.run_logs)  # type: ignore[attr-defined]
    assert (
        "DRY RUN for sync 'traits': the config says dry_run: true, so events are built and "
        "validated but NOT sent. Remove dry_run from the YAML to deliver." in logs
    )
    assert gateway.requests == []
    assert state_path(project.state_dir, "traits", dry_run=True).exists()
    assert not state_path(project.state_dir, "traits", dry_run=False).exists()


def test_a_named_destination_without_url_fails_naming_its_own_variable(tmp_path: Path) -> None:
    project = project_with(tmp_path, dict(IDENTIFY_SYNC, destination="eu"), destinations=EU)
    result = run_job(build_definitions(project.config()))
    assert not result.success
    assert failure(result).startswith(
        "sync 'traits': RS_EU_URL is not set (its destination 'eu'), so nothing would be sent. "
        "Fix: export RS_EU_URL and RS_EU_KEY to deliver;"
    )


def test_the_demo_keeps_its_dry_run(tmp_path: Path, no_data_plane: pytest.MonkeyPatch) -> None:
    no_data_plane.setenv("RUDDER_SYNC_DEMO_DIR", str(tmp_path / "demo"))
    defs = build_definitions(load_project())
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("user_traits").execute_in_process(instance=instance)
    assert result.success
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "DRY RUN for sync 'user_traits': RUDDERSTACK_DATA_PLANE_URL is not set" in logs


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"dry_run": "yes"}, "key 'dry_run' must be true or false (got 'yes')"),
        (
            {"destinations": {"eu": {**EU["eu"], "dry_run": 1}}},
            "destination 'eu': key 'dry_run' must be true or false (got 1)",
        ),
        ({"dry_rnu": True}, "unknown key 'dry_rnu'. Fix: remove it (did you mean 'dry_run'?)"),
    ],
)
def test_dry_run_keys_are_checked_at_load(tmp_path: Path, top: Any, expected: str) -> None:
    project = project_with(tmp_path, IDENTIFY_SYNC, **top)
    with pytest.raises(ConfigError, match="Fix:") as caught:
        load_config(project.config_path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow  # dagster job execute in a subprocess
def test_a_forgotten_url_makes_dagster_job_execute_exit_non_zero(tmp_path: Path) -> None:
    project = project_with(tmp_path, IDENTIFY_SYNC)
    done = job_execute("traits", cli_env(RUDDER_SYNC_CONFIG=str(project.config_path)), tmp_path)
    assert done.returncode != 0
    assert "RUDDERSTACK_DATA_PLANE_URL is not set, so nothing would be sent" in done.stderr


def test_the_component_takes_dry_run_where_the_yaml_does(tmp_path: Path) -> None:
    attributes = {"syncs": {"traits": IDENTIFY_SYNC}, "dry_run": True, "destinations": EU}
    project = RudderstackSyncComponent.from_attributes_dict(attributes=attributes).project(tmp_path)
    assert project.dry_run and project.syncs["traits"].dry_run
    schema = RudderstackSyncAttributes.model_json_schema()
    jsonschema.validate(
        {**attributes, "destinations": {"eu": {**EU["eu"], "dry_run": True}}}, schema
    )
    with pytest.raises(jsonschema.ValidationError, match="'dry_rnu' was unexpected"):
        jsonschema.validate(
            {**attributes, "destinations": {"eu": {**EU["eu"], "dry_rnu": 1}}}, schema
        )
