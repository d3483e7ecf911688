"""`WarehouseResource.session`: the reads of one step share one connection (one login).

An append sync's snapshot reads its warehouse three to five times (bounds, counts, rows), a
backfill once per window; each read used to open (and, on Snowflake, log in on) a connection of
its own. Checked on a real PostgreSQL server by the backend each read ran on, and on a real DuckDB
file by its lock: released when the session ends, so writers are not locked out after the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from rudder_sync.warehouses.duckdb import DuckDBWarehouse
from rudder_sync.warehouses.postgres import PostgresWarehouse

BACKEND = (
    "select pid, backend_start::text as started from pg_stat_activity where pid = pg_backend_pid()"
)


def _backend(warehouse: PostgresWarehouse) -> tuple[Any, Any]:
    with warehouse.read_model(BACKEND) as reader:
        row = reader.read_all().to_pylist()[0]
    return row["pid"], row["started"]


def test_reads_in_a_session_share_one_postgres_connection(pg: Any) -> None:
    warehouse = PostgresWarehouse(url=pg.url)
    alone = [_backend(warehouse), _backend(warehouse)]
    assert alone[0] != alone[1], "without a session each read has a connection of its own"
    with warehouse.session():
        first = _backend(warehouse)
        with warehouse.session():  # nested: the outer one's
            assert _backend(warehouse) == first
        # a read while another one of the session still streams gets its own connection
        with warehouse.read_model("select 1 as still_streaming") as streaming:
            assert _backend(warehouse) != first
            assert streaming.read_all().num_rows == 1
        assert _backend(warehouse) == first
    assert _backend(warehouse) != first, "the session's connection ends with it"


def test_a_failed_read_does_not_spoil_the_session(pg: Any) -> None:
    warehouse = PostgresWarehouse(url=pg.url)
    with warehouse.session():
        first = _backend(warehouse)
        try:
            with warehouse.read_model("select * from no_such_table") as reader:
                reader.read_all()
        except Exception as exc:  # noqa: BLE001 - the warehouse's error, any kind
            assert "no_such_table" in str(exc)
        else:
            raise AssertionError("the read of a missing table succeeded")
        assert _backend(warehouse) == first


def test_a_duckdb_session_holds_the_file_only_while_it_lasts(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("create table t as select range as id from range(5)")
    warehouse = DuckDBWarehouse(database=str(path))
    with warehouse.session():
        for _ in range(3):
            with warehouse.read_model("select count(*) as n from t") as reader:
                assert reader.read_all().column("n").to_pylist() == [5]
    with duckdb.connect(str(path)) as writer:  # a writer gets in: nothing of the session is left
        writer.execute("insert into t values (5)")
    with warehouse.read_model("select count(*) as n from t") as reader:
        assert reader.read_all().column("n").to_pylist() == [6]
