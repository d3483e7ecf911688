"""Start bqemulator offline: run by the emulator's own Python (`.venv-bqemulator`), not pytest's.

Two changes to bqemulator 1.4.0, both test-only:

* its start-up runs DuckDB's `INSTALL spatial`, which downloads an extension and fails without
  network: skipped here, so GEOGRAPHY is not available on this stand-in;
* its Storage Read API reads DuckDB tables only, while query results live in its job cache (their
  `destinationTable`, `_bqemu_anonymous.anon<job>`, exists only over REST): a read session on such
  a table first stores the cached result under that name, as BigQuery keeps every query result
  in an anonymous table. Without it `to_arrow_iterable` through the Storage API fails on any
  query result (404 "Catalog Error: Table ... does not exist").

Usage: python bqemulator_launcher.py start --rest-port N --grpc-port M --project test --ephemeral
"""

from __future__ import annotations

import sys

from bqemulator.cli import main
from bqemulator.grpc_api import read_servicer
from bqemulator.jobs.executor import JOB_RESULTS
from bqemulator.storage.engine import DuckDBEngine
from bqemulator.storage.sql_identifiers import quoted_schema, quoted_table_ref

ANONYMOUS = "_bqemu_anonymous"


def _no_spatial(self: DuckDBEngine) -> None:
    """No network for DuckDB's extension repository: no GEOGRAPHY."""


def _job_id(table_id: str) -> str:
    flat = table_id.removeprefix("anon")
    if len(flat) != 32:
        return flat
    return f"{flat[:8]}-{flat[8:12]}-{flat[12:16]}-{flat[16:20]}-{flat[20:]}"


_create_read_session = read_servicer.BigQueryReadHandler._handle_create_read_session


def _create_read_session_on_results(self, request_bytes: bytes, context):  # noqa: ANN001
    from google.cloud.bigquery_storage_v1 import types

    request = types.CreateReadSessionRequest.deserialize(request_bytes)
    parsed = read_servicer._parse_table_path(request.read_session.table)
    if parsed is not None and parsed[1] == ANONYMOUS:
        project, dataset, table = parsed
        result = JOB_RESULTS.get(_job_id(table))
        if result is not None:
            cursor = self._ctx.engine.connection.cursor()
            try:
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted_schema(project, dataset)}")
                cursor.register("__rs_job_result", result)
                cursor.execute(
                    f"CREATE OR REPLACE TABLE {quoted_table_ref(project, dataset, table)} AS "
                    "SELECT * FROM __rs_job_result"
                )
                cursor.unregister("__rs_job_result")
            finally:
                cursor.close()
    return _create_read_session(self, request_bytes, context)


DuckDBEngine._load_spatial = _no_spatial
read_servicer.BigQueryReadHandler._handle_create_read_session = _create_read_session_on_results

if __name__ == "__main__":
    sys.exit(main())
