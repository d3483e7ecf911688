"""A baseline of more rows than the diff's output lists (`diff.FRAME_SILENT_ROWS`).

A first run that sends nothing (a track sync without send_initial_results) records every model
row as a silent `added` change. Its diff output (a pandas DataFrame, stored beside the state)
lists the first FRAME_SILENT_ROWS of them and counts the rest, so that a model of 100M rows does
not become a DataFrame of 100M rows; every change that sends is always listed. Real Dagster, a real
DuckDB model just above the bound, the test gateway.
"""

from __future__ import annotations

from pathlib import Path

from rudder_sync.diff import FRAME_SILENT_ROWS

from .gateway import TestGateway
from .helpers import TRACK_SYNC, asset_metadata, rudderstack_for, run_sync, sql, write_project

ROWS = FRAME_SILENT_ROWS + 2_500


def test_a_baseline_above_the_bound_is_counted_not_listed_and_sends_still_are(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=ROWS)
    first = run_sync(project, "events", rudderstack_for(gateway.url))
    meta = asset_metadata(first, "events", "diff")
    frame = first.output_for_node("events__diff")
    assert meta["added"] == ROWS and meta["added_to_send"] == 0 and meta["first_run"] is True
    assert len(frame) == meta["dagster/row_count"] == FRAME_SILENT_ROWS
    assert meta["silent_changes_not_in_output"] == ROWS - FRAME_SILENT_ROWS
    assert frame["id"].is_unique  # the first silent changes in change order, each once
    assert gateway.events == []

    # the whole baseline was committed: a change to rows past the bound sends exactly those
    sql(project.warehouse, f"update users set plan = 'pro' where id > {ROWS - 3}")
    second = run_sync(project, "events", rudderstack_for(gateway.url))
    changed = second.output_for_node("events__diff")
    assert sorted(int(i) for i in changed["id"]) == [ROWS - 2, ROWS - 1, ROWS]
    assert "silent_changes_not_in_output" not in asset_metadata(second, "events", "diff")
    assert sorted(e["userId"] for e in gateway.events) == [
        f"u{i}" for i in range(ROWS - 2, ROWS + 1)
    ]
