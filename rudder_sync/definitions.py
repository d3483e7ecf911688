"""Assembles the Dagster definitions from the sync config named by RUDDER_SYNC_CONFIG.

Loaded by `dagster dev` (pyproject's [tool.dagster] and workspace.yaml) and by
`dagster job execute -m rudder_sync.definitions -j NAME`. `build_definitions` is the one factory
that both this module and the Dagster Component call.

Resource keys: `warehouse`, `rudderstack` (the default destination, RUDDERSTACK_* env vars),
`rudderstack_<name>` (each destination under `destinations:`) and `rudder_sync_io_manager`.
Several projects in one code location (several components) share a `CodeLocationResources`:
equal resources become one object under one key, different ones get keys of their own.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import BetaWarning, Definitions, EnvVar, definitions, in_process_executor
from pydantic import BaseModel

from .alerts.freshness import freshness_sensor
from .alerts.runs import run_failure_alerts
from .assets import build_sync_assets, build_sync_job
from .automation import build_failure_sensor, build_schedule, build_trigger_sensor
from .config import (
    DATA_PLANE_URL_ENV_VAR,
    DEFAULT_DESTINATION,
    IO_MANAGER_KEY,
    RUDDERSTACK_KEY,
    WAREHOUSE_KEY,
    WRITE_KEY_ENV_VAR,
    ConfigError,
    DeliveryConfig,
    DestinationConfig,
    ProjectConfig,
    SyncConfig,
    config_path_from_env,
    default_config_path,
    load_config,
)
from .dbt import bind_dbt
from .demo import REJECTED_ON_PURPOSE, demo_dir, ensure_demo_warehouse
from .io_manager import SyncOutputIOManager
from .rudderstack import RudderstackConfigError, RudderstackResource, batch_url
from .warehouses import DuckDBSettings, WarehouseResource, build_warehouse

if TYPE_CHECKING:
    from dagster_dbt import DagsterDbtTranslator

__all__ = [
    "DATA_PLANE_URL_ENV_VAR",
    "WRITE_KEY_ENV_VAR",
    "CodeLocationResources",
    "build_definitions",
    "destination_resource",
    "load_project",
    "rudderstack_from_env",
    "sync_definitions",
]


def load_project() -> ProjectConfig:
    """The user's config, or the packaged demo on its demo warehouse (created on first use)."""
    path = config_path_from_env()
    if path != default_config_path():
        return load_config(path)
    project = load_config(path)
    base = demo_dir()
    assert isinstance(project.warehouse, DuckDBSettings)
    warehouse = base / project.warehouse.path.name
    syncs = {
        name: sync.with_rejected_on_purpose(REJECTED_ON_PURPOSE)
        for name, sync in project.syncs.items()
    }
    project = project.model_copy(
        update={
            "warehouse": DuckDBSettings(path=warehouse),
            "state": base / project.state.name,
            "syncs": syncs,
        }
    )
    project._implicit_dry_run = True  # the demo without a data plane URL: a dry run, as ever
    ensure_demo_warehouse(warehouse)
    return project


def rudderstack_from_env(delivery: DeliveryConfig | None = None) -> RudderstackResource:
    """The default destination: RUDDERSTACK_DATA_PLANE_URL with RUDDERSTACK_WRITE_KEY, read
    through EnvVar; without a URL, a dry run. The URL is checked here, when the definitions load,
    so a typo fails before any run starts."""
    return destination_resource(DEFAULT_DESTINATION, delivery)


def destination_resource(
    destination: DestinationConfig, delivery: DeliveryConfig | None = None
) -> RudderstackResource:
    """A destination's resource: real delivery when its URL is set (the URL and the key read
    through EnvVar, so their values never reach Dagster's storage or UI), else a dry run.

    Checked when the definitions load: the URL's scheme, host and the plain-http rule, and a
    write key wherever there is a URL. The project's `delivery` settings apply to every
    destination.
    """
    delivery = delivery or DeliveryConfig()
    settings = delivery.model_dump()
    default = destination.name is None
    prefix = "" if default else f"destination '{destination.name}': "
    url_env, key_env = destination.url_env, destination.write_key.env
    if url_env is None:
        url, where = str(destination.data_plane_url), "key 'data_plane_url'"
    else:
        url, where = os.environ.get(url_env, ""), url_env
    if not url.strip():
        return RudderstackResource(**settings)
    dry_run = "unset it for a dry run" + ("" if default else " of the syncs that send there")
    try:
        batch_url(url, delivery.allow_insecure_http)
    except RudderstackConfigError as exc:
        unset = "" if url_env is None else f", or {dry_run}"
        raise ConfigError(
            f"{prefix}{where} is not a usable data plane URL: {exc}. Fix: set it to the data "
            "plane's base URL, e.g. https://yourdataplane.dataplane.rudderstack.com (plain "
            "http:// only for localhost, or with delivery: {allow_insecure_http: true})"
            f"{unset}."
        ) from None
    if not os.environ.get(key_env, "").strip():
        if default:
            raise ConfigError(
                f"{DATA_PLANE_URL_ENV_VAR} is set but {WRITE_KEY_ENV_VAR} is not. Fix: export the "
                "source's write key, or unset the data plane URL for a dry run."
            )
        unset = "" if url_env is None else f", or {dry_run}"
        raise ConfigError(
            f"{prefix}{where} is set but {key_env} (its write_key) is not. Fix: export "
            f"{key_env} with the write key of the destination's RudderStack source{unset}."
        )
    return RudderstackResource(
        data_plane_url=url.strip() if url_env is None else EnvVar(url_env),
        write_key=EnvVar(key_env),
        **settings,
    )


def sync_definitions(
    sync: SyncConfig, state_dir: Path, warehouse: WarehouseResource | None = None
) -> Definitions:
    """Everything one sync contributes: its assets and checks, job, schedule, trigger sensor and
    freshness alert sensor."""
    job = build_sync_job(sync)
    schedule = build_schedule(sync, job)
    sensors = [build_trigger_sensor(sync, job), freshness_sensor(sync, state_dir)]
    with warnings.catch_warnings():
        # Every asset passes backfill_policy (single-run backfills for partitioned syncs), a
        # parameter Dagster marks as beta: without this, each CLI call prints two lines per asset.
        warnings.filterwarnings(
            "ignore",
            message=r"Parameter `backfill_policy` of function `asset`",
            category=BetaWarning,
        )
        assets = build_sync_assets(sync, state_dir, warehouse)
    return Definitions(
        assets=assets,
        jobs=[job],
        schedules=[schedule] if schedule else [],
        sensors=[sensor for sensor in sensors if sensor is not None],
    )


class CodeLocationResources:
    """What the projects (components) of one code location share: resource keys, sync names.

    `Definitions.merge` accepts two resources under one key only when they are the very same
    object (dagster-io/dagster#22945). So a resource equal to one already added (same class and
    settings; an `EnvVar` by its name) is handed out as that object under its key, and one that
    differs gets a key of its own: `<key>_<namespace>` (the component's folder), then `_2`,
    `_3`... in the order the projects are added (for components, their folders' order). Two
    syncs of one name fail: the name is the job name and asset key prefix. The failure sensor,
    which watches every run of the code location, comes with the first project only.
    """

    def __init__(self) -> None:
        self._resources: dict[str, tuple[str, Hashable, Any]] = {}  # key -> base, print, value
        self._syncs: dict[str, str] = {}  # sync name -> the config that declares it
        self._sensor_owner: str | None = None

    @property
    def resources(self) -> dict[str, Any]:
        return {key: value for key, (_, _, value) in self._resources.items()}

    def add(self, key: str, resource: Any, namespace: str | None = None) -> tuple[str, Any]:
        """The key and the object to define `resource` under, `key` when free."""
        fingerprint = _fingerprint(resource)
        for taken, (base, seen, value) in self._resources.items():
            if base == key and seen == fingerprint:
                return taken, value
        candidates = [key] + ([f"{key}_{namespace}"] if namespace else [])
        chosen = next((c for c in candidates if c not in self._resources), None)
        number = 2
        while chosen is None:
            candidate = f"{candidates[-1]}_{number}"
            chosen = candidate if candidate not in self._resources else None
            number += 1
        self._resources[chosen] = (key, fingerprint, resource)
        return chosen, resource

    def owns_failure_sensor(self, where: str) -> bool:
        """Whether the project declared in `where` defines the failure sensor (the first one)."""
        self._sensor_owner = self._sensor_owner or where
        return self._sensor_owner == where

    def add_sync(self, name: str, where: str) -> None:
        declared = self._syncs.setdefault(name, where)
        if declared != where:
            raise ConfigError(
                f"sync '{name}' is declared twice in this code location: in {declared} and in "
                f"{where}. Fix: rename one of them; a sync's name is its job name and asset key "
                "prefix, which must be unique in a code location."
            )


def _fingerprint(value: Any) -> Hashable:
    """Equal settings, equal print: resources by class and fields, EnvVar by its name."""
    if isinstance(value, EnvVar):
        return ("env", value.env_var_name)
    if isinstance(value, BaseModel):
        fields = tuple(
            (name, _fingerprint(getattr(value, name))) for name in type(value).model_fields
        )
        return (type(value).__module__, type(value).__qualname__, fields)
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((repr(k), _fingerprint(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_fingerprint(v) for v in value))
    if isinstance(value, (str, int, float, bool, type(None), Path)):
        return (type(value).__name__, value)
    return ("object", id(value))  # not comparable by value: only the same object is equal


def namespace_of(text: str) -> str:
    """A resource key suffix from a folder path or name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "project"


def build_definitions(
    project: ProjectConfig,
    rudderstack: RudderstackResource | None = None,
    warehouse: WarehouseResource | None = None,
    *,
    destinations: Mapping[str, RudderstackResource] | None = None,
    code_location: CodeLocationResources | None = None,
    namespace: str | None = None,
    dbt_translator: DagsterDbtTranslator | None = None,
) -> Definitions:
    """All syncs of a project, with their resources, the executor and the failure sensor.

    `rudderstack` replaces the default destination (RUDDERSTACK_* env vars), `destinations`
    named ones, and `warehouse` the one the config describes (Python API). Pass one
    `code_location` to the projects of one code location, so that they share resources and keys.
    `dbt_translator` names the dbt assets that syncs on dbt models depend on, as your
    `@dbt_assets` do (default: dagster-dbt's `DagsterDbtTranslator()`).
    """
    shared = code_location if code_location is not None else CodeLocationResources()
    where = str(project.source or project.state)
    for name in project.syncs:
        shared.add_sync(name, where)
    unknown = sorted(set(destinations or {}) - set(project.destinations))
    if unknown:
        raise ConfigError(
            f"{where}: no destination '{unknown[0]}' under 'destinations' for the resource "
            "passed in. Fix: declare it in the config, or pass resources of declared ones only."
        )
    resources: dict[str, Any] = {}

    def add(key: str, resource: Any) -> str:
        final, value = shared.add(key, resource, namespace)
        resources[final] = value
        return final

    warehouse_key = add(WAREHOUSE_KEY, warehouse or build_warehouse(project.warehouse))
    io_key = add(IO_MANAGER_KEY, SyncOutputIOManager(directory=str(project.state / "outputs")))
    senders: dict[str | None, RudderstackResource] = {
        None: rudderstack or rudderstack_from_env(project.delivery)
    }
    for name, destination in project.destinations.items():  # every one is checked
        given = (destinations or {}).get(name)
        senders[name] = given or destination_resource(destination, project.delivery)
    used = {None} | {sync.destination for sync in project.syncs.values()}
    sender_keys = {
        name: add(
            RUDDERSTACK_KEY if name is None else project.destinations[name].resource_key, sender
        )
        for name, sender in senders.items()
        if name in used
    }

    def url_required(sync: SyncConfig) -> str | None:
        """The URL variable whose absence fails the sync's runs (the user's own config, a
        destination read from the environment, no `dry_run: true`)."""
        given = (
            rudderstack if sync.destination is None else (destinations or {}).get(sync.destination)
        )
        if sync.dry_run or project._implicit_dry_run or given is not None:
            return None
        return sync.destination_config.url_env if senders[sync.destination].dry_run else None

    syncs = [
        sync.bound(
            resource_keys={
                WAREHOUSE_KEY: warehouse_key,
                IO_MANAGER_KEY: io_key,
                RUDDERSTACK_KEY: sender_keys[sync.destination],
            }
        ).with_dbt(upstream=bind_dbt(sync.dbt_models, dbt_translator))
        for sync in project.syncs.values()
    ]
    syncs = [sync.requiring_url(url_required(sync)) for sync in syncs]
    sensors = [build_failure_sensor()] if shared.owns_failure_sensor(where) else []
    alerts_sensor = run_failure_alerts(syncs, project.state, namespace)  # alerts/runs.py
    return Definitions.merge(
        *(sync_definitions(sync, project.state, resources[warehouse_key]) for sync in syncs),
        Definitions(
            sensors=sensors + ([alerts_sensor] if alerts_sensor else []),
            resources=resources,
            executor=in_process_executor,
        ),
    )


@definitions
def defs() -> Definitions:
    """Built when Dagster loads this module (dagster dev, dagster job execute -m), not on import.

    A config error leads with our sentence: it is the first line on stderr, ahead of the
    loader's traceback, and the error is raised again from here without its chain or the
    config parser's frames, so the traceback ends with the same sentence.
    """
    try:
        return build_definitions(load_project())
    except ConfigError as exc:
        print(f"rudder_sync: {exc} {CHECK_HINT}", file=sys.stderr, flush=True)
        raise ConfigError(str(exc)) from None


CHECK_HINT = "Run `python -m rudder_sync check` to list every problem."
