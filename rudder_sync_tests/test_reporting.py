"""The tables the UI renders inline: cells are scalars, nested values their JSON, nulls null."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rudder_sync.reporting import table_metadata, windows_metadata

from .helpers import table_rows


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
