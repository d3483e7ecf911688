"""Assembles the Dagster definitions from the sync config named by RUDDER_SYNC_CONFIG.

Loaded by `dagster dev` (pyproject's [tool.dagster] and workspace.yaml) and by
`dagster job execute -m rudder_sync.definitions -j NAME`. `sync_definitions` is the one factory
that both this module and the Dagster Component call.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dagster import BetaWarning, Definitions, EnvVar, definitions, in_process_executor

from .assets import IO_MANAGER_KEY, build_sync_assets, build_sync_job
from .automation import build_failure_sensor, build_schedule, build_trigger_sensor
from .config import (
    ConfigError,
    DeliveryConfig,
    ProjectConfig,
    SyncConfig,
    config_path_from_env,
    default_config_path,
    load_config,
)
from .demo import demo_dir, ensure_demo_warehouse
from .io_manager import SyncOutputIOManager
from .rudderstack import RudderstackConfigError, RudderstackResource, batch_url
from .warehouses import DuckDBSettings, WarehouseResource, build_warehouse

DATA_PLANE_URL_ENV_VAR = "RUDDERSTACK_DATA_PLANE_URL"
WRITE_KEY_ENV_VAR = "RUDDERSTACK_WRITE_KEY"


def load_project() -> ProjectConfig:
    """The user's config, or the packaged demo on its demo warehouse (created on first use)."""
    path = config_path_from_env()
    if path != default_config_path():
        return load_config(path)
    project = load_config(path)
    base = demo_dir()
    assert isinstance(project.warehouse, DuckDBSettings)
    warehouse = base / project.warehouse.path.name
    project = project.model_copy(
        update={"warehouse": DuckDBSettings(path=warehouse), "state": base / project.state.name}
    )
    ensure_demo_warehouse(warehouse)
    return project


def rudderstack_from_env(delivery: DeliveryConfig | None = None) -> RudderstackResource:
    """Real delivery when a data plane URL is set (secrets read through EnvVar), else a dry run.

    The URL is checked here, when the definitions load, so a typo fails before any run starts.
    """
    delivery = delivery or DeliveryConfig()
    settings = delivery.model_dump()
    url = os.environ.get(DATA_PLANE_URL_ENV_VAR, "").strip()
    if not url:
        return RudderstackResource(**settings)
    try:
        batch_url(url, delivery.allow_insecure_http)
    except RudderstackConfigError as exc:
        raise ConfigError(
            f"{DATA_PLANE_URL_ENV_VAR} is not a usable data plane URL: {exc}. Fix: set it to "
            "the data plane's base URL, e.g. https://yourdataplane.dataplane.rudderstack.com "
            "(plain http:// only for localhost, or with delivery: {allow_insecure_http: true}), "
            "or unset it for a dry run."
        ) from None
    if not os.environ.get(WRITE_KEY_ENV_VAR, "").strip():
        raise ConfigError(
            f"{DATA_PLANE_URL_ENV_VAR} is set but {WRITE_KEY_ENV_VAR} is not. Fix: export the "
            "source's write key, or unset the data plane URL for a dry run."
        )
    return RudderstackResource(
        data_plane_url=EnvVar(DATA_PLANE_URL_ENV_VAR),
        write_key=EnvVar(WRITE_KEY_ENV_VAR),
        **settings,
    )


def sync_definitions(sync: SyncConfig, state_dir: Path) -> Definitions:
    """Everything one sync contributes: its assets and checks, job, schedule and trigger sensor."""
    job = build_sync_job(sync)
    schedule = build_schedule(sync, job)
    trigger = build_trigger_sensor(sync, job)
    with warnings.catch_warnings():
        # Every asset passes backfill_policy (single-run backfills for partitioned syncs), a
        # parameter Dagster marks as beta: without this, each CLI call prints two lines per asset.
        warnings.filterwarnings(
            "ignore",
            message=r"Parameter `backfill_policy` of function `asset`",
            category=BetaWarning,
        )
        assets = build_sync_assets(sync, state_dir)
    return Definitions(
        assets=assets,
        jobs=[job],
        schedules=[schedule] if schedule else [],
        sensors=[trigger] if trigger else [],
    )


def shared_definitions(
    warehouse: WarehouseResource, state_dir: Path, rudderstack: RudderstackResource
) -> Definitions:
    """What all syncs of a project share: resources, the executor, the failure sensor."""
    return Definitions(
        sensors=[build_failure_sensor()],
        resources={
            "warehouse": warehouse,
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(state_dir / "outputs")),
        },
        executor=in_process_executor,
    )


def build_definitions(
    project: ProjectConfig,
    rudderstack: RudderstackResource,
    warehouse: WarehouseResource | None = None,
) -> Definitions:
    """All syncs of a project. `warehouse` replaces the one the config describes (Python API)."""
    return Definitions.merge(
        *(sync_definitions(sync, project.state) for sync in project.syncs.values()),
        shared_definitions(
            warehouse or build_warehouse(project.warehouse), project.state, rudderstack
        ),
    )


@definitions
def defs() -> Definitions:
    """Built when Dagster loads this module (dagster dev, dagster job execute -m), not on import."""
    project = load_project()
    return build_definitions(project, rudderstack_from_env(project.delivery))
