"""The benchmark model: a `users` table of N rows, its 1 % / 1 % / 1 % mutation, the sync YAML.

Rows are realistic for a reverse-ETL user model: string IDs, an email, a plan, a country, a
decimal lifetime value, timestamps, and one column that events do not carry (`last_seen_at`).
A Track event built from a row is ~350 bytes of JSON.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import yaml

SYNC_NAME = "bench_users"
PLANS = ("free", "starter", "pro", "team", "enterprise")
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "SE", "PL", "BR", "JP")
EVENT_NAMES = {
    "added": "User Signed Up",
    "changed": "User Changed Subscription",
    "removed": "User Deleted Account",
}
MAPPING = {
    "email": "email",
    "plan": "plan",
    "country": "country",
    "lifetime_value": "ltv",
    "signed_up_at": "signed_up_at",
}
# What the pandas baseline and the DuckDB floor compare: the columns the events carry.
CARRIED = ["user_id", "anon_id", "email", "plan", "country", "ltv", "signed_up_at"]
COLUMNS = ["id", *CARRIED, "updated_at", "last_seen_at"]
MODEL_SQL = f"select {', '.join(COLUMNS)} from users"

SYNC: dict[str, Any] = {
    "model": MODEL_SQL,
    "primary_key": "id",
    "type": "track",
    "user_id": "user_id",
    "anonymous_id": "anon_id",
    "mapping": MAPPING,
    "events": EVENT_NAMES,
    "send_initial_results": False,
}


def _rows_sql(start: str, stop: str) -> str:
    """SELECT of rows id in [start, stop): deterministic, cheap to generate, realistic widths."""
    plans = "[" + ", ".join(f"'{p}'" for p in PLANS) + "]"
    countries = "[" + ", ".join(f"'{c}'" for c in COUNTRIES) + "]"
    return f"""
        select i::bigint as id,
               'usr_' || lpad(i::varchar, 9, '0') as user_id,
               substr(md5(i::varchar), 1, 8) || '-' || substr(md5(i::varchar), 9, 4) || '-'
                 || substr(md5(i::varchar), 13, 4) || '-' || substr(md5(i::varchar), 17, 4)
                 || '-' || substr(md5(i::varchar), 21, 12) as anon_id,
               'user' || i || '@example.com' as email,
               {plans}[1 + (i * 7) % {len(PLANS)}] as plan,
               {countries}[1 + (i * 13) % {len(COUNTRIES)}] as country,
               ((i * 37) % 100000 / 100)::decimal(12, 2) as ltv,
               timestamptz '2020-01-01 00:00:00+00' + to_seconds(i * 17) as signed_up_at,
               timestamptz '2024-06-01 00:00:00+00' + to_seconds(i % 86400) as updated_at,
               timestamptz '2024-06-01 00:00:00+00' + to_seconds((i * 3) % 86400) as last_seen_at
        from range({start}, {stop}) t(i)
    """


def create_users(conn: duckdb.DuckDBPyConnection, rows: int) -> None:
    conn.execute(f"create or replace table users as {_rows_sql('0', str(rows))}")


def mutate_users(conn: duckdb.DuckDBPyConnection, rows: int) -> dict[str, int]:
    """1 % removed (id % 100 = 1), 1 % changed (id % 100 = 2: plan), 1 % added (new ids)."""
    conn.execute("delete from users where id % 100 = 1")
    conn.execute(
        """
        update users set plan = case when plan = 'free' then 'pro' else 'free' end,
                         updated_at = updated_at + interval 1 day
        where id % 100 = 2
        """
    )
    added = rows // 100
    conn.execute(f"insert into users {_rows_sql(str(rows), str(rows + added))}")
    return expected_changes(rows)


def change_all_users(conn: duckdb.DuckDBPyConnection) -> None:
    """Every row changes a carried column (the end-to-end run sends one event per row)."""
    conn.execute(
        "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
        "ltv = ltv + 1, updated_at = updated_at + interval 1 day"
    )


def expected_changes(rows: int) -> dict[str, int]:
    removed = sum(1 for _ in range(1, rows, 100))
    changed = sum(1 for _ in range(2, rows, 100))
    return {"added": rows // 100, "changed": changed, "removed": removed}


def sync_config() -> dict[str, Any]:
    """SYNC, with the change guard off where this rudder_sync has one: a benchmark changes on
    purpose more rows than the guard's defaults let through."""
    from rudder_sync.config import SyncConfig

    if "guard" not in SyncConfig.model_fields:
        return dict(SYNC)
    off = {"max_removed_fraction": None, "max_changed_fraction": None, "max_events": None}
    return {**SYNC, "guard": off}


def write_project(root: Path, sync_name: str = SYNC_NAME, **sync: Any) -> Path:
    """The sync YAML in ``root`` (warehouse.duckdb and state/ beside it), ``sync`` keys on top."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "rudder_sync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "warehouse": "warehouse.duckdb",
                "state": "state",
                "syncs": {sync_name: {**sync_config(), **sync}},
            },
            sort_keys=False,
        )
    )
    return path


def fresh_project(root: Path, rows: int, **sync: Any) -> Path:
    """A new project in ``root`` (whatever was there is removed): the sync YAML (``sync`` keys on
    top) and a warehouse of ``rows`` users. Returns the YAML's path."""
    if root.exists():
        shutil.rmtree(root)
    config = write_project(root, **sync)
    with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
        create_users(conn, rows)
    return config


# -- delivery benchmark events ----------------------------------------------------------------
def event_row(i: int) -> tuple[str, str, str, str, str, dict[str, Any]]:
    """(message_id, timestamp, user_id, anonymous_id, change, properties) of Track event i."""
    plan = PLANS[(i * 7) % len(PLANS)]
    properties = {
        "email": f"user{i}@example.com",
        "plan": plan,
        "country": COUNTRIES[(i * 13) % len(COUNTRIES)],
        "lifetime_value": f"{(i * 37) % 100000 / 100:.2f}",
        "signed_up_at": f"2021-{1 + i % 12:02d}-{1 + i % 28:02d}T10:{i % 60:02d}:00.000000Z",
    }
    message_id = f"{i:08x}-5f3c-4d1e-9a7b-{(i * 2654435761) % 16**12:012x}"
    timestamp = f"2024-06-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.000000Z"
    anonymous_id = f"{(i * 40503) % 16**8:08x}-7c1d-4b7e-8f00-{i:012x}"
    change = "changed" if i % 3 else "added"
    return message_id, timestamp, f"usr_{i:09d}", anonymous_id, change, properties


def event_rows(count: int) -> list[tuple[str, str, str, str, str, dict[str, Any], str]]:
    """The same events for every client: each row also carries its properties as rendered JSON,
    as the diff leaves them in the state (so our client embeds them untouched)."""
    rows = []
    for i in range(count):
        message_id, timestamp, user_id, anonymous_id, change, props = event_row(i)
        rows.append(
            (
                message_id,
                timestamp,
                user_id,
                anonymous_id,
                change,
                props,
                orjson.dumps(props).decode(),
            )
        )
    return rows


def iter_event_rows(count: int) -> Iterator[tuple[str, str, str, str, str, dict[str, Any], str]]:
    """Like event_rows, lazily (to show that delivering 1M events keeps memory flat)."""
    for i in range(count):
        message_id, timestamp, user_id, anonymous_id, change, props = event_row(i)
        yield (
            message_id,
            timestamp,
            user_id,
            anonymous_id,
            change,
            props,
            orjson.dumps(props).decode(),
        )
