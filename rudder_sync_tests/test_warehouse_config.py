"""The `warehouse:` section: types, `{env: NAME}`, secrets, dialect checks and parameter binding."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from rudder_sync.config import ConfigError, parse_config
from rudder_sync.definitions import build_definitions, rudderstack_from_env
from rudder_sync.warehouses import (
    DuckDBSettings,
    DuckDBWarehouse,
    PostgresSettings,
    PostgresWarehouse,
    WarehouseError,
    build_warehouse,
)
from rudder_sync.warehouses.sql import bind, named_parameters, statement_body

SYNC = {
    "model": "select 1 as id, 'u' as u",
    "primary_key": "id",
    "type": "identify",
    "user_id": "u",
}


def _parse(warehouse: Any, model: str | None = None, **sync: Any) -> Any:
    body = dict(SYNC, **sync)
    if model is not None:
        body["model"] = model
    return parse_config({"warehouse": warehouse, "syncs": {"s": body}}, base_dir=Path("/base"))


def test_a_string_is_a_duckdb_file_relative_to_the_yaml() -> None:
    config = _parse("wh.duckdb")
    assert config.warehouse == DuckDBSettings(path=Path("/base/wh.duckdb"))
    assert _parse({"type": "duckdb", "path": "/abs/x.duckdb"}).warehouse.path == Path(
        "/abs/x.duckdb"
    )


def test_env_values_become_envvars_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://sync:s3cret-pw@db.example.com:5432/analytics?sslmode=require"
    monkeypatch.setenv("PG_URL", url)
    config = _parse({"type": "postgres", "url": {"env": "PG_URL"}, "statement_timeout_seconds": 60})
    assert isinstance(config.warehouse, PostgresSettings)
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()
    resource = build_warehouse(config.warehouse)
    assert isinstance(resource, PostgresWarehouse)
    assert resource.statement_timeout_seconds == 60
    # Dagster stores the variable's name, not its value
    defs = build_definitions(config, rudderstack_from_env())
    stored = defs.get_repository_def().get_top_level_resources()["warehouse"]
    assert "s3cret" not in repr(stored)
    assert resource.process_config_and_initialize().describe() == (
        "postgres db.example.com:5432/analytics"
    )


@pytest.mark.parametrize(
    ("warehouse", "expected"),
    [
        (
            {"type": "postgress", "url": "x"},
            ["key 'type' is 'postgress'", "did you mean 'postgres'"],
        ),
        ({"url": "x"}, ["key 'type' is None", "Fix: use one of duckdb, postgres"]),
        ({"type": "postgres", "ulr": "x"}, ["unknown key 'ulr'", "did you mean 'url'?"]),
        ({"type": "postgres"}, ["key 'url'", "Field required"]),
        (
            {"type": "postgres", "url": "postgresql://u:pw@h/db"},
            ["key 'url' embeds a password in the YAML", "{env: PG_URL}"],
        ),
        (
            {"type": "postgres", "url": "postgresql://u@h/db?password=pw"},
            ["key 'url' embeds a password"],
        ),
        ({"type": "postgres", "url": "mysql://h/db"}, ["key 'url' is not a libpq URI"]),
        (
            {"type": "postgres", "url": {"env": "RUDDER_SYNC_SURELY_UNSET"}},
            ["key 'url' reads environment variable RUDDER_SYNC_SURELY_UNSET, which is not set"],
        ),
        ({"type": "postgres", "url": {"enb": "X"}}, ["key 'url' must be a value or {env: NAME}"]),
        (
            {"type": "postgres", "url": "postgresql://h/db", "statement_timeout_seconds": 0},
            ["key 'statement_timeout_seconds'", "greater than 0"],
        ),
        (
            {"type": "redshift", "host": "h", "database": "d", "user": "u", "password": "pw"},
            ["key 'password' is a secret written in the YAML", "{env: PASSWORD}"],
        ),
        (
            {"type": "databricks", "server_hostname": "h", "http_path": "/p", "access_token": "t"},
            ["key 'access_token' is a secret"],
        ),
        (7, ["expected a DuckDB file path or a mapping with 'type'"]),
        (
            {"type": "postgres", "url": "postgresql://h/db", "state_schema": "Rudder-Sync"},
            ["key 'state_schema' is 'Rudder-Sync'", "lower-case identifier"],
        ),
        (
            {"type": "duckdb", "path": "w.duckdb", "state_schema": "rudder_sync"},
            ["key 'state_schema'", "not on duckdb", "remove 'state_schema'"],
        ),
        (
            {
                "type": "databricks",
                "server_hostname": "h",
                "http_path": "/p",
                "access_token": {"env": "HOME"},
                "state_schema": "Rudder-Sync",
            },
            ["key 'state_schema' is 'Rudder-Sync'", "lower-case identifier"],
        ),
        (
            {
                "type": "snowflake",
                "account": "a",
                "user": "u",
                "password": {"env": "HOME"},
                "state_schema": "rudder_sync",
            },
            ["key 'state_schema' needs 'database'", "database: ANALYTICS"],
        ),
        (
            {
                "type": "redshift",
                "host": "h",
                "database": "d",
                "user": "u",
                "password": {"env": "HOME"},
                "state_schema": "Rudder",
            },
            ["key 'state_schema' is 'Rudder'", "lower-case identifier"],
        ),
        (
            {"type": "bigquery", "project": "p", "state_schema": "Rudder.Sync"},
            ["key 'state_schema' is 'Rudder.Sync'", "lower-case identifier"],
        ),
    ],
)
def test_bad_warehouse_sections_name_the_key_and_the_fix(
    warehouse: Any, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(warehouse)
    message = str(info.value)
    assert message.startswith("sync config: warehouse: ")
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "u:pw@" not in message and "password=pw" not in message  # never the secret


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("select 1 as id; select 2", "must be exactly one query, found 2 statements"),
        ("delete from users", "must be a SELECT query, not DELETE"),
        ("selct id from users", "must be a SELECT query, not SELCT"),
        ("select 'unterminated from users", "is not valid SQL"),
        ("select id from t where d < $partition_end", "uses $partition_end but the sync has no"),
        ("select id from t where d < $when", "uses unknown parameter $when"),
    ],
)
def test_postgres_models_are_checked_in_their_dialect(
    model: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_URL", "postgresql://h/db")
    with pytest.raises(ConfigError) as info:
        _parse({"type": "postgres", "url": {"env": "PG_URL"}}, model=model)
    assert expected in str(info.value) and "sync 's': key 'model'" in str(info.value)


@pytest.mark.parametrize(
    "model",
    [
        # Postgres-only syntax DuckDB's parser would not judge the same way
        "select distinct on (id) id, u from t order by id, updated_at desc",
        "select id, u, payload->>'plan' as plan from t where tags @> array['x']",
        "select id, u from t where name ilike 'a%' and note = $$it's $partition_end$$",
        "with recent as (select * from t) select id, u from recent -- trailing comment",
        "(select id, u from t)",
    ],
)
def test_valid_postgres_models_load(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_URL", "postgresql://h/db")
    assert _parse({"type": "postgres", "url": {"env": "PG_URL"}}, model=model).syncs["s"]


def test_parameters_are_bound_per_driver_never_pasted() -> None:
    sql = (
        "select * from t where a >= $partition_start and b < $partition_end "
        "and c > $partition_start and note <> '$partition_end' -- $partition_start\n"
        "and pct like '10%'"
    )
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    params = {"partition_start": start, "partition_end": end}
    assert named_parameters(sql) == ["partition_start", "partition_end"]
    numeric, args = bind(sql, params, "numeric")
    assert "a >= $1 and b < $2 and c > $1" in numeric and args == [start, end]
    assert "'$partition_end' -- $partition_start" in numeric
    formatted, args = bind(sql, params, "format")
    assert "a >= %s and b < %s and c > %s" in formatted and args == [start, end, start]
    assert "'10%%'" in formatted
    qmark, args = bind(sql, params, "qmark")
    assert "a >= ? and b < ? and c > ?" in qmark and len(args) == 3
    assert "'10%'" in qmark
    named, values = bind(sql, params, "at")
    assert "a >= @partition_start and b < @partition_end" in named
    assert values == params
    colon, _ = bind(sql, params, "colon")
    assert "c > :partition_start" in colon
    pyformat, _ = bind(sql, params, "pyformat")
    assert "b < %(partition_end)s" in pyformat and "'10%%'" in pyformat
    assert str(start) not in numeric + formatted + named


def test_duckdb_statement_timeout_cancels_a_slow_model(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "wh.duckdb"
    duckdb.connect(str(path)).close()
    warehouse = DuckDBWarehouse(database=str(path), statement_timeout_seconds=0.2)
    slow = "select count(*) from range(1000000000) a, range(1000) b"
    with pytest.raises(WarehouseError) as info, warehouse.read_model(slow) as reader:
        reader.read_all()
    assert "statement_timeout_seconds=0.2" in str(info.value)


def test_python_api_takes_a_warehouse_resource(tmp_path: Path) -> None:
    config = _parse("wh.duckdb")
    warehouse = PostgresWarehouse(url=dg.EnvVar("SOME_PG_URL"), statement_timeout_seconds=30)
    defs = build_definitions(config, rudderstack_from_env(), warehouse=warehouse)
    resources = defs.get_repository_def().get_top_level_resources()
    assert resources["warehouse"] is not None


def test_state_schema_limits_sync_names_to_what_postgres_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RS_TEST_PG_URL", "postgresql://u@h/db")
    sync = {
        "model": "select 1 as id, 'x' as u",
        "primary_key": "id",
        "type": "identify",
        "user_id": "u",
    }
    warehouse = {"type": "postgres", "url": {"env": "RS_TEST_PG_URL"}, "state_schema": "rs"}
    parse_config({"warehouse": warehouse, "syncs": {"s" * 34: sync}})
    with pytest.raises(ConfigError) as info:
        parse_config({"warehouse": warehouse, "syncs": {"s" * 35: sync}})
    assert f"sync '{'s' * 35}'" in str(info.value) and "at most 34 bytes" in str(info.value)
    parse_config({"warehouse": {**warehouse, "state_schema": None}, "syncs": {"s" * 35: sync}})


@pytest.mark.parametrize(
    ("sql", "body"),
    [
        ("select 1", "select 1"),
        ("select 1;", "select 1"),
        ("select 1 ; -- note\n", "select 1"),
        ("select 1 -- a; b\n;\n/* done; */ ;  ", "select 1"),
        ("select ';' as x ;", "select ';' as x"),
        ("select $$;$$ as y;", "select $$;$$ as y"),
        ("select 1 /* x */ + 2;", "select 1 /* x */ + 2"),
    ],
)
def test_statement_body_drops_what_trails_so_the_model_nests(sql: str, body: str):
    """Models are wrapped as `( ... )`: a trailing `;` or comment must not end up inside."""
    assert statement_body(sql) == body
