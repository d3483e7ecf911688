"""Events rendered by DuckDB (`events.body_sql`) against the reference builder (`build_event` +
`orjson.dumps`): the same bytes, for every sync shape the SQL path takes, on tricky strings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from rudder_sync.config import SyncConfig, parse_sync
from rudder_sync.diff import compute_diff
from rudder_sync.events import body_sql, build_event, iter_outgoing_events
from rudder_sync.state import SyncState, open_state

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Every control character, JSON's own specials, and UTF-8 that must stay as it is.
TRICKY = [
    "".join(chr(c) for c in range(32)),
    'q"uote \\ back/slash',
    "\x7f é ü 中文 𝄞 \u2028\u2029 \ufeff",
    "it's",
    "",
]

BASE = {"model": "select * from users", "primary_key": "id", "user_id": "user_id"}
SYNCS: dict[str, dict[str, Any]] = {
    "track": {
        **BASE,
        "type": "track",
        "anonymous_id": "anon",
        "send_initial_results": True,
        "events": {"added": "Signed Up 'é' \"q\"", "changed": "Changed", "removed": "Gone"},
        "mapping": {"plan": "plan", "a.b": "note"},
    },
    "track_some_changes_unsent": {
        **BASE,
        "type": "track",
        "send_initial_results": True,
        "events": {"added": "Signed Up", "removed": "Gone"},
        "mapping": {"plan": "plan"},
        "integrations": {"All": False, "Amplitude": True, "Braze": {"x": "é"}},
    },
    "track_message_id_column": {
        **BASE,
        "type": "track",
        "send_initial_results": True,
        "message_id": "note",
        "events": {"added": "Signed Up", "changed": "Changed", "removed": "Gone"},
        "exclude_nulls": True,
        "mapping": {"plan": "plan", "note": "note"},
        "static": {"source": "warehouse", "x.y": 1.5},
    },
    "identify": {
        **BASE,
        "type": "identify",
        "anonymous_id": "anon",
        "mapping": {"plan": "plan", "note": "note"},
        "integrations": {"All": True},
    },
}


def _users(round_: int) -> pa.RecordBatchReader:
    """Rows with tricky IDs and values; the second round changes some and drops one."""
    rows = []
    for i, value in enumerate(TRICKY, start=1):
        if round_ == 2 and i == 2:
            continue
        rows.append(
            {
                "id": i,
                "user_id": f"u{i} {value}" if i != 5 else None,
                "anon": value or None,
                "plan": ("pro" if round_ == 2 and i % 2 else "free") + value,
                "note": f"m{i}{value}" if round_ == 1 or i != 3 else f"n{i}{value}",
            }
        )
    return pa.Table.from_pylist(rows).to_reader()


@pytest.fixture(params=list(SYNCS))
def sync(request: pytest.FixtureRequest) -> SyncConfig:
    return parse_sync(request.param, SYNCS[request.param])


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SyncState]:
    with open_state(tmp_path, "users", dry_run=False) as opened:
        yield opened


def _reference(state: SyncState, sync: SyncConfig) -> dict[int, bytes]:
    rows = state.conn.execute(
        "select __rs_change_id, __rs_change, __rs_message_id, __rs_timestamp, __rs_user_id, "
        "__rs_anonymous_id, __rs_props from pending where __rs_send order by __rs_change_id"
    ).fetchall()
    return {row[0]: orjson.dumps(build_event(sync, *row[1:])) for row in rows}


def test_sql_bodies_are_the_reference_bytes(state: SyncState, sync: SyncConfig) -> None:
    assert body_sql(sync), "this shape is rendered by DuckDB"
    seen = []
    for round_ in (1, 2):
        state.replace_model_rows(_users(round_))
        compute_diff(state, sync, NOW)
        expected = _reference(state, sync)
        sent = {event.ref: event.body for event in iter_outgoing_events(state, sync)}
        assert sent == expected
        assert all(orjson.loads(body)["type"] == sync.type for body in sent.values())
        seen.append(len(sent))
        state.commit_silent_changes()
        state.commit_changes(list(sent), "run", "delivered")
    assert all(seen), seen  # both rounds sent events: first the rows, then changes or a removal


@pytest.mark.parametrize(
    "body",
    [
        {"type": "track", "events": {"added": {"column": "plan"}}},
        {"type": "track", "events": {"added": "A"}, "context": {"ip": "note"}},
        {"type": "page", "name_column": "plan"},
        {"type": "group", "group_id": "plan"},
        {"type": "alias", "previous_id": "plan"},
    ],
    ids=["event name column", "context fields", "page", "group", "alias"],
)
def test_per_row_names_and_context_stay_with_the_python_builder(body: dict[str, Any]) -> None:
    assert body_sql(parse_sync("s", {**BASE, **body})) == ""
