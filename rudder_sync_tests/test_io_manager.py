"""The IO manager stores plain DataFrames as Parquet and reads them back unchanged; frames with
Python objects are pickled, so their values are never reshaped."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, build_output_context

from rudder_sync.io_manager import SyncOutputIOManager

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)

KEY = AssetKey(["users", "diff"])


def _store_and_load(tmp_path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    manager = SyncOutputIOManager(directory=str(tmp_path))
    manager.handle_output(build_output_context(asset_key=KEY), frame)
    files = sorted(p.name for p in (tmp_path / "users" / "diff").iterdir())
    loaded = manager.load_input(build_input_context(asset_key=KEY))
    return loaded, files


def _diff_like_frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.array([str(i) for i in range(rows)], dtype="str"),
            "change_type": pd.array(["changed"] * rows, dtype="str"),
            "will_send": [True] * rows,
            "message_id": pd.array([None if i == 1 else f"m{i}" for i in range(rows)], "str"),
            "lifetime_value": [float(i) / 3 for i in range(rows)],
            "visits": pd.array([None if i == 2 else i for i in range(rows)], dtype="Int64"),
            "context.ip": pd.array(["1.2.3.4"] * rows, dtype="string[pyarrow]"),
        }
    )


@pytest.mark.parametrize("rows", [0, 5])
def test_a_plain_frame_round_trips_through_parquet(tmp_path: Path, rows: int) -> None:
    frame = _diff_like_frame(rows)
    loaded, files = _store_and_load(tmp_path, frame)
    assert files == ["latest.parquet"]
    pd.testing.assert_frame_equal(loaded, frame)


def test_a_frame_with_objects_is_pickled_unchanged(tmp_path: Path) -> None:
    frame = _diff_like_frame(2).assign(traits=[{"a": 1}, {"b": [1, 2]}])
    loaded, files = _store_and_load(tmp_path, frame)
    assert files == ["latest.pkl"]
    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded["traits"].tolist() == [{"a": 1}, {"b": [1, 2]}]  # not one struct of both keys

    # The next run's plain frame replaces it: the pickle of the earlier run is gone.
    plain = _diff_like_frame(3)
    loaded, files = _store_and_load(tmp_path, plain)
    assert files == ["latest.parquet"]
    pd.testing.assert_frame_equal(loaded, plain)


def test_repeated_column_names_fall_back_to_pickle(tmp_path: Path) -> None:
    frame = pd.DataFrame([[1, 2]], columns=["plan", "plan"])
    loaded, files = _store_and_load(tmp_path, frame)
    assert files == ["latest.pkl"]
    pd.testing.assert_frame_equal(loaded, frame)


def test_nothing_stored_yet_says_what_to_materialize(tmp_path: Path) -> None:
    manager = SyncOutputIOManager(directory=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no stored value of users/diff"):
        manager.load_input(build_input_context(asset_key=KEY))


# -- a file system that refuses the value (issue 26 item 7) ---------------------------------------


def _fill(directory: Path) -> None:
    """Fill the file system of `directory` up to the last byte: a real disk-full condition."""
    with (directory / "filler").open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only) where `run_sync` stores the events frames of sync `traits`:
    writes fail with ENOSPC once it is full."""
    mount_point = tmp_path / "state" / "outputs" / "traits" / "events"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
def test_a_full_disk_after_delivery_does_not_fail_the_run(
    tmp_path: Path, small_disk: Path, gateway: TestGateway
) -> None:
    """The events are delivered and committed before Dagster stores the run's frames. A disk
    that is full by then cost the run its success (and Dagster its materialization): it now
    costs only the files, with a warning, metadata saying so, and no stale file left behind."""
    project = write_project(tmp_path, {"traits": IDENTIFY_SYNC}, users=3)
    rudderstack = rudderstack_for(gateway.url)
    assert run_sync(project, "traits", rudderstack).success
    assert sorted(p.name for p in small_disk.iterdir()) == ["latest.parquet"]

    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    _fill(small_disk)
    result = run_sync(project, "traits", rudderstack, raise_on_error=False)
    assert result.success
    assert [e["userId"] for e in gateway.events[3:]] == ["u2"]  # delivered
    metadata = asset_metadata(result, "traits", "events")
    assert metadata["output_file"].startswith("not stored: [Errno 28]")
    assert "No space left on device" in metadata["output_file"]
    assert metadata["events_accepted"] == 1
    logs = "\n".join(result.run_logs)
    assert (
        "traits/events: the step's work is done and recorded (an events step's deliveries are "
        "committed), but its DataFrame could not be stored"
    ) in logs
    assert f"Fix: free space in {tmp_path / 'state' / 'outputs'}." in logs
    # the previous run's frame is not left for readers to take as this run's; no half file
    assert [p.name for p in small_disk.iterdir()] == ["filler"]
    manager = SyncOutputIOManager(directory=str(tmp_path / "state" / "outputs"))
    with pytest.raises(FileNotFoundError, match="could not store it"):
        manager.load_input(build_input_context(asset_key=AssetKey(["traits", "events"])))

    # committed: with room again, the next run sends nothing and stores its frame
    (small_disk / "filler").unlink()
    assert run_sync(project, "traits", rudderstack).success
    assert len(gateway.events) == 4
    assert sorted(p.name for p in small_disk.iterdir()) == ["latest.parquet"]


_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
import pandas as pd
from dagster import AssetKey, build_output_context
from rudder_sync.io_manager import SyncOutputIOManager

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
rows = range(100_000)
frame = pd.DataFrame({"id": [str(i) for i in rows], "v": [f"v{i}" for i in rows]})
context = build_output_context(asset_key=AssetKey(["users", "events"]))
SyncOutputIOManager(directory=sys.argv[1]).handle_output(context, frame)
print(context.get_logged_metadata())
"""


@pytest.mark.slow
def test_a_file_size_limit_costs_only_the_file(tmp_path: Path) -> None:
    """The same without root: RLIMIT_FSIZE in a child process makes the write fail for real
    (EFBIG). The store returns, the earlier value is gone and no temporary file is left."""
    stale = tmp_path / "users" / "events" / "latest.pkl"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's value")
    child = subprocess.run(
        [sys.executable, "-c", _UNDER_A_FILE_SIZE_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert "'output_file'" in child.stdout and "not stored: [Errno 27]" in child.stdout
    assert "File too large" in child.stdout
    assert "Fix: free space in" in child.stderr
    assert list(stale.parent.iterdir()) == []
