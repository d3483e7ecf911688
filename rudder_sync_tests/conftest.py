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
# The fixtures that pick an engine by parameter (engines/state.py, test_append_state_engines.py):
# the stand-in's fixture is then asked for at run time, unseen by SLOW_FIXTURES.
ENGINE_PARAMS = ("state_engine", "append_engine")
#: the xdist group of the tests that need the JVM or the BigQuery emulator (see below)
ENGINES_GROUP = "engines"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        # The in-warehouse scenario table on the Snowflake and Redshift stand-ins takes minutes
        # (fakesnow translates every statement): the full suite runs it; the inner loop keeps
        # the same table's PostgreSQL column.
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if any(params.get(name) in SLOW_STATE_ENGINES for name in ENGINE_PARAMS):
            item.add_marker(pytest.mark.slow)
    _engines_group_only_for_slow_tests(items)
    for item in items:
        # Tests sharing a module-scoped fixture (one costly set-up, e.g. a catalogue of runs)
        # run on one xdist worker, so the set-up is paid once rather than once per worker.
        grouped = item.get_closest_marker("xdist_group") is not None
        for name in () if grouped else getattr(item, "fixturenames", ()):
            definitions = getattr(item, "_fixtureinfo", None)
            defs = definitions.name2fixturedefs.get(name, ()) if definitions else ()
            if defs and defs[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
                break


def _is_engines_group(mark: pytest.Mark) -> bool:
    return mark.name == "xdist_group" and mark.args[:1] == (ENGINES_GROUP,)


def _engines_group_only_for_slow_tests(items: list[pytest.Item]) -> None:
    """Keep the "engines" xdist group to the tests marked slow.

    The group puts the vendor engines' tests on one worker so that Spark's JVM and the BigQuery
    emulator start once. Those tests are all slow (SLOW_FIXTURES, their marks); the others use
    fakesnow's server and the Redshift proxy, which start in about a second, so they leave the
    group and spread over the workers (a module-scoped fixture of theirs still groups them
    below). The test files mark whole modules; here the mark moves from the module (or class)
    down to the slow tests only.
    """
    keep = [
        item
        for item in items
        if item.get_closest_marker("slow") is not None
        and any(_is_engines_group(mark) for mark in item.iter_markers("xdist_group"))
    ]
    for item in items:
        for node in item.listchain()[:-1]:
            node.own_markers[:] = [m for m in node.own_markers if not _is_engines_group(m)]
        item.own_markers[:] = [m for m in item.own_markers if not _is_engines_group(m)]
    for item in keep:
        item.add_marker(pytest.mark.xdist_group(ENGINES_GROUP))


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
