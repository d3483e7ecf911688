"""The Dagster Component on the example `dg` project: `dg check`, parity with YAML, a real run,
and several components in one code location."""

from __future__ import annotations

import importlib
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, Definitions, build_sensor_context

from rudder_sync import RudderstackSyncComponent
from rudder_sync.config import ConfigError, load_config, parse_config
from rudder_sync.definitions import build_definitions
from rudder_sync.demo import DEMO_USERS

from .gateway import TestGateway
from .helpers import IDENTIFY_SYNC, WRITE_KEY, cli_env, rudderstack_for, seed_users, write_project

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dg_project"
DEFS_YAML = Path("src/rudder_demo/defs/user_sync/defs.yaml")
BIN = Path(sys.executable).parent


LoadProject = Callable[[Path], Definitions]


def _attributes() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLE / DEFS_YAML).read_text())["attributes"]


def _dg(*args: str, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the venv's `dg` in a project, offline, without touching the user's home or config."""
    env = cli_env(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RUDDER_SYNC_DEMO_DIR=str(tmp_path / "demo"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return subprocess.run(
        [str(BIN / "dg"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def load_project(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoadProject]:
    """Load the example (or a copy) in process through its `definitions.py`, as `dg` does."""

    def forget() -> None:
        for name in [n for n in sys.modules if n == "rudder_demo" or n.startswith("rudder_demo.")]:
            del sys.modules[name]

    def load(project: Path) -> Definitions:
        forget()
        monkeypatch.syspath_prepend(str(project / "src"))
        return importlib.import_module("rudder_demo.definitions").defs()

    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # keep examples/ clean
    monkeypatch.delenv("RUDDER_SYNC_CONFIG", raising=False)
    monkeypatch.delenv("RUDDERSTACK_DATA_PLANE_URL", raising=False)
    monkeypatch.delenv("RUDDERSTACK_WRITE_KEY", raising=False)
    for name in ("RS_EU_URL", "RS_EU_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield load
    forget()


def _copy_example(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("*.duckdb*", ".rudder_sync", "__pycache__")
    return Path(shutil.copytree(EXAMPLE, tmp_path / "dg_project", ignore=ignore))


def _summary(defs: Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()
    return {
        "assets": sorted(
            (k.to_user_string(), graph.get(k).group_name) for k in graph.get_all_asset_keys()
        ),
        "checks": sorted(k.to_user_string() for k in graph.asset_check_keys),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted((s.name, s.cron_schedule, s.job_name) for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(defs.resources or {}),
        "executor": getattr(defs.executor, "name", None),
    }


@pytest.mark.slow  # a CLI in a subprocess
def test_dg_check_yaml_and_defs_pass_on_the_example(tmp_path: Path) -> None:
    checked = _dg("check", "yaml", cwd=EXAMPLE, tmp_path=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All component YAML validated successfully." in checked.stdout
    loaded = _dg("check", "defs", "--use-active-venv", cwd=EXAMPLE, tmp_path=tmp_path)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "All definitions loaded successfully." in loaded.stdout


@pytest.mark.slow  # a CLI in a subprocess
def test_dg_check_yaml_reports_a_schema_error_at_its_line(tmp_path: Path) -> None:
    project = _copy_example(tmp_path)
    path = project / DEFS_YAML
    path.write_text(path.read_text().replace("primary_key: id", "primary_ky: id", 1))
    checked = _dg("check", "yaml", cwd=project, tmp_path=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "attributes.syncs.user_events.primary_ky" in checked.stdout
    assert "'primary_ky' was unexpected" in checked.stdout


@pytest.mark.slow  # a CLI in a subprocess
def test_dg_check_defs_fails_with_the_yaml_message(tmp_path: Path) -> None:
    project = _copy_example(tmp_path)
    path = project / DEFS_YAML
    text = path.read_text()
    path.write_text(text.replace("type: identify", "type: identify\n      events: {added: X}"))
    loaded = _dg("check", "defs", "--use-active-venv", cwd=project, tmp_path=tmp_path)
    assert loaded.returncode == 1, loaded.stdout + loaded.stderr
    assert "All component YAML validated successfully." in loaded.stdout  # schema-valid
    output = loaded.stdout + loaded.stderr
    assert "sync 'user_traits': key 'events' is for track syncs only" in output


def test_component_builds_what_the_yaml_path_builds(
    tmp_path: Path, load_project: LoadProject
) -> None:
    from_component = load_project(EXAMPLE)
    yaml_project = write_project(tmp_path, _attributes()["syncs"], users=0)
    from_yaml = build_definitions(yaml_project.config(), rudderstack_for(None))
    summary = _summary(from_component)
    assert summary == _summary(from_yaml)
    assert ("user_events/events", "user_events") in summary["assets"]
    assert summary["schedules"] == [("user_traits_schedule", "0 * * * *", "user_traits")]
    assert summary["checks"], "the sync assets carry their checks"
    # Paths in the example are templated from the project root.
    warehouse = from_component.resources["warehouse"]  # type: ignore[index]
    assert Path(warehouse.database) == EXAMPLE.resolve() / "warehouse.duckdb"


def test_component_in_python_and_relative_paths(tmp_path: Path) -> None:
    attributes = {"syncs": _attributes()["syncs"], "warehouse": "wh.duckdb"}
    component = RudderstackSyncComponent.from_attributes_dict(attributes=attributes)
    project = component.project(tmp_path)
    assert project == parse_config(attributes, base_dir=tmp_path)
    assert project.warehouse.path == tmp_path / "wh.duckdb"
    assert project.state == tmp_path / ".rudder_sync"
    in_python = RudderstackSyncComponent(syncs=_attributes()["syncs"], warehouse="wh.duckdb")
    assert in_python.project(tmp_path) == project


def test_materialize_a_sync_from_the_component(
    tmp_path: Path, load_project: LoadProject, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _copy_example(tmp_path)
    runpy.run_path(str(project / "create_warehouse.py"), run_name="__main__")
    assert (project / "warehouse.duckdb").exists()
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", gateway.url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    defs = load_project(project)
    result = defs.resolve_job_def("user_events").execute_in_process(
        instance=DagsterInstance.ephemeral()
    )
    assert result.success
    events = gateway.events  # every demo user but the one without an ID, as sign-ups
    assert len(events) == DEMO_USERS - 1
    assert {(e["type"], e["event"]) for e in events} == {("track", "User Signed Up")}
    assert (project / ".rudder_sync" / "user_events.duckdb").exists()
    assert gateway.schema_errors == []


BAD_SYNCS: dict[str, tuple[str, str, dict[str, Any]]] = {  # sync, its new name, changed keys
    "events on identify": ("user_traits", "user_traits", {"events": {"added": "X"}}),
    "unknown key": ("user_events", "user_events", {"evnts": {"added": "X"}}),
    "bad name": ("user_traits", "UserTraits", {}),
    "bad SQL": ("user_traits", "user_traits", {"model": "selec id from users"}),
}


@pytest.mark.parametrize("case", BAD_SYNCS)
def test_a_bad_sync_fails_loading_with_the_yaml_message(
    case: str, tmp_path: Path, load_project: LoadProject
) -> None:
    sync, name, change = BAD_SYNCS[case]
    syncs = dict(_attributes()["syncs"])
    syncs[name] = dict(syncs.pop(sync), **change)
    with pytest.raises(ConfigError) as from_yaml:
        load_config(write_project(tmp_path / "yaml", syncs, users=0).config_path)

    project = _copy_example(tmp_path)
    document = yaml.safe_load((project / DEFS_YAML).read_text())
    document["attributes"]["syncs"] = syncs
    (project / DEFS_YAML).write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(Exception) as from_component:
        load_project(project)
    cause = _config_error(from_component.value)
    assert str(cause) == str(from_yaml.value)
    if case == "events on identify":
        assert str(cause).startswith("sync 'user_traits': key 'events' is for track syncs only")


def test_duplicate_sync_names_fail_as_in_the_yaml_path(
    tmp_path: Path, load_project: LoadProject
) -> None:
    project = _copy_example(tmp_path)
    path = project / DEFS_YAML
    text = path.read_text()
    path.write_text(text + text[text.index("    user_traits:") :])
    with pytest.raises(Exception) as raised:
        load_project(project)
    message = str(_config_error(raised.value))
    assert message.startswith(f"{path}: line ")
    assert "duplicate key 'user_traits'" in message


def _config_error(error: BaseException) -> ConfigError:
    """The ConfigError behind Dagster's wrapping of a component's load error."""
    current: BaseException | None = error
    while current is not None and not isinstance(current, ConfigError):
        current = current.__cause__ or current.__context__
    assert isinstance(current, ConfigError), f"no ConfigError behind {error!r}"
    return current


# -- several components in one code location ----------------------------------------------------

EU_KEY = "eu-write-key"
# After `user_sync` in folder order. (Not `user_sync_eu`: `dg check yaml` 1.13.27 skips a folder
# whose name starts with a sibling's name.)
EU_DEFS_YAML = Path("src/rudder_demo/defs/users_eu/defs.yaml")


def _add_eu_component(project: Path, syncs: dict[str, Any] | None = None) -> Path:
    """A second component: its own warehouse, state folder, destination and syncs."""
    seed_users(project / "eu_warehouse.duckdb", 3)
    eu_sync = dict(IDENTIFY_SYNC, destination="eu", trigger={"sql": "select count(*) from users"})
    document = {
        "type": "rudder_sync.RudderstackSyncComponent",
        "attributes": {
            "warehouse": "{{ context.project_root }}/eu_warehouse.duckdb",
            "state": "{{ context.project_root }}/.rudder_sync_eu",
            "destinations": {
                "eu": {"data_plane_url": {"env": "RS_EU_URL"}, "write_key": {"env": "RS_EU_KEY"}}
            },
            "syncs": syncs or {"eu_users": eu_sync},
        },
    }
    path = project / EU_DEFS_YAML
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_two_components_load_into_one_code_location_and_run(
    tmp_path: Path, load_project: LoadProject, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _copy_example(tmp_path)
    runpy.run_path(str(project / "create_warehouse.py"), run_name="__main__")
    _add_eu_component(project)
    with TestGateway(write_key=EU_KEY) as eu:
        monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", gateway.url)
        monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
        monkeypatch.setenv("RS_EU_URL", eu.url)
        monkeypatch.setenv("RS_EU_KEY", EU_KEY)
        defs = load_project(project)
        summary = _summary(defs)
        # the first component (in folder order) keeps the plain keys; the second one's own
        # warehouse and state get its folder's name; the equal default destination is shared
        assert summary["resources"] == [
            "rudder_sync_io_manager",
            "rudder_sync_io_manager_users_eu",
            "rudderstack",
            "rudderstack_eu",
            "warehouse",
            "warehouse_users_eu",
        ]
        assert summary["jobs"] == ["eu_users", "user_events", "user_traits"]
        assert summary["sensors"] == ["eu_users_trigger", "rudder_sync_failures"]
        assert summary["executor"] == "in_process"

        for job in ("user_events", "eu_users"):
            result = defs.resolve_job_def(job).execute_in_process(
                instance=DagsterInstance.ephemeral()
            )
            assert result.success
        assert len(gateway.events) == DEMO_USERS - 1
        assert {e["type"] for e in gateway.events} == {"track"}
        assert sorted(e["userId"] for e in eu.events) == ["u1", "u2", "u3"]
        assert {e["type"] for e in eu.events} == {"identify"}
    assert (project / ".rudder_sync" / "user_events.duckdb").exists()
    assert (project / ".rudder_sync_eu" / "eu_users.duckdb").exists()
    assert not (project / ".rudder_sync" / "eu_users.duckdb").exists()

    # the trigger reads the second component's warehouse, under its key
    sensor = defs.get_repository_def().get_sensor_def("eu_users_trigger")
    context = build_sensor_context(resources=defs.resources)
    first = sensor.evaluate_tick(context)
    assert "first evaluation: recorded the answer" in (first.skip_message or "")
    assert "3" in (first.cursor or "")


def test_a_sync_name_in_two_components_fails_naming_both(
    tmp_path: Path, load_project: LoadProject
) -> None:
    project = _copy_example(tmp_path)
    eu_path = _add_eu_component(project, syncs={"user_traits": IDENTIFY_SYNC})
    with pytest.raises(Exception) as raised:
        load_project(project)
    message = str(_config_error(raised.value))
    assert message == (
        f"sync 'user_traits' is declared twice in this code location: in "
        f"{(project / DEFS_YAML).resolve()} and in {eu_path.resolve()}. Fix: rename one of them; "
        "a sync's name is its job name and asset key prefix, which must be unique in a code "
        "location."
    )


@pytest.mark.slow  # a CLI in a subprocess
def test_dg_check_yaml_checks_destinations(tmp_path: Path) -> None:
    project = _copy_example(tmp_path)
    path = _add_eu_component(project)
    checked = _dg("check", "yaml", cwd=project, tmp_path=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    path.write_text(path.read_text().replace("write_key:", "write_kye:"))
    checked = _dg("check", "yaml", cwd=project, tmp_path=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "attributes.destinations.eu" in checked.stdout
    assert "'write_kye' was unexpected" in checked.stdout
