"""The tests' quicker ephemeral instance is stamped exactly as Dagster stamps its own."""

from __future__ import annotations

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.storage import sql

from rudder_sync_tests import dagster_instance


def _stamps_and_tables(instance: DagsterInstance) -> list[object]:
    """Each in-memory storage's alembic_version rows and table names."""
    found: list[object] = []
    for storage in (instance.event_log_storage, instance.run_storage):
        with storage._engine.connect() as conn:  # type: ignore[attr-defined]
            found.append(conn.execute(db.text("select * from alembic_version")).fetchall())
            found.append(sorted(db.inspect(conn).get_table_names()))
    return found


def test_the_parsed_migrations_stamp_what_dagster_stamps(monkeypatch) -> None:
    quick = _stamps_and_tables(DagsterInstance.ephemeral())
    # Dagster's own stamp, as it is without the conftest's replacement
    from dagster._core.storage.event_log import in_memory as event_log_in_memory
    from dagster._core.storage.runs import in_memory as runs_in_memory

    assert event_log_in_memory.stamp_alembic_rev is dagster_instance._stamp_from_parsed_migrations
    monkeypatch.setattr(event_log_in_memory, "stamp_alembic_rev", sql.stamp_alembic_rev)
    monkeypatch.setattr(runs_in_memory, "stamp_alembic_rev", sql.stamp_alembic_rev)
    dagsters = _stamps_and_tables(DagsterInstance.ephemeral())
    assert quick == dagsters
    assert quick[0] and quick[0] == quick[2]  # one head revision, the same in both storages
