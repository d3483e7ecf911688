"""The demo: a small DuckDB warehouse the package creates on first use, and two syncs over it."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

DEMO_DIR_ENV_VAR = "RUDDER_SYNC_DEMO_DIR"
DEMO_USERS = 200
# The demo's last user has neither ID on purpose: its warning says so (primary key -> why).
REJECTED_ON_PURPOSE = {
    str(DEMO_USERS): f"on purpose: the demo's users row {DEMO_USERS} has no ID, to show how a row "
    "that cannot be sent is reported (the diff's rejected_rows check)"
}


def demo_dir() -> Path:
    value = os.environ.get(DEMO_DIR_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".rudder_sync" / "demo"


def ensure_demo_warehouse(path: Path) -> Path:
    """Create the demo warehouse if it is missing; never touch an existing one."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".creating")
    tmp.unlink(missing_ok=True)
    with duckdb.connect(str(tmp)) as conn:
        seed_users(conn, DEMO_USERS)
    tmp.rename(path)
    return path


def seed_users(conn: duckdb.DuckDBPyConnection, count: int) -> None:
    """A `users` table: every fourth user is anonymous only; one row has no ID at all."""
    conn.execute(
        f"""
        create or replace table users as
        select i as id,
               case when i % 4 = 0 then null else 'user-' || i end as user_id,
               'anon-' || md5(i::varchar)[:12] as anon_id,
               'user' || i || '@example.com' as email,
               ['free', 'pro', 'team'][1 + i % 3] as plan,
               ['DE', 'FR', 'US', 'BR', 'JP'][1 + i % 5] as country,
               timestamptz '2024-01-01 00:00:00+00' + to_days(i) as signed_up_at,
               timestamptz '2024-06-01 00:00:00+00' + to_hours(i) as updated_at,
               'evt-' || i || '-1' as event_id
        from range(1, {count} + 1) t(i)
        """
    )
    conn.execute(f"update users set user_id = null, anon_id = '  ' where id = {count}")
    seed_plan_history(conn, count)


def seed_plan_history(conn: duckdb.DuckDBPyConnection, count: int) -> None:
    """An SCD-2 table of plans over the first two weeks of 2024, for the partitioned demo sync.

    Each user signs up on a day of its own, some upgrade a few days later, some churn.
    """
    conn.execute(
        f"""
        create or replace table plan_history as
        with users as (
            select i as id, 'user-' || i as user_id,
                   timestamptz '2024-01-01 00:00:00+00' + to_hours((i * 7) % 336) as signed_up
            from range(1, {count} + 1) t(i)
        )
        select id, user_id, 'free' as plan, signed_up as valid_from,
               case when id % 3 = 0 then signed_up + to_days(2 + id % 4)
                    when id % 11 = 0 then signed_up + to_days(1 + id % 5) end as valid_to
        from users
        union all
        select id, user_id, 'pro', signed_up + to_days(2 + id % 4), null
        from users where id % 3 = 0
        """
    )


def advance_demo(path: Path) -> None:
    """Change the demo data the way a day of real use would: sign-ups, upgrades, deletions."""
    with duckdb.connect(str(path)) as conn:
        top = conn.execute("select coalesce(max(id), 0) from users").fetchall()[0][0]
        step = top - DEMO_USERS + 1
        conn.execute(
            f"""
            insert into users
            select i, 'user-' || i, 'anon-' || md5(i::varchar)[:12], 'user' || i || '@example.com',
                   'free', 'DE', now(), now(), 'evt-' || i || '-1'
            from range({top} + 1, {top} + 4) t(i)
            """
        )
        conn.execute(
            f"""
            update users set plan = case plan when 'free' then 'pro' else 'team' end,
                   updated_at = now(), event_id = 'evt-' || id || '-' || ({step} + 1)
            where id % 17 = {step % 17}
            """
        )
        conn.execute(f"delete from users where id % 53 = {step % 53}")
