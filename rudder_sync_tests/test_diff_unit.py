"""`diff.compute_diff` on its own: a real DuckDB state, filled and committed by the package's own
functions (no warehouse, no Dagster, no gateway)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from rudder_sync import state as state_module
from rudder_sync.config import SyncConfig, parse_sync
from rudder_sync.diff import DiffMode, ModelColumnsError, Window, compute_diff, pending_frame
from rudder_sync.partitions import window_table
from rudder_sync.state import SyncState, open_state

from .helpers import TRACK_SYNC, outgoing_events

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SYNC = parse_sync("users", dict(TRACK_SYNC, max_attempts=2))
SENDING = parse_sync("users", dict(TRACK_SYNC, send_initial_results=True))


def user(i: int, plan: str = "free", user_id: str | None = "") -> dict[str, Any]:
    return {
        "id": i,
        "user_id": f"u{i}" if user_id == "" else user_id,
        "anon_id": None,
        "email": f"u{i}@example.com",
        "plan": plan,
        "country": "DE",
        "updated_at": None,
        "event_id": None,
    }


def rows(users: list[dict[str, Any]]) -> pa.RecordBatchReader:
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("user_id", pa.string()),
            ("anon_id", pa.string()),
            ("email", pa.string()),
            ("plan", pa.string()),
            ("country", pa.string()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
            ("event_id", pa.string()),
        ]
    )
    return pa.Table.from_pylist(users, schema=schema).to_reader()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SyncState]:
    with open_state(tmp_path, "users", dry_run=False) as opened:
        yield opened


def diff(state: SyncState, users: list[dict[str, Any]], sync: SyncConfig = SYNC, **kw: Any):
    state.replace_model_rows(rows(users))
    return compute_diff(state, sync, NOW, **kw)


def pending(state: SyncState, sync: SyncConfig = SYNC, windows: list[str] | None = None):
    frame, left_out = pending_frame(state, sync, windows or [])
    assert left_out == 0  # these diffs are far below the listed silent changes' limit
    return {(str(r[sync.primary_key]), r["change_type"]): r for r in frame.to_dict("records")}


def deliver_everything(state: SyncState) -> None:
    """What delivery does when the gateway takes every event: commit them all."""
    state.commit_silent_changes()
    state.commit_changes([e.ref for e in outgoing_events(state, SYNC)], "run", "delivered")


def test_a_first_run_is_a_baseline_then_changes_are_found_by_key(state: SyncState) -> None:
    first = diff(state, [user(1), user(2), user(3)])
    assert first.first_run and first.base_rows == 0 and first.model_rows == 3
    assert first.counts == {"added": 3, "changed": 0, "removed": 0}
    assert first.to_send == {"added": 0, "changed": 0, "removed": 0}  # no initial results
    assert state.commit_silent_changes() == 3 and state.initialized

    second = diff(state, [user(1), user(2, plan="pro"), user(4)])
    assert not second.first_run and second.base_rows == 3
    assert second.counts == {"added": 1, "changed": 1, "removed": 1}
    assert second.to_send == second.counts
    changes = pending(state)
    assert set(changes) == {("4", "added"), ("2", "changed"), ("3", "removed")}
    assert changes[("2", "changed")]["plan"] == "pro"
    # a removed row carries what the snapshot kept of it
    assert changes[("3", "removed")]["user_id"] == "u3"
    assert changes[("4", "added")]["timestamp"] == "2024-05-01T12:00:00.000000Z"


def test_a_change_still_pending_keeps_its_message_id_and_timestamp(state: SyncState) -> None:
    diff(state, [user(1)])
    state.commit_silent_changes()
    diff(state, [user(1, plan="pro")])
    before = pending(state)[("1", "changed")]
    state.replace_model_rows(rows([user(1, plan="pro")]))
    compute_diff(state, SYNC, NOW + timedelta(hours=1))
    after = pending(state)[("1", "changed")]
    assert (after["message_id"], after["timestamp"]) == (before["message_id"], before["timestamp"])
    # another change of the same row is another event
    diff(state, [user(1, plan="team")])
    assert pending(state)[("1", "changed")]["message_id"] != before["message_id"]


def test_rows_that_cannot_be_sent_are_rejected_and_counted_until_quarantined(
    state: SyncState,
) -> None:
    users = [user(1), user(2), user(2), user(3, user_id=None)]
    summary = diff(state, users)
    assert summary.rejected_count == 3  # both rows of key 2, and row 3
    no_id = (
        "neither user ID nor anonymous ID "
        "(user_id column 'user_id' / anonymous_id column 'anon_id' null or blank)"
    )
    duplicate = "duplicate primary key (2 rows)"
    assert summary.rejected_sample == [("2", duplicate), ("2", duplicate), ("3", no_id)]
    assert summary.counts["added"] == 1  # only the valid row
    assert state.quarantined(SYNC.max_attempts, 10)[0] == 0
    diff(state, users)  # unchanged and still rejected: a second attempt, max_attempts is 2
    count, sample = state.quarantined(SYNC.max_attempts, 10)
    assert count == 3 and {row["source"] for row in sample} == {"validation"}


def test_a_missing_column_names_the_key_that_wants_it(state: SyncState) -> None:
    sync = parse_sync("users", dict(TRACK_SYNC, mapping={"email": "mail"}))
    with pytest.raises(ModelColumnsError, match="'mail' \\(from 'mapping.email'\\)"):
        diff(state, [user(1)], sync)


def test_resync_resends_every_row_under_new_ids_and_reset_sends_nothing(
    state: SyncState,
) -> None:
    diff(state, [user(1), user(2)], sync=SENDING)
    delivered = {key: row["message_id"] for key, row in pending(state).items()}
    deliver_everything(state)
    resync = diff(state, [user(1), user(2)], SENDING, mode=DiffMode(resync=True, nonce="n1"))
    assert resync.counts == {"added": 2, "changed": 0, "removed": 0}
    assert resync.to_send["added"] == 2
    assert set(delivered.values()).isdisjoint(r["message_id"] for r in pending(state).values())

    reset = diff(state, [user(1), user(3)], mode=DiffMode(reset_baseline=True))
    assert reset.counts["added"] == 1 and reset.counts["removed"] == 1
    assert sum(reset.to_send.values()) == 0


def test_a_started_resync_is_carried_by_a_later_diff(state: SyncState) -> None:
    diff(state, [user(1), user(2)])
    deliver_everything(state)
    diff(state, [user(1), user(2)], mode=DiffMode(resync=True, nonce="n"))
    ids = {key: row["message_id"] for key, row in pending(state).items()}
    state.start_resync(None)  # delivery began, then stopped before anything was accepted

    diff(state, [user(1), user(2, plan="pro")])
    carried = pending(state)
    assert carried[("1", "added")]["message_id"] == ids[("1", "added")]  # unchanged: carried
    assert ("2", "added") not in carried and ("2", "changed") in carried  # changed: its own


def test_windows_diff_against_the_previous_window_and_keep_their_own_pending(
    state: SyncState,
) -> None:
    sync = parse_sync(
        "users", dict(TRACK_SYNC, partitions={"start": "2024-01-01", "cadence": "daily"})
    )
    state.replace_table(window_table("2024-01-01"), rows([user(1), user(2)]))
    state.replace_table(window_table("2024-01-02"), rows([user(2, plan="pro"), user(3)]))
    end = datetime(2024, 1, 2, tzinfo=UTC)
    first = compute_diff(
        state, sync, NOW, Window("2024-01-01", end, window_table("2024-01-01"), None)
    )
    assert first.first_run and first.counts == {"added": 2, "changed": 0, "removed": 0}
    second = compute_diff(
        state,
        sync,
        NOW,
        Window(
            "2024-01-02",
            end + timedelta(days=1),
            window_table("2024-01-02"),
            window_table("2024-01-01"),
        ),
    )
    assert not second.first_run and second.base_rows == 2
    assert second.counts == {"added": 1, "changed": 1, "removed": 1}
    both, _ = pending_frame(state, sync, ["2024-01-01", "2024-01-02"])
    assert sorted(both.groupby("partition").size().items()) == [
        ("2024-01-01", 2),
        ("2024-01-02", 3),
    ]
    # the window's own timestamp, and the removed row rendered from the previous window
    second_rows = pending(state, sync, ["2024-01-02"])
    assert second_rows[("3", "added")]["timestamp"] == "2024-01-03T00:00:00.000000Z"
    assert second_rows[("1", "removed")]["email"] == "u1@example.com"
    # re-diffing the first window leaves the second's changes alone
    compute_diff(state, sync, NOW, Window("2024-01-01", end, window_table("2024-01-01"), None))
    assert len(pending_frame(state, sync, ["2024-01-02"])[0]) == 3
    with pytest.raises(ValueError, match="unpartitioned syncs only"):
        compute_diff(
            state,
            sync,
            NOW,
            Window("2024-01-01", end, window_table("2024-01-01"), None),
            DiffMode(resync=True),
        )


@pytest.mark.parametrize(
    "accepted",
    [
        [1, 2, 3, 4],  # one run of consecutive IDs
        [4, 1, 2, 7],  # a few ranges, out of order
        list(range(1, 64, 2)),  # exactly MAX_COMMIT_RANGES ranges
        list(range(1, 81, 2)),  # scattered: more ranges than MAX_COMMIT_RANGES, the ID list
    ],
    ids=["one range", "few ranges", "most ranges", "scattered"],
)
@pytest.mark.parametrize("as_array", [False, True], ids=["list", "numpy"])
def test_a_commit_takes_exactly_the_accepted_changes(
    state: SyncState, accepted: list[int], as_array: bool
) -> None:
    """As a list, or as the NumPy array of refs the events step commits."""
    diff(state, [user(i) for i in range(1, 81)], SENDING)
    ids = sorted(e.ref for e in outgoing_events(state, SENDING))
    assert ids == list(range(1, 81))
    given = np.array(accepted, dtype=np.int64) if as_array else accepted
    assert state.commit_changes(given, "run", "delivered") == len(accepted)
    left = sorted(e.ref for e in outgoing_events(state, SENDING))
    assert left == sorted(set(ids) - set(accepted))


def test_events_are_read_in_chunks_in_change_order(
    state: SyncState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of change IDs (here 7, with gaps left by a scattered commit) give the same events,
    in the same order, as one read."""
    diff(state, [user(i) for i in range(1, 81)], SENDING)
    state.commit_changes(list(range(1, 81, 3)), "run", "delivered")
    whole = outgoing_events(state, SENDING)
    monkeypatch.setattr(state_module, "SENDABLE_CHUNK_ROWS", 7)
    chunked = outgoing_events(state, SENDING)
    assert chunked == whole
    assert [e.ref for e in chunked] == [i for i in range(1, 81) if (i - 1) % 3]


def test_the_frame_shows_each_field_as_the_event_carries_it(state: SyncState) -> None:
    """The DuckDB-built frame against the events themselves: same value per field and row."""
    sync = parse_sync(
        "visits",
        {
            "model": "select * from visits",
            "primary_key": "id",
            "type": "track",
            "user_id": "user_id",
            "send_initial_results": True,
            "events": {"added": {"column": "name"}, "changed": "Visit Changed"},
            "mapping": {
                "n": "n",
                "x": "x",
                "ok": "ok",
                "a.tags": "tags",
                "a.geo": "geo",
                "id": "s",
            },
            "context": {"ip": "ip", "campaign.source": "s"},
        },
    )
    table = pa.table(
        {
            "id": [1, 2, 3],
            "user_id": ["u1", "u2", "u3"],
            "name": ["Visited", "Visited", "Came Back"],
            "n": [1, None, 2**40],
            "x": [1.5, 2.0, None],
            "ok": [True, None, False],
            "tags": [["a", "b"], [], None],
            "geo": [{"lat": 1.0, "lon": 2.0}, None, {"lat": None, "lon": 0.5}],
            "s": ["a/b~c", None, 'q"uote'],
            "ip": ["10.0.0.1", "10.0.0.2", None],
        }
    )
    state.replace_model_rows(table.to_reader())
    compute_diff(state, sync, NOW)
    frame = pending_frame(state, sync, [])[0].set_index("id")
    assert list(frame.columns[-9:]) == [
        "n", "x", "ok", "a.tags", "a.geo", "id (mapped)", "event", "context.ip",
        "context.campaign.source",
    ]  # fmt: skip
    assert str(frame["n"].dtype).startswith(("int", "float")) and str(frame["x"].dtype) == "float64"

    def at(value: Any, path: str) -> Any:
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    for event in outgoing_events(state, sync):
        body = orjson.loads(event.body)
        row = frame.loc[body["userId"][1:]]  # user u<id>
        expected = {
            **{name: at(body["properties"], name) for name in ["n", "x", "ok", "a.tags", "a.geo"]},
            "id (mapped)": body["properties"]["id"],
            "event": body["event"],
            "context.ip": body["context"].get("ip"),
            "context.campaign.source": at(body["context"], "campaign.source"),
        }
        shown = {name: None if _is_nan(row[name]) else row[name] for name in expected}
        assert shown == expected
        assert row["message_id"] == body["messageId"] and row["timestamp"] == body["timestamp"]


def _is_nan(value: Any) -> bool:
    """A typed column's missing value (NaN, pandas' NA) where the event has null."""
    return value is pd.NA or (isinstance(value, float) and value != value)
