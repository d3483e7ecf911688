"""Events rendered by DuckDB (`events.body_sql`) against the reference builder (`build_event` +
`orjson.dumps`): the same bytes for every call type and shape, on tricky strings; a per-row name
that is a float goes through the builder itself."""

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
from rudder_sync.events import body_sql, build_event
from rudder_sync.state import SyncState, open_state

from .helpers import outgoing_events

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
    "track_event_name_column": {
        **BASE,
        "type": "track",
        "send_initial_results": True,
        "events": {
            "added": {"column": "note"},
            "changed": "Changed",
            "removed": {"column": "plan"},
        },
        "mapping": {"plan": "plan"},
        "context": {"ip": "anon", "campaign.source": "note", "n": "num"},
    },
    "page": {**BASE, "type": "page", "name_column": "note", "send_on": ["added", "removed"]},
    "screen": {
        **BASE,
        "type": "screen",
        "name_column": "num",
        "send_on": ["added", "changed"],
        "mapping": {"p": "plan"},
    },
    "group_by_text": {**BASE, "type": "group", "group_id": "note", "mapping": {"p": "plan"}},
    "group_by_number": {**BASE, "type": "group", "group_id": "num", "context": {"x": "plan"}},
    "group_by_float": {**BASE, "type": "group", "group_id": "ratio"},
    "alias": {**BASE, "type": "alias", "previous_id": "note", "integrations": {"All": True}},
    "alias_by_flag": {**BASE, "type": "alias", "previous_id": "flag"},
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
                "num": i * 10**12 if round_ == 1 or i != 4 else -i,
                "ratio": (i / 3 if round_ == 1 else i / 7) if i != 3 else None,
                "flag": (i % 2 == 0) != (round_ == 2 and i == 1),
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
    seen = []
    for round_ in (1, 2):
        state.replace_model_rows(_users(round_))
        compute_diff(state, sync, NOW)
        expected = _reference(state, sync)
        sent = {event.ref: event.body for event in outgoing_events(state, sync)}
        assert sent == expected
        assert all(orjson.loads(body)["type"] == sync.type for body in sent.values())
        seen.append(len(sent))
        state.commit_silent_changes()
        state.commit_changes(list(sent), "run", "delivered")
    assert all(seen), seen  # both rounds sent events: first the rows, then changes or a removal


def test_a_name_only_orjson_can_write_is_left_to_the_builder(state: SyncState) -> None:
    """IDs and names are stored as text, but content stored by an earlier version may hold a
    float or an object: such a row is built by `build_event`, the others stay in SQL."""
    sync = parse_sync("group_by_text", SYNCS["group_by_text"])
    state.replace_model_rows(_users(1))
    compute_diff(state, sync, NOW)
    state.conn.execute(
        "update pending set __rs_props = '{\"groupId\":1.50}' || chr(30) || chr(30) || '{}' "
        "where __rs_pk = '1'"
    ).fetchall()
    rows = state.conn.execute(
        f"select __rs_pk, {body_sql(sync)} is null from pending where __rs_send order by 1"
    ).fetchall()
    assert [left for _, left in rows] == [True] + [False] * (len(rows) - 1)
    sent = {event.ref: event.body for event in outgoing_events(state, sync)}
    assert sent == _reference(state, sync)
    assert b'"groupId":1.5,' in sent[min(sent)]
