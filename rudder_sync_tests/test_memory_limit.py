"""A diff that DuckDB cannot fit within the state's memory limit fails in one line with the fix.

Real Dagster and a real DuckDB model and state; the limit is set through its environment
variable (`RUDDER_SYNC_DUCKDB_MEMORY_LIMIT`) so low that the first run's diff cannot run: the
failure names the limit, its variable and the two ways out, and the state moves nowhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rudder_sync.state import MEMORY_LIMIT_ENV_VAR

from .gateway import TestGateway
from .helpers import TRACK_SYNC, failure_text, rudderstack_for, run_sync, write_project


def test_a_diff_over_the_memory_limit_fails_with_the_fix(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path, {"events": TRACK_SYNC}, users=50_000)
    monkeypatch.setenv(MEMORY_LIMIT_ENV_VAR, "2MB")
    failed = run_sync(project, "events", rudderstack_for(gateway.url), raise_on_error=False)
    text = failure_text(failed)
    assert "Out of Memory Error" in text and "\n" not in text.strip(), text
    assert f"Fix: raise the state's DuckDB memory limit ({MEMORY_LIMIT_ENV_VAR}, now 2MB)" in text
    assert "'state_schema', docs/large-models.md" in text
    assert "Traceback" not in text.split("Fix:")[0]
    monkeypatch.delenv(MEMORY_LIMIT_ENV_VAR)
    run_sync(project, "events", rudderstack_for(gateway.url))  # then the same run goes through
    assert gateway.events == []  # a baseline: recorded, nothing sent
