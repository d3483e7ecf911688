"""Shared fixtures: a real RudderStack-like gateway per test."""

import gc
from collections.abc import Iterator

import pytest

from rudder_sync_tests.dagster_instance import stamp_in_memory_instances_from_parsed_migrations
from rudder_sync_tests.gateway import TestGateway

# Every run's fresh ephemeral instance, without alembic re-parsing Dagster's migrations each time.
stamp_in_memory_instances_from_parsed_migrations()

# Stand-ins that start a process of their own (Spark's JVM, the BigQuery emulator) make a test
# slow: `-m "not slow"` leaves their tests out of the inner loop.
SLOW_FIXTURES = {"spark_engine", "bigquery_engine"}
SLOW_STATE_ENGINES = {"snowflake", "redshift", "bigquery"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        # The in-warehouse scenario table on the Snowflake and Redshift stand-ins takes minutes
        # (fakesnow translates every statement): the full suite runs it; the inner loop keeps
        # the same table's PostgreSQL column.
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("state_engine") in SLOW_STATE_ENGINES:
            item.add_marker(pytest.mark.slow)
        # Tests sharing a module-scoped fixture (one costly set-up, e.g. a catalogue of runs)
        # run on one xdist worker, so the set-up is paid once rather than once per worker.
        grouped = item.get_closest_marker("xdist_group") is not None
        for name in () if grouped else getattr(item, "fixturenames", ()):
            definitions = getattr(item, "_fixtureinfo", None)
            defs = definitions.name2fixturedefs.get(name, ()) if definitions else ()
            if defs and defs[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
                break


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze the heap the imports built (Dagster, DuckDB, pyarrow: ~280k objects) out of the
    cyclic garbage collector's sight: each full collection, automatic or the tests' own
    `gc.collect()` before reading a state file, then walks only what the tests made since
    (~0.2 s less each). The delivery keeps a freeze it finds (delivery.py)."""
    gc.collect()
    gc.freeze()


@pytest.fixture
def gateway() -> Iterator[TestGateway]:
    """A fresh gateway on 127.0.0.1 (valid key "test-write-key"), stopped after the test."""
    with TestGateway() as running:
        yield running


# The vendor warehouses' stand-ins, one per test session (rudder_sync_tests/engines/).
from rudder_sync_tests.engines.bigquery import bigquery_engine  # noqa: E402, F401
from rudder_sync_tests.engines.databricks import spark_engine  # noqa: E402, F401
from rudder_sync_tests.engines.redshift import redshift_engine  # noqa: E402, F401
from rudder_sync_tests.engines.snowflake import snowflake_engine  # noqa: E402, F401
from rudder_sync_tests.engines.state import state_engine  # noqa: E402, F401 - per engine
from rudder_sync_tests.postgres import pg  # noqa: E402, F401 - a fixture: a fresh Postgres database
