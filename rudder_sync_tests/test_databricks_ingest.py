"""Loading a table into Databricks' state schema: the INSERTs `ingest` runs, without Spark.

The Spark stand-in runs them in test_warehouse_state_engines.py; here, that every row lands in
exactly one INSERT, in order, and that an INSERT stays within its row and byte budget (each one
is a commit of the table, so fewer and larger is faster, up to what a statement may hold).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from rudder_sync.warehouse_state import databricks_store
from rudder_sync.warehouse_state.databricks_store import insert_statements, literal

TARGET = "`rudder_sync`.`users__in__rs_keys`"


def _table(rows: int, width: int = 10) -> pa.Table:
    return pa.table(
        {
            "__rs_pk": [f"k{i}" for i in range(rows)],
            "__rs_props": ["x" * width + f"'{i}\\" for i in range(rows)],
            "amount": [Decimal(i) / 100 for i in range(rows)],
            "at": [datetime(2024, 1, 1, tzinfo=UTC)] * rows,
        }
    )


def _row_texts(table: pa.Table) -> list[str]:
    return ["(" + ", ".join(literal(v) for v in row.values()) + ")" for row in table.to_pylist()]


HEAD = f"INSERT INTO {TARGET} (__rs_pk, __rs_props, amount, at) VALUES "


def _rows_of(statements: list[str], expected: list[str]) -> list[int]:
    """How many of the ``expected`` row texts each statement holds, consuming them in order (a
    statement must be exactly the head and its rows joined by ", ")."""
    counts, position = [], 0
    for statement in statements:
        assert statement.startswith(HEAD)
        body, count = statement[len(HEAD) :], 0
        while body:
            row = expected[position]
            assert body.startswith(row), (position, body[:80])
            body = body[len(row) :].removeprefix(", ")
            position, count = position + 1, count + 1
        counts.append(count)
    assert position == len(expected), "every row in exactly one INSERT"
    return counts


COLUMNS = ["__rs_pk", "__rs_props", "amount", "at"]


@pytest.mark.parametrize(
    ("rows", "width", "max_rows", "max_bytes"),
    [
        (12_345, 10, 5_000, 2 * 1024 * 1024),  # bounded by rows
        (3_000, 2_000, 5_000, 1024 * 1024),  # bounded by bytes
        (3, 5_000, 5_000, 4_000),  # every row longer than the budget: one a statement
        (0, 10, 5_000, 1024),  # nothing: no statement
    ],
)
def test_every_row_in_exactly_one_insert_in_order_within_the_budgets(
    monkeypatch: pytest.MonkeyPatch, rows: int, width: int, max_rows: int, max_bytes: int
) -> None:
    monkeypatch.setattr(databricks_store, "INGEST_ROWS", max_rows)
    monkeypatch.setattr(databricks_store, "INGEST_BYTES", max_bytes)
    table = _table(rows, width)
    statements = list(insert_statements(TARGET, COLUMNS, table))
    counts = _rows_of(statements, _row_texts(table))
    for statement, count in zip(statements, counts, strict=True):
        assert 0 < count <= max_rows
        assert len(statement.encode()) <= max_bytes or count == 1
    if rows and width * max_rows < max_bytes:
        assert len(statements) == -(-rows // max_rows)  # as few as the row budget allows
