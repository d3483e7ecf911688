"""A fresh ephemeral Dagster instance for every run, without re-reading Dagster's migrations.

Each `run_sync` materializes on a fresh `DagsterInstance.ephemeral()`: the product reads the
instance (the last delivery, the anomaly history), so runs must not share one. Building one
costs ~0.2-0.3 s, almost all of it alembic parsing Dagster's ~90 migration files twice to stamp
the in-memory SQLite databases "head". The stamp writes one row; here the parsed migrations are
kept per process and the same row is written, so an instance is as fresh and as real as before.
"""

from __future__ import annotations

import functools
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.storage import sql
from dagster._core.storage.event_log import in_memory as event_log_in_memory
from dagster._core.storage.runs import in_memory as runs_in_memory


@functools.cache
def _scripts(config_file: str, script_location: str) -> ScriptDirectory:
    """Dagster's migrations for one alembic.ini, parsed once per process."""
    config = Config(config_file)
    config.set_main_option("script_location", script_location)
    return ScriptDirectory.from_config(config)


def _stamp_from_parsed_migrations(alembic_config: Config, conn: Any, rev: str = "head") -> None:
    """What `sql.stamp_alembic_rev` does (the alembic_version row at `rev`), parsing once."""
    scripts = _scripts(
        str(alembic_config.config_file_name),
        str(alembic_config.get_main_option("script_location")),
    )
    with sql._alembic_lock:
        MigrationContext.configure(conn).stamp(scripts, rev)


def stamp_in_memory_instances_from_parsed_migrations() -> None:
    """Make the in-memory storages of ephemeral instances stamp from the parsed migrations."""
    event_log_in_memory.stamp_alembic_rev = _stamp_from_parsed_migrations  # type: ignore[assignment]
    runs_in_memory.stamp_alembic_rev = _stamp_from_parsed_migrations  # type: ignore[assignment]
