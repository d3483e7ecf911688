"""`python -m rudder_sync state` (rudder_sync/cli/state.py): dispatched by the CLI, and refusing a
project whose warehouse keeps no state. Its work on a real warehouse state (to-local, drop, under
both names) is in test_warehouse_state.py."""

from __future__ import annotations

import pytest

from rudder_sync.cli import COMMANDS
from rudder_sync.cli import main as dispatch
from rudder_sync.config import CONFIG_ENV_VAR


@pytest.mark.parametrize("command", ["to-local", "drop"])
def test_the_state_command_needs_a_warehouse_with_state_schema(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)  # the packaged demo: a DuckDB warehouse
    assert "state" in COMMANDS
    assert dispatch(["state", command, "users"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: sync 'users': the config's warehouse has no state_schema")
    assert "Fix: run it while state_schema is still set." in err
