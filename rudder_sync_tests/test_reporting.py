"""The tables the UI renders inline: cells are scalars, nested values their JSON, nulls null."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rudder_sync.reporting import table_metadata, windows_metadata

from .helpers import (
    IDENTIFY_SYNC,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    table_rows,
    write_project,
)


def test_a_frame_becomes_a_table_of_scalars() -> None:
    frame = pd.DataFrame(
        {
            "id": np.array([1, 2], dtype="int64"),
            "plan": ["pro", None],
            "score": [1.5, float("nan")],
            "address": [{"city": "Paris", "tags": ["a"]}, None],
            "at": pd.to_datetime(["2024-01-01T00:00:00Z", None]),
            "flag": [True, False],
        }
    )
    value = table_metadata(frame)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("id", "int"),
        ("plan", "string"),
        ("score", "float"),
        ("address", "string"),
        ("at", "string"),
        ("flag", "bool"),
    ]
    first, second = table_rows(value)
    assert first == {
        "id": 1,
        "plan": "pro",
        "score": 1.5,
        "address": '{"city":"Paris","tags":["a"]}',
        "at": "2024-01-01 00:00:00+00:00",
        "flag": True,
    }
    assert second == {
        "id": 2,
        "plan": None,
        "score": None,
        "address": None,
        "at": None,
        "flag": False,
    }


def test_windows_keep_their_order_and_own_counts() -> None:
    value = windows_metadata(
        {"2024-01-02": {"added": 1, "accepted": 1}, "2024-01-01": {"added": 0, "accepted": 0}}
    )
    assert table_rows(value) == [
        {"window": "2024-01-02", "added": 1, "accepted": 1},
        {"window": "2024-01-01", "added": 0, "accepted": 0},
    ]


def test_a_duplicated_key_is_reported_once(tmp_path: Path) -> None:
    """Two rows of one key are two rejected rows with one reason: one log line, one sample."""
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    sql(project.warehouse, "insert into users select * from users where id = 2")
    result = run_sync(project, "traits", rudderstack_for(None))
    warned = [line for line in result.run_logs if "id=2 not sent" in line]
    assert warned == ["sync 'traits': row id=2 not sent: duplicate primary key (2 rows)"]
    diff = asset_metadata(result, "traits", "diff")
    assert diff["rejected_rows"] == 2
    assert diff["rejected_sample"] == [{"key": "2", "reason": "duplicate primary key (2 rows)"}]
