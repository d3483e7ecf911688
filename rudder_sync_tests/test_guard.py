"""The change guard on a real run (materialize): a small model and an emptied model are held back.

`test_guard_unit.py` covers the rule figure by figure; this file checks that a real diff of a
small DuckDB model trips it before anything is sent, and that approval lets it through.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ExecuteInProcessResult

from .gateway import TestGateway
from .helpers import TRACK_SYNC, rudderstack_for, run_sync, sql, write_project


def _guard(result: ExecuteInProcessResult) -> dict[str, object]:
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "change_guard"]
    return {"passed": check.passed, **{k: v.value for k, v in check.metadata.items()}}


def test_a_small_model_losing_most_rows_or_all_trips_before_anything_is_sent(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=50)  # below min_rows 100
    rudderstack = rudderstack_for(gateway.url)
    run_sync(project, "events", rudderstack)  # baseline: nothing sent
    sql(project.warehouse, "delete from users where id = 50")  # churn: passes
    assert _guard(run_sync(project, "events", rudderstack))["passed"]
    assert [e["userId"] for e in gateway.events] == ["u50"]

    sql(project.warehouse, "delete from users where id > 4")  # a broken model: 45 of 49 gone
    blocked = run_sync(project, "events", rudderstack, raise_on_error=False)
    assert not blocked.success and len(gateway.events) == 1  # nothing more sent
    guard = _guard(blocked)
    assert not guard["passed"] and guard["removed_fraction"] == round(45 / 49, 4)
    assert "of a model below min_rows (45 of 49 rows) > 0.5" in str(guard["tripped"])
    assert "approve_large_change: true" in "\n".join(blocked.run_logs)

    sql(project.warehouse, "delete from users")  # now empty: 49 rows before
    emptied = run_sync(project, "events", rudderstack, raise_on_error=False)
    assert not emptied.success and len(gateway.events) == 1
    assert "the model returned no rows where the previous snapshot had 49" in str(
        _guard(emptied)["tripped"]
    )
    # nothing was committed: the approved run sends the 49 removals, once
    approved = run_sync(project, "events", rudderstack, approve_large_change=True)
    assert approved.success
    removed = sorted(int(e["userId"][1:]) for e in gateway.events[1:])
    assert removed == list(range(1, 50))
    assert {e["event"] for e in gateway.events} == {"User Deleted Account"}
