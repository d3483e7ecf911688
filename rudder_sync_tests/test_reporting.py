"""The tables the UI renders inline: cells are scalars, nested values their JSON, nulls null."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rudder_sync.config import SyncConfig, parse_config
from rudder_sync.reporting import PREVIEW_CHARS, preview_frame, table_metadata, windows_metadata

from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
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


def _frame(sync: SyncConfig, rows: int, **fields: list[Any]) -> pd.DataFrame:
    """A diff frame as `diff.pending_frame` lays it out: key, system columns, the fields."""
    columns: dict[str, list[Any]] = {
        sync.primary_key: [str(i) for i in range(1, rows + 1)],
        "change_type": ["added", "changed", "removed"][:rows],
        "will_send": [True, True, False][:rows],
        "message_id": ["0123456789abcdef-0123-4567"] * rows,
        "timestamp": ["2024-05-01T12:00:00.000000Z"] * rows,
        "user_id": ["u1", None, "a-very-long-user-id-0001"][:rows],
        "anonymous_id": ["a1", "a2", None][:rows],
    }
    return pd.DataFrame({**columns, **fields})


def _sync(**body: Any) -> SyncConfig:
    return parse_config({"syncs": {"s": body}}).syncs["s"]


def test_the_preview_shows_key_change_event_ids_fields_and_a_short_message_id() -> None:
    sync = _sync(**TRACK_SYNC)
    long_email = "someone.with.a.long.name@example.com"
    preview = preview_frame(
        sync, _frame(sync, 3, email=["x@y.io", long_email, None], plan=["free", "pro", None])
    )
    # 'plan' does not fit beside the long userId (cut to PREVIEW_CHARS): left out
    assert list(preview.columns) == [
        "id", "change", "event", "userId", "anonymousId", "email", "messageId"
    ]  # fmt: skip
    rows = preview.to_dict("records")
    assert [row["change"] for row in rows] == ["added", "changed", "removed (not sent)"]
    assert [row["event"] for row in rows] == [
        "User Signed Up",
        "User Changed Subscr…",  # cut at 2 * PREVIEW_CHARS
        "User Deleted Account",
    ]
    assert rows[1]["email"] == long_email[: PREVIEW_CHARS - 1] + "…"
    assert rows[2]["userId"] == "a-very-lo…" and pd.isna(rows[1]["userId"])
    assert {row["messageId"] for row in rows} == {"01234567…"}


def test_the_preview_leaves_out_fields_that_would_not_fit() -> None:
    sync = _sync(**dict(TRACK_SYNC, mapping={"long_field_name": "email", "b": "plan"}))
    frame = _frame(sync, 1, long_field_name=["x"], b=["y"])
    columns = list(preview_frame(sync, frame).columns)
    assert "long_field_name" in columns and "b" in columns  # both fit
    wide = _frame(sync, 1, long_field_name=["x"], b=["y"])
    wide["user_id"] = ["0123456789"]  # cut to 10: no narrower
    wide["anonymous_id"] = ["0123456789"]
    wide["id"] = ["0123456789"]
    narrow = list(preview_frame(sync, wide).columns)
    assert narrow[-1] == "messageId" and "long_field_name" not in narrow and "b" not in narrow


def test_the_preview_names_pages_and_windows() -> None:
    sync = _sync(**dict(IDENTIFY_SYNC, type="page", name_column="plan", send_on=["added"]))
    frame = _frame(sync, 1, email=["x@y.io"], plan=["free"], name=["Pricing Page"])
    frame.insert(0, "partition", ["2024-01-01"])
    preview = preview_frame(sync, frame)
    assert list(preview.columns)[:4] == ["window", "id", "change", "name"]
    assert preview["name"].tolist() == ["Pricing Page"]
