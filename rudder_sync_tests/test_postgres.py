"""Syncs on a real PostgreSQL server through ADBC: semantics, partitions, trigger, types, errors.

The server comes from `.ci/run` (see rudder_sync_tests/postgres.py); each test has its own database.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import SkipReason, build_sensor_context

from rudder_sync.config import ConfigError
from rudder_sync.definitions import build_definitions
from rudder_sync.warehouses import PostgresWarehouse, WarehouseError

from .gateway import TestGateway
from .helpers import (
    HISTORY_EXPECTED,
    HISTORY_SYNC,
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    asset_metadata,
    cli_env,
    events_by_window,
    job_execute,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)
from .postgres import SYNC_URL_ENV_VAR, PgDatabase, execute, with_database, write_pg_project

PASSWORD = "pg-test-pw-7c1e"  # the test server's password (see .ci/postgres)


def _failure(result: Any) -> str:
    return "\n".join(
        event.event_specific_data.error.message  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure
    )


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without their send time (`timestamp` defaults to when a change is first seen) and
    messageId (it includes the random salt of each state, so two states never share one)."""
    return sorted(
        ({k: v for k, v in e.items() if k not in ("timestamp", "messageId")} for e in events),
        key=repr,
    )


# -- the core semantics, compared with the same history on DuckDB -------------------------------

HISTORY_STEPS = [
    "update users set plan = 'pro' where id = 2",
    "delete from users where id = 3",
    "insert into users values (9, 'u9', 'a9', 'n@x.io', 'free', 'FR', now(), 'e9')",
    "insert into users values (10, null, null, 'noid@x.io', 'free', 'FR', now(), 'e10')",
    "insert into users values (null, 'u11', 'a11', 'nokey@x.io', 'free', 'FR', now(), 'e11')",
    "insert into users values (4, 'u4b', 'a4b', 'dup@x.io', 'free', 'FR', now(), 'e12')",
]


def _replay(run: Any, change: Any) -> list[list[dict[str, Any]]]:
    """Run a track and an identify sync, make the changes, run again: the events of each run."""
    sent = []
    for step in [None, *HISTORY_STEPS[:3], None, *HISTORY_STEPS[3:]]:
        if step is None:
            sent.append(run())
        else:
            change(step)
    sent.append(run())
    return sent


def test_postgres_sends_exactly_what_duckdb_sends(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = {
        "user_events": dict(copy.deepcopy(TRACK_SYNC), send_initial_results=True),
        "user_traits": copy.deepcopy(IDENTIFY_SYNC),
    }
    pg.seed_users(5)
    on_pg = write_pg_project(tmp_path / "pg", pg, syncs, monkeypatch)
    on_duckdb = write_project(tmp_path / "duckdb", syncs, users=5)

    def runner(project: Any, gateway: TestGateway) -> Any:
        def run() -> list[dict[str, Any]]:
            before = len(gateway.events)
            for name in syncs:
                run_sync(project, name, rudderstack_for(gateway.url))
            return gateway.events[before:]

        return run

    with TestGateway() as pg_gateway, TestGateway() as duckdb_gateway:
        from_pg = _replay(runner(on_pg, pg_gateway), pg.sql)
        from_duckdb = _replay(
            runner(on_duckdb, duckdb_gateway), lambda s: sql(on_duckdb.warehouse, s)
        )
        assert pg_gateway.schema_errors == []
    assert [len(run) for run in from_pg] == [10, 5, 0]  # 5 added + 5 identify; then 3 + 2
    assert [_comparable(run) for run in from_pg] == [_comparable(run) for run in from_duckdb]
    # the last run: the rows without an ID or key and the duplicated key were left out
    assert from_pg[2] == []


def test_rejected_rows_and_dry_run_on_postgres(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    project = write_pg_project(tmp_path, pg, {"traits": IDENTIFY_SYNC}, monkeypatch)
    pg.sql(
        "update users set user_id = null, anon_id = '  ' where id = 2",
        "insert into users values (3, 'u3b', 'a3b', 'x', 'free', 'DE', now(), 'e')",
        "insert into users values (null, 'u9', 'a9', 'x', 'free', 'DE', now(), 'e')",
    )
    dry = run_sync(project, "traits", rudderstack_for(gateway.url), dry_run=True)
    assert gateway.events == []
    assert asset_metadata(dry, "traits", "events")["status"] == "dry_run"
    result = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert [e["userId"] for e in gateway.events] == ["u1"]
    diff = asset_metadata(result, "traits", "diff")
    reasons = {row["key"]: row["reason"] for row in diff["rejected_sample"]}
    assert reasons["3"].startswith("duplicate primary key")
    assert reasons["(null)"] == "null primary key"
    assert reasons["2"].startswith("neither user ID nor anonymous ID")
    # a state deleted and rebuilt has a new random salt: the row goes out again under a
    # messageId RudderStack has not seen (it would drop a repeated one for days)
    first_id = gateway.events[0]["messageId"]
    (project.state_dir / "traits.duckdb").unlink()
    run_sync(project, "traits", rudderstack_for(gateway.url))
    assert gateway.events[1]["userId"] == "u1" and gateway.events[1]["messageId"] != first_id


def test_partitioned_backfill_binds_partition_parameters(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.sql(
        "create table users_history (id int, user_id text, email text, plan text, "
        "valid_from timestamptz, valid_to timestamptz)",
        """insert into users_history values
         (1, 'u1', 'u1@x.io', 'free', '2023-12-31 00:00+00', '2024-01-05 12:00+00'),
         (1, 'u1', 'u1@x.io', 'pro',  '2024-01-05 12:00+00', null),
         (2, 'u2', 'u2@x.io', 'free', '2024-01-03 10:00+00', null),
         (3, 'u3', 'u3@x.io', 'team', '2023-12-30 00:00+00', '2024-01-06 08:00+00'),
         (4, 'u4', 'u4@x.io', 'free', '2024-01-04 01:00+00', '2024-01-04 02:00+00')""",
    )
    # a comment and a string that mention the parameters are left alone
    model = HISTORY_SYNC["model"] + " and '$partition_end' <> 'x' -- $partition_start"
    project = write_pg_project(
        tmp_path, pg, {"history": dict(HISTORY_SYNC, model=model)}, monkeypatch
    )
    run_sync(project, "history", rudderstack_for(gateway.url), partition_range=EDGES)
    assert events_by_window(gateway.events) == HISTORY_EXPECTED
    assert gateway.schema_errors == []


EDGES = ("2024-01-01", "2024-01-07")


def test_trigger_sensor_runs_its_query_on_postgres(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.seed_users(2)
    trigger = {"sql": "select max(updated_at) as latest, count(*) as n from users"}
    project = write_pg_project(
        tmp_path, pg, {"traits": dict(IDENTIFY_SYNC, trigger=trigger)}, monkeypatch
    )
    defs = build_definitions(project.config(), rudderstack_for(None))
    sensor = defs.get_sensor_def("traits_trigger")
    warehouse = PostgresWarehouse(url=pg.url)

    def evaluate(cursor: str | None) -> tuple[Any, str | None]:
        context = build_sensor_context(cursor=cursor, resources={"warehouse": warehouse})
        return sensor(context), context.cursor

    first, cursor = evaluate(None)
    assert isinstance(first, SkipReason)
    unchanged, _ = evaluate(cursor)
    assert isinstance(unchanged, SkipReason) and "not changed" in (unchanged.skip_message or "")
    pg.sql("insert into users values (7, 'u7', 'a7', 'x', 'free', 'DE', now(), 'e')")
    fired, new_cursor = evaluate(cursor)
    assert fired.run_key.startswith("traits:") and new_cursor != cursor


# -- types ---------------------------------------------------------------------------------------

ALL_TYPES = """
create table all_types (
    id int primary key, user_id text,
    n numeric, n_int numeric, n_wide numeric(38, 15), n_scaled numeric(10, 2), n_nan numeric,
    n_inf numeric, n_scaled_nan numeric(5, 1), mon money,
    tz timestamptz, ts timestamp, d date, t time, ttz timetz, iv interval,
    jb jsonb, j json, u uuid, ints int[], texts text[], nums numeric[],
    mood mood, b bytea, f8 float8, f8_nan float8, f4 real, i8 bigint, i2 smallint,
    bo boolean, c char(3), vc varchar(10), ip inet, x xml, p point, r int4range
)
"""
ALL_VALUES = """
insert into all_types values (
    1, 'u1',
    12345.6789, 42, 12345678901234567890.123456789012345, 1.5, 'NaN',
    'Infinity', 'NaN', 12.34,
    '2024-01-02 03:04:05.123456+02', '2024-01-02 03:04:05', '2024-01-02', '01:02:03.5',
    '01:02:03+05', '1 day 2 hours 3 minutes',
    '{"a": [1, 2.5], "b": {"c": null}}', '{"x": 1}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '{1,2,NULL}', '{"a","b"}', '{1.50,2}', 'happy', '\\x00fffe', 0.1, 'NaN', 0.1,
    9223372036854775807, -3, true, 'ab', 'v', '10.0.0.1/32', '<a>1</a>', '(1,2)', '[1,5)'
)
"""
EXPECTED_PROPERTIES = {
    "n": 12345.6789,
    "n_int": 42,
    "n_wide": 12345678901234567890.123456789012345,
    "n_scaled": 1.5,
    "n_nan": None,
    "n_inf": None,
    "n_scaled_nan": None,
    "mon": 12.34,
    "tz": "2024-01-02T01:04:05.123456Z",
    "ts": "2024-01-02T03:04:05.000000Z",
    "d": "2024-01-02",
    "t": "01:02:03.500000",
    "ttz": "01:02:03+05",
    "iv": "P1DT2H3M",
    "jb": {"a": [1, 2.5], "b": {"c": None}},
    "j": {"x": 1},
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "ints": [1, 2, None],
    "texts": ["a", "b"],
    "nums": [1.5, 2],
    "mood": "happy",
    "b": "AP/+",
    "f8": 0.1,
    "f8_nan": None,
    "f4": 0.1,
    "i8": 9223372036854775807,
    "i2": -3,
    "bo": True,
    "c": "ab ",
    "vc": "v",
    "ip": "10.0.0.1/32",
    "x": "<a>1</a>",
    "p": "(1,2)",
    "r": "[1,5)",
}


def test_every_postgres_type_reaches_the_payload_by_the_documented_rules(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.sql("create type mood as enum ('sad', 'happy')", ALL_TYPES, ALL_VALUES)
    columns = list(EXPECTED_PROPERTIES)
    sync = {
        "model": f"select id, user_id, {', '.join(columns)} from all_types",
        "primary_key": "id",
        "type": "identify",
        "user_id": "user_id",
        "mapping": {c: c for c in columns},
    }
    project = write_pg_project(tmp_path, pg, {"types": sync}, monkeypatch)
    run_sync(project, "types", rudderstack_for(gateway.url))
    (event,) = gateway.events
    assert event["context"]["traits"] == EXPECTED_PROPERTIES
    body = gateway.requests[0].body or b""  # exact digits and scale on the wire, not a float's
    assert b'"n":12345.6789,"n_int":42,' in body
    assert b'"n_wide":12345678901234567890.123456789012345,' in body
    assert b'"n_scaled":1.50,' in body and b'"nums":[1.5,2]' in body  # unconstrained: JSON
    # a second run with nothing changed sends nothing: the normalised values hash the same
    run_sync(project, "types", rudderstack_for(gateway.url))
    assert len(gateway.events) == 1


def test_numeric_digits_are_exact_on_the_wire(pg: PgDatabase) -> None:
    warehouse = PostgresWarehouse(url=pg.url)
    with warehouse.read_model(
        "select 12345678901234567890.123456789012345::numeric as n, 'NaN'::numeric as nan, "
        "1.50::numeric(5,2) as s, 'NaN'::numeric(5,2) as s_nan"
    ) as reader:
        table = reader.read_all()
    assert table.column("n").to_pylist() == ["12345678901234567890.123456789012345"]
    assert table.column("nan").to_pylist() == [None]
    assert str(table.schema.field("n").type) == "extension<arrow.json>"
    assert [str(v) for v in table.column("s").to_pylist()] == ["1.50"]
    assert table.column("s_nan").to_pylist() == [None]
    assert str(table.schema.field("s").type) == "decimal128(5, 2)"


# -- errors: the run fails before any state moves, naming the warehouse, never the password -----


def _host_port(url: str) -> str:
    return url.split("@", 1)[1].split("/", 1)[0]


@pytest.mark.parametrize(
    "case",
    ["refused", "bad password", "no database", "unknown host", "model fails", "timeout", "writes"],
)
def test_warehouse_errors_fail_the_run_cleanly(
    tmp_path: Path,
    pg: PgDatabase,
    monkeypatch: pytest.MonkeyPatch,
    gateway: TestGateway,
    case: str,
) -> None:
    pg.seed_users(2)
    sync = dict(IDENTIFY_SYNC)
    url = pg.url
    warehouse: dict[str, Any] = {}
    host_port = _host_port(pg.url)
    expected = [f"postgres {host_port}/{pg.name}"]
    if case == "refused":
        url = pg.url.replace(host_port, "127.0.0.1:1")
        expected = ["postgres 127.0.0.1:1/", "Connection refused", "Fix: check the host and port"]
    elif case == "bad password":
        url = pg.url.replace(f":{PASSWORD}@", ":not-the-password@")
        expected += ["password authentication failed", "Fix: check the user and password"]
    elif case == "no database":
        url = with_database(pg.url, "no_such_database")
        expected = [f"postgres {host_port}/no_such_database", "does not exist"]
    elif case == "unknown host":
        url = pg.url.replace(host_port, "no-such-host.invalid:5432")
        expected = ["postgres no-such-host.invalid:5432/", "Fix: check the host name"]
    elif case == "model fails":
        sync["model"] = "select id, user_id, anon_id, email, plan from no_such_table"
        expected += ['relation "no_such_table" does not exist', "Fix: correct the model"]
    elif case == "timeout":
        sync["model"] = "select id, user_id, anon_id, email, plan from users, pg_sleep(5)"
        warehouse["statement_timeout_seconds"] = 0.5
        expected += ["statement timeout", "statement_timeout_seconds=0.5"]
    elif case == "writes":
        sync["model"] = (
            "with w as (insert into users (id) values (99) returning id) "
            "select u.id, user_id, anon_id, email, plan from users u, w"
        )
        expected += ["read-only transaction", "Fix: models run in a read-only transaction"]
    project = write_pg_project(tmp_path, pg, {"traits": sync}, None, **warehouse)
    monkeypatch.setenv(SYNC_URL_ENV_VAR, url)
    result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    assert not result.success
    message = _failure(result)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    logs = "\n".join(result.run_logs)
    assert PASSWORD not in message + logs and "not-the-password" not in message + logs
    assert gateway.events == []
    assert pg.sql("select count(*) from users where id = 99") == [(0,)]
    # fixed, the next run delivers everything: nothing was recorded by the failed one
    monkeypatch.setenv(SYNC_URL_ENV_VAR, pg.url)
    project = write_pg_project(tmp_path, pg, {"traits": IDENTIFY_SYNC}, None)
    run_sync(project, "traits", rudderstack_for(gateway.url))
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2"]


def test_a_connection_dropped_mid_stream_fails_the_run_and_the_next_run_works(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    pg.sql(
        "create table users as select g as id, 'u' || g as user_id, md5(g::text) as email "
        "from generate_series(1, 400000) g"
    )
    sync = {
        "model": "select id, user_id, email from users",
        "primary_key": "id",
        "type": "track",
        "user_id": "user_id",
        "mapping": {"email": "email"},
        "events": {"added": "Signed Up"},
        "guard": {"max_events": None},
    }
    project = write_pg_project(tmp_path, pg, {"big": sync}, monkeypatch)
    stop = threading.Event()

    def terminate_model_queries() -> None:
        while not stop.is_set():
            execute(
                pg.url,
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where query like 'COPY (select id, user_id, email from users)%' "
                "and pid <> pg_backend_pid()",
            )
            time.sleep(0.01)

    killer = threading.Thread(target=terminate_model_queries, daemon=True)
    killer.start()
    try:
        result = run_sync(project, "big", rudderstack_for(gateway.url), raise_on_error=False)
    finally:
        stop.set()
        killer.join()
    assert not result.success
    message = _failure(result)
    assert f"lost the connection to postgres {_host_port(pg.url)}/{pg.name}" in message
    assert "Fix: the connection to the warehouse failed, not the model" in message
    # the next run reads the whole model and records it as the baseline
    again = run_sync(project, "big", rudderstack_for(gateway.url))
    assert asset_metadata(again, "big", "diff")["model_rows"] == 400_000
    assert gateway.events == []


def test_a_model_that_fails_mid_stream_says_correct_the_model_not_a_dropped_connection(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    """ADBC raises the server's error mid-stream as an OSError, whatever it is: a division by
    zero at row 300,000 is the model's, and the fix is to correct it, not to run again."""
    sync = {
        "model": "select g as id, 'u' || g as user_id, 1 / (g - 300000) as ratio "
        "from generate_series(1, 400000) g",
        "primary_key": "id",
        "type": "identify",
        "user_id": "user_id",
        "mapping": {"ratio": "ratio"},
        "guard": {"max_events": None},
    }
    project = write_pg_project(tmp_path, pg, {"traits": sync}, monkeypatch)
    result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
    assert not result.success
    message = _failure(result)
    assert f"the model failed on postgres {_host_port(pg.url)}/{pg.name}" in message
    assert "division by zero" in message and "Fix: correct the model" in message
    assert "connection" not in message
    assert gateway.events == []


def _sql_ascii_database(pg: PgDatabase) -> PgDatabase:
    """A database of the test server in SQL_ASCII, where text is any bytes: the real way invalid
    UTF-8 reaches a client. Dropped with `pg`'s (its name is derived from it)."""
    name = f"{pg.name}_ascii"
    execute(
        with_database(pg.url, "postgres"),
        f"create database {name} encoding 'SQL_ASCII' template template0 "
        "lc_collate 'C' lc_ctype 'C'",
    )
    return PgDatabase(url=with_database(pg.url, name), name=name)


def test_invalid_utf8_text_names_the_column_and_the_row(
    tmp_path: Path, pg: PgDatabase, monkeypatch: pytest.MonkeyPatch, gateway: TestGateway
) -> None:
    """Issue 26 item 7: a raw DuckDB "Invalid unicode ... in segment statistics update" named
    neither. Latin-1 bytes in a SQL_ASCII database reach ADBC as they are."""
    ascii_db = _sql_ascii_database(pg)
    try:
        ascii_db.sql(
            "create table users (id int, user_id text, anon_id text, email text, plan text)",
            "insert into users select g, 'u' || g, 'a' || g, 'user' || g || '@x.io', 'free' "
            "from generate_series(1, 5) g",
            "update users set plan = E'caf\\xe9' where id = 3",  # moves to the end of the heap
        )
        sync = dict(IDENTIFY_SYNC, model="select id, user_id, anon_id, email, plan from users")
        project = write_pg_project(tmp_path, ascii_db, {"traits": sync}, monkeypatch)
        result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
        assert not result.success
        message = _failure(result)
        assert (
            f"sync 'traits': the model failed: the model returned text that is not valid UTF-8 "
            f"from postgres {_host_port(pg.url)}/{ascii_db.name}: column 'plan', row 5 of "
            "the result (counting from 1, in the order the server sent it): byte 0xe9 at byte 4 "
            "of the value. Fix: "
        ) in message
        # never the value itself (the database's random name may hold the letters)
        assert "caf" not in message.replace(ascii_db.name, "")
        assert gateway.events == []
        # the conversion the fix suggests works: the next run sends the text as UTF-8
        convert = "convert_from(convert(convert_to(plan, 'SQL_ASCII'), 'LATIN1', 'UTF8'), 'UTF8')"
        assert convert in message.replace('"plan"', "plan")
        sync["model"] = f"select id, user_id, anon_id, email, {convert} as plan from users"
        project = write_pg_project(tmp_path, ascii_db, {"traits": sync}, monkeypatch)
        assert run_sync(project, "traits", rudderstack_for(gateway.url)).success
        plans = {e["userId"]: e["context"]["traits"]["plan"] for e in gateway.events}
        assert plans == {"u1": "free", "u2": "free", "u4": "free", "u5": "free", "u3": "café"}

        # rows are counted across the stream's batches, and nested text is checked too
        warehouse = PostgresWarehouse(url=ascii_db.url)
        bad = "convert_from('\\xff'::bytea, 'SQL_ASCII')"
        for column, row in ((f"array['ok', {bad}]", 150_000), (bad, 299_999)):
            model = (
                f"select g, case when g = {row} then {column} end as late "
                "from generate_series(1, 300000) g"
            )
            with pytest.raises(WarehouseError) as info, warehouse.read_model(model) as reader:
                for _ in reader:
                    pass
            assert f"column 'late', row {row} of the result" in str(info.value)
    finally:
        execute(
            with_database(pg.url, "postgres"),
            f"drop database if exists {ascii_db.name} with (force)",
        )


def test_literal_password_in_the_yaml_is_refused_at_load_time(
    tmp_path: Path, pg: PgDatabase
) -> None:
    project = write_pg_project(tmp_path, pg, {"traits": IDENTIFY_SYNC})
    document = yaml.safe_load(project.config_path.read_text())
    document["warehouse"]["url"] = pg.url
    project.config_path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as info:
        project.config()
    assert "key 'url' embeds a password in the YAML" in str(info.value)
    assert "{env: PG_URL}" in str(info.value) and PASSWORD not in str(info.value)


def test_missing_env_var_names_the_variable_and_the_key(tmp_path: Path, pg: PgDatabase) -> None:
    project = write_pg_project(tmp_path, pg, {"traits": IDENTIFY_SYNC})
    os.environ.pop(SYNC_URL_ENV_VAR, None)
    with pytest.raises(ConfigError) as info:
        project.config()
    assert f"key 'url' reads environment variable {SYNC_URL_ENV_VAR}, which is not set" in str(
        info.value
    )


def test_warehouse_error_is_raised_directly_by_the_resource(pg: PgDatabase) -> None:
    warehouse = PostgresWarehouse(url=pg.url)
    with pytest.raises(WarehouseError) as info, warehouse.read_model("select * from nope"):
        pass
    assert f"/{pg.name}" in str(info.value) and PASSWORD not in str(info.value)


# -- the shell ------------------------------------------------------------------------------------

DAGSTER = str(Path(sys.executable).with_name("dagster"))


@pytest.mark.slow
def test_dagster_job_execute_twice_with_a_change_in_postgres_between(
    tmp_path: Path, pg: PgDatabase, gateway: TestGateway
) -> None:
    pg.seed_users(3)
    sync = dict(TRACK_SYNC, send_initial_results=True)
    project = write_pg_project(tmp_path, pg, {"user_events": sync})
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        **{SYNC_URL_ENV_VAR: pg.url},
    )

    def execute_job() -> subprocess.CompletedProcess[str]:
        done = job_execute("user_events", env, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first = execute_job()
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    pg.sql("update users set plan = 'team' where id = 3", "delete from users where id = 1")
    second = execute_job()
    later = sorted((e["userId"], e["event"]) for e in gateway.events[3:])
    assert later == [("u1", "User Deleted Account"), ("u3", "User Changed Subscription")]
    output = first.stdout + first.stderr + second.stdout + second.stderr
    assert PASSWORD not in output  # never the warehouse password
    assert WRITE_KEY not in output
