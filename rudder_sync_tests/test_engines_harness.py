"""The engines' harness itself: a missing stand-in skips with the command that installs it, and
fails instead under CI=true (so that CI cannot go green without running the engines)."""

from __future__ import annotations

import pytest

from rudder_sync_tests.engines import missing
from rudder_sync_tests.engines.bigquery import PYTHON_ENV_VAR, emulator_python


def test_a_missing_stand_in_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        missing("bqemulator", "scripts/setup_engines")
    assert str(skipped.value) == "bqemulator is not available. Fix: scripts/setup_engines"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        missing("bqemulator", "scripts/setup_engines")
    assert str(failed.value) == "bqemulator is not available. Fix: scripts/setup_engines"


def test_the_emulator_python_is_found_where_setup_engines_puts_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv(PYTHON_ENV_VAR, str(tmp_path / "nope" / "python"))
    assert emulator_python() is None
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(PYTHON_ENV_VAR, str(python))
    assert emulator_python() == python
