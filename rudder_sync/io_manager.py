"""Stores the diff and events DataFrames beside the sync state, one file per partition range.

Dagster's default IO manager refuses an output that spans several partitions, which is exactly what
a single-run backfill of a partitioned sync produces; this one stores what a run produced under
the key range it covered. It stores what the asset gives it: with the sync's `redact:` the frames
arrive with their listed columns masked, with `store_frames: false` without rows (`redact.py`).
Nothing the next run needs lives here: the sync state is the source of
truth, these files are only what the UI and downstream assets read. So a file that cannot be
written (disk full) is a warning, not a failed step (see `handle_output`).

DataFrames of plain columns (text, numbers, booleans: the diff and events frames of most syncs)
are written as Parquet, from their Arrow buffers, with no Python object per value: for 1M changes
0.5 s and 95 MB instead of pickle's 1.2 s and 270 MB. A frame with Python objects in a column
(a mapped field holding JSON objects or arrays) is pickled, because Parquet would turn objects of
different keys into one struct and so change them.
"""

from __future__ import annotations

import errno
import pickle
import re
from contextlib import suppress
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext
from pyarrow import ArrowException

FORMATS = (".parquet", ".pkl")


class SyncOutputIOManager(ConfigurableIOManager):
    """Asset values under `<directory>/<asset path>/<partition range or 'latest'>.parquet` (or
    `.pkl`, see above)."""

    directory: str

    def _path(self, context: InputContext | OutputContext) -> Path:
        asset_path = context.asset_key.path
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            name = keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"
        else:
            name = "latest"
        safe = re.sub(r"[^0-9A-Za-z._-]", "_", name)
        return Path(self.directory, *asset_path, safe)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Store the value; a file system that refuses it (disk full, quota, permissions) costs
        only the file.

        The step's work is done by now (for `<sync>/events`: delivered and committed), and the
        next run does not read this file. Failing the step would report a delivery that happened
        as failed, and leave Dagster without the materialization and its counts. So the step
        succeeds, with a warning, `output_file` metadata saying the file is missing, and no
        earlier run's file left where readers would take it for this run's.
        """
        stem = self._path(context)
        try:
            self._store(stem, obj)
        except OSError as exc:
            for suffix in FORMATS:
                with suppress(OSError):
                    stem.with_name(stem.name + suffix).unlink(missing_ok=True)
            fix = (
                "free space"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "make it writable"
            )
            asset = context.asset_key.to_user_string()
            context.log.warning(
                f"{asset}: the step's work is done and recorded (an events step's deliveries are "
                f"committed), but its DataFrame could not be stored at {stem}: {exc}. Nothing "
                "is lost: the sync state is the source of truth and the next run stores its own "
                f"frame; until then assets that read {asset} find no value. Fix: {fix} in "
                f"{self.directory}."
            )
            context.add_output_metadata({"output_file": f"not stored: {exc}"})

    def _store(self, stem: Path, obj: Any) -> None:
        """Write through a temporary file, so a failed write leaves no half file (nor its space
        taken)."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        suffix = ".parquet" if _plain_frame(obj) else ".pkl"
        tmp = stem.with_name(stem.name + ".tmp")
        try:
            if suffix == ".parquet":
                try:
                    obj.to_parquet(tmp)
                except OSError:  # pyarrow's IO errors are ArrowExceptions too: not a format issue
                    raise
                except (ValueError, TypeError, ArrowException):  # e.g. repeated column names
                    suffix = ".pkl"
            if suffix == ".pkl":
                with tmp.open("wb") as handle:
                    pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(stem.with_name(stem.name + suffix))
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        for other in FORMATS:  # the value an earlier run stored in the other format
            if other != suffix:
                stem.with_name(stem.name + other).unlink(missing_ok=True)

    def load_input(self, context: InputContext) -> Any:
        stem = self._path(context)
        parquet, pickled = (stem.with_name(stem.name + suffix) for suffix in FORMATS)
        if parquet.exists():
            return pd.read_parquet(parquet)
        if not pickled.exists():
            raise FileNotFoundError(
                f"no stored value of {context.asset_key.to_user_string()} at {stem}.parquet; "
                "materialize it first (for the same partitions), or, if the last run logged that "
                "it could not store it, free space there and run again."
            )
        with pickled.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - files this IO manager wrote itself


def _plain_frame(obj: Any) -> bool:
    """A DataFrame whose columns Parquet stores and reads back as they are: no object columns."""
    return isinstance(obj, pd.DataFrame) and not any(
        pd.api.types.is_object_dtype(dtype) for dtype in obj.dtypes
    )
