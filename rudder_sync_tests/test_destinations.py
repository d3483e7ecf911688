"""Several destinations: one model feeding several RudderStack sources, each its own resource.

Real gateways (two, each with its own write key), real Dagster runs of the syncs' jobs from the
definitions the YAML builds, real state files; the variables come from the environment, as in
production. A destination without a URL is a dry run for its syncs only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from rudder_sync.config import ConfigError, load_config
from rudder_sync.definitions import CodeLocationResources, build_definitions
from rudder_sync.rudderstack import RudderstackResource
from rudder_sync.state import state_path
from rudder_sync_tests.gateway import TestGateway
from rudder_sync_tests.helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    Project,
    cli_env,
    job_execute,
    sql,
    write_project,
)

PROD_KEY = "prod-write-key"
EU_KEY = "eu-write-key"
DESTINATIONS = {
    "production": {"data_plane_url": {"env": "RS_URL"}, "write_key": {"env": "RS_KEY"}},
    "eu": {"data_plane_url": {"env": "RS_EU_URL"}, "write_key": {"env": "RS_EU_KEY"}},
}
SYNCS = {  # one model, two RudderStack sources
    "users_prod": dict(IDENTIFY_SYNC, destination="production"),
    "users_eu": dict(IDENTIFY_SYNC, destination="eu"),
}
VARIABLES = ("RS_URL", "RS_KEY", "RS_EU_URL", "RS_EU_KEY")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*VARIABLES, "RUDDERSTACK_DATA_PLANE_URL", "RUDDERSTACK_WRITE_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def set_env(env: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        env.setenv(name, value)


@pytest.fixture
def two_gateways() -> Iterator[tuple[TestGateway, TestGateway]]:
    """Two RudderStack sources: production and EU, each accepting only its own write key."""
    with TestGateway(write_key=PROD_KEY) as prod, TestGateway(write_key=EU_KEY) as eu:
        yield prod, eu


def project_with(
    root: Path, syncs: dict[str, dict[str, Any]], destinations: Any = DESTINATIONS, users: int = 3
) -> Project:
    """A sync YAML with a `destinations` section, over `users` seeded rows."""
    project = write_project(root, syncs, users=users)
    document = yaml.safe_load(project.config_path.read_text())
    document["destinations"] = destinations
    project.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return project


def run_job(defs: Definitions, name: str) -> ExecuteInProcessResult:
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def(name).execute_in_process(instance=instance, raise_on_error=False)
    result.run_logs = [entry.user_message for entry in instance.all_logs(result.run_id)]  # type: ignore[attr-defined]
    return result


def events_metadata(result: ExecuteInProcessResult, sync: str) -> dict[str, Any]:
    materialization = result.asset_materializations_for_node(f"{sync}__events")[-1]
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def recorded_destination(project: Project, sync: str, dry_run: bool = False) -> str | None:
    path = state_path(project.state_dir, sync, dry_run=dry_run)
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("select value from meta where key = 'destination'").fetchall()
    return rows[0][0] if rows else None


def test_one_model_feeds_two_sources_each_with_its_own_events_and_state(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, two_gateways: tuple[TestGateway, TestGateway]
) -> None:
    prod, eu = two_gateways
    set_env(clean_env, RS_URL=prod.url, RS_KEY=PROD_KEY, RS_EU_URL=eu.url, RS_EU_KEY=EU_KEY)
    project = project_with(tmp_path, SYNCS)
    defs = build_definitions(project.config())

    resources = defs.resources or {}
    assert {"rudderstack", "rudderstack_production", "rudderstack_eu"} <= set(resources)
    eu_resource = resources["rudderstack_eu"]
    assert isinstance(eu_resource, RudderstackResource)
    # the secrets stay environment variables in the definitions (and so in Dagster's storage)
    assert eu_resource._convert_to_config_dictionary()["write_key"] == {"env": "RS_EU_KEY"}
    assert eu_resource._convert_to_config_dictionary()["data_plane_url"] == {"env": "RS_EU_URL"}

    for sync in SYNCS:
        result = run_job(defs, sync)
        assert result.success, "\n".join(result.run_logs)  # type: ignore[attr-defined]
        logs = "\n".join(result.run_logs)  # type: ignore[attr-defined]
        assert PROD_KEY not in logs and EU_KEY not in logs
        assert events_metadata(result, sync)["destination"] == (
            prod.url if sync == "users_prod" else eu.url
        )
    for gateway in (prod, eu):  # each source got every user once, as an identify
        assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
        assert {e["type"] for e in gateway.events} == {"identify"}
        assert gateway.schema_errors == []
    assert recorded_destination(project, "users_prod") == prod.url
    assert recorded_destination(project, "users_eu") == eu.url

    # each sync keeps its own state: a change reaches both sources once; a run of one sync
    # later sends nothing more to its source, whatever the other one did
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    assert run_job(defs, "users_eu").success
    assert [e["userId"] for e in eu.events[3:]] == ["u2"]
    assert len(prod.events) == 3
    assert run_job(defs, "users_prod").success
    assert [(e["userId"], e["context"]["traits"]["plan"]) for e in prod.events[3:]] == [
        ("u2", "pro")
    ]
    assert run_job(defs, "users_eu").success
    assert len(eu.events) == 4


def test_a_destination_without_url_is_a_dry_run_while_the_other_delivers(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, two_gateways: tuple[TestGateway, TestGateway]
) -> None:
    prod, eu = two_gateways
    # RS_EU_URL set but empty: no URL; the destination says dry_run: true (without it, its
    # syncs' runs fail naming RS_EU_URL: test_dry_runs.py)
    set_env(clean_env, RS_URL=prod.url, RS_KEY=PROD_KEY, RS_EU_URL="")
    destinations = {**DESTINATIONS, "eu": {**DESTINATIONS["eu"], "dry_run": True}}
    project = project_with(tmp_path, SYNCS, destinations)
    defs = build_definitions(project.config())
    assert (defs.resources or {})["rudderstack_eu"].dry_run  # type: ignore[union-attr]

    dry = run_job(defs, "users_eu")
    assert dry.success
    logs = "\n".join(dry.run_logs)  # type: ignore[attr-defined]
    assert (
        "DRY RUN for sync 'users_eu': the config says dry_run: true, so events are "
        "built and validated but NOT sent. Remove dry_run from the YAML to deliver." in logs
    )
    assert "RUDDERSTACK_DATA_PLANE_URL" not in logs
    assert events_metadata(dry, "users_eu")["status"] == "dry_run"
    assert prod.requests == [] and eu.requests == []
    # the dry run's state is kept apart from the real one
    assert state_path(project.state_dir, "users_eu", dry_run=True).exists()
    assert not state_path(project.state_dir, "users_eu", dry_run=False).exists()

    delivered = run_job(defs, "users_prod")
    assert delivered.success
    assert sorted(e["userId"] for e in prod.events) == ["u1", "u2", "u3"]
    assert eu.requests == []
    assert events_metadata(delivered, "users_prod")["status"] == "delivered"


def test_syncs_without_destination_use_the_default_variables(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, two_gateways: tuple[TestGateway, TestGateway]
) -> None:
    prod, eu = two_gateways
    set_env(
        clean_env,
        RUDDERSTACK_DATA_PLANE_URL=prod.url,
        RUDDERSTACK_WRITE_KEY=PROD_KEY,
        RS_EU_URL=eu.url,
        RS_EU_KEY=EU_KEY,
    )
    syncs = {"users_default": TRACK_SYNC | {"send_initial_results": True}, **SYNCS}
    del syncs["users_prod"]
    project = project_with(tmp_path, syncs, destinations={"eu": DESTINATIONS["eu"]})
    config = project.config()
    assert config.syncs["users_default"].rudderstack_key == "rudderstack"
    assert config.syncs["users_eu"].rudderstack_key == "rudderstack_eu"
    defs = build_definitions(config)
    assert run_job(defs, "users_default").success and run_job(defs, "users_eu").success
    assert {e["type"] for e in prod.events} == {"track"} and len(prod.events) == 3
    assert {e["type"] for e in eu.events} == {"identify"} and len(eu.events) == 3


# -- load-time errors: they name the sync or destination, the key and the fix -----------------


def load_error(tmp_path: Path, syncs: dict[str, Any], destinations: Any = DESTINATIONS) -> str:
    project = project_with(tmp_path, syncs, destinations, users=0)
    with pytest.raises(ConfigError) as caught:
        build_definitions(load_config(project.config_path))
    return str(caught.value)


def test_an_unknown_destination_is_refused_with_did_you_mean(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    message = load_error(
        tmp_path,
        {"users_eu": dict(IDENTIFY_SYNC, destination="europ")},
        {"europe": DESTINATIONS["eu"], "production": DESTINATIONS["production"]},
    )
    assert message == (
        "sync 'users_eu': key 'destination' is 'europ', which is not under 'destinations' "
        "(did you mean 'europe'?). Fix: use one of europe, production, or remove the key to "
        "send to RUDDERSTACK_DATA_PLANE_URL."
    )
    none = load_error(tmp_path / "none", {"users_eu": dict(IDENTIFY_SYNC, destination="eu")}, None)
    assert none.startswith(
        "sync 'users_eu': key 'destination' is 'eu', but the config has no "
        "'destinations' section. Fix: declare it"
    )


def test_a_literal_write_key_is_refused(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    literal = {"eu": {"data_plane_url": "https://eu.example.com", "write_key": "s3cr3t-key"}}
    message = load_error(tmp_path, SYNCS | {"users_prod": IDENTIFY_SYNC}, literal)
    assert message == (
        "destination 'eu': key 'write_key' is a secret written in the YAML. Fix: write "
        "'write_key: {env: RS_EU_WRITE_KEY}' and export RS_EU_WRITE_KEY instead."
    )
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    ("destination", "says"),
    [
        (
            {"data_plane_url": {"env": "RS_EU_URL"}, "write_kye": {"env": "RS_EU_KEY"}},
            "destination 'eu': unknown key 'write_kye'. Fix: remove it (did you mean "
            "'write_key'?).",
        ),
        (
            {"data_plane_url": {"env": "RS_EU_URL"}},
            "destination 'eu': key 'write_key' is missing. Fix: add 'write_key:'.",
        ),
        (
            {"data_plane_url": {"environment": "X"}, "write_key": {"env": "RS_EU_KEY"}},
            "destination 'eu': key 'data_plane_url' must be a value or {env: NAME}.",
        ),
        (
            {"data_plane_url": " ", "write_key": {"env": "RS_EU_KEY"}},
            "destination 'eu': key 'data_plane_url' is blank.",
        ),
    ],
)
def test_destination_keys_are_checked(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, destination: dict[str, Any], says: str
) -> None:
    assert says in load_error(tmp_path, {"users_eu": SYNCS["users_eu"]}, {"eu": destination})


def test_a_url_without_its_key_names_the_variable(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("RS_EU_URL", "https://eu.dataplane.rudderstack.com")
    message = load_error(tmp_path, SYNCS, DESTINATIONS)
    assert message == (
        "destination 'eu': RS_EU_URL is set but RS_EU_KEY (its write_key) is not. Fix: export "
        "RS_EU_KEY with the write key of the destination's RudderStack source, or unset it for "
        "a dry run of the syncs that send there."
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("htps://eu.dataplane.rudderstack.com", "must be an http(s) URL with a host"),
        ("http://eu.example.com", "refusing plain http to eu.example.com"),
        ("https://user:hunter2@eu.example.com", "must not contain credentials"),
    ],
)
def test_a_malformed_url_names_the_destination_and_its_variable(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, url: str, says: str
) -> None:
    set_env(clean_env, RS_EU_URL=url, RS_EU_KEY=EU_KEY)
    message = load_error(tmp_path, SYNCS, DESTINATIONS)
    assert message.startswith("destination 'eu': RS_EU_URL is not a usable data plane URL: ")
    assert says in message and "Fix: set it to the data plane's base URL" in message
    assert "hunter2" not in message and EU_KEY not in message


def test_delivery_settings_apply_to_every_destination(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    # plain http: needs the setting
    set_env(clean_env, RS_EU_URL="http://eu.example.com", RS_EU_KEY=EU_KEY)
    project = project_with(tmp_path, SYNCS, users=0)
    document = yaml.safe_load(project.config_path.read_text())
    document["delivery"] = {"allow_insecure_http": True, "max_in_flight": 2}
    project.config_path.write_text(yaml.safe_dump(document))
    resources = build_definitions(project.config()).resources or {}
    for key in ("rudderstack", "rudderstack_production", "rudderstack_eu"):
        assert resources[key].max_in_flight == 2  # type: ignore[union-attr]
    assert resources["rudderstack_eu"].allow_insecure_http  # type: ignore[union-attr]
    assert not resources["rudderstack_eu"].dry_run  # type: ignore[union-attr]
    assert resources["rudderstack_production"].dry_run  # type: ignore[union-attr]


# -- several projects in one code location -------------------------------------------------


def test_projects_share_equal_resources_and_key_different_ones_apart(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    first = project_with(tmp_path / "a", {"users_a": IDENTIFY_SYNC})
    second = project_with(tmp_path / "b", {"users_b": SYNCS["users_eu"]})
    location = CodeLocationResources()
    defs = Definitions.merge(
        build_definitions(first.config(), code_location=location, namespace="a"),
        build_definitions(second.config(), code_location=location, namespace="b"),
    )
    resources = defs.resources or {}
    assert sorted(resources) == [
        "rudder_sync_io_manager",
        "rudder_sync_io_manager_b",
        "rudderstack",  # the same default destination: one resource
        "rudderstack_eu",
        "warehouse",
        "warehouse_b",
    ]
    assert [s.name for s in defs.get_repository_def().sensor_defs] == ["rudder_sync_failures"]
    # a project equal to one already added adds no key
    third = project_with(tmp_path / "c", {"users_c": IDENTIFY_SYNC}, users=0)
    document = yaml.safe_load(third.config_path.read_text())
    document.update(warehouse=str(first.warehouse), state=str(first.state_dir))
    third.config_path.write_text(yaml.safe_dump(document))
    alone = build_definitions(third.config(), code_location=location, namespace="c")
    assert sorted(alone.resources or {}) == ["rudder_sync_io_manager", "rudderstack", "warehouse"]
    assert (alone.resources or {})["warehouse"] is resources["warehouse"]
    # the same project again (a reload) is no clash; another project's sync of the same name is
    build_definitions(second.config(), code_location=location, namespace="b")
    clash = project_with(tmp_path / "d", {"users_b": IDENTIFY_SYNC}, users=0)
    with pytest.raises(ConfigError) as twice:
        build_definitions(clash.config(), code_location=location, namespace="d")
    assert str(twice.value) == (
        f"sync 'users_b' is declared twice in this code location: in {second.config_path} and "
        f"in {clash.config_path}. Fix: rename one of them; a sync's name is its job name and "
        "asset key prefix, which must be unique in a code location."
    )


@pytest.mark.slow
def test_dagster_job_execute_delivers_to_a_named_destination(
    tmp_path: Path, two_gateways: tuple[TestGateway, TestGateway]
) -> None:
    prod, eu = two_gateways
    project = project_with(tmp_path, SYNCS)
    env = {k: v for k, v in cli_env().items() if k not in VARIABLES}
    env.update(RUDDER_SYNC_CONFIG=str(project.config_path), RS_EU_URL=eu.url, RS_EU_KEY=EU_KEY)
    done = job_execute("users_eu", env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert sorted(e["userId"] for e in eu.events) == ["u1", "u2", "u3"]
    assert prod.requests == []
    assert EU_KEY not in output
    assert recorded_destination(project, "users_eu") == eu.url
