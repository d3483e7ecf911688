"""The IO manager stores plain DataFrames as Parquet and reads them back unchanged; frames with
Python objects are pickled, so their values are never reshaped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, build_output_context

from rudder_sync.io_manager import SyncOutputIOManager

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
