"""Stores the diff and events DataFrames beside the sync state, one file per partition range.

Dagster's default IO manager refuses an output that spans several partitions, which is exactly what
a single-run backfill of a partitioned sync produces; this one stores what a run produced under
the key range it covered. Nothing the next run needs lives here: the sync state is the source of
truth, these files are only what the UI and downstream assets read.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext


class SyncOutputIOManager(ConfigurableIOManager):
    """Pickled asset values under `<directory>/<asset path>/<partition range or 'latest'>.pkl`."""

    directory: str

    def _path(self, context: InputContext | OutputContext) -> Path:
        asset_path = context.asset_key.path
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            name = keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"
        else:
            name = "latest"
        safe = re.sub(r"[^0-9A-Za-z._-]", "_", name)
        return Path(self.directory, *asset_path, f"{safe}.pkl")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)

    def load_input(self, context: InputContext) -> Any:
        path = self._path(context)
        if not path.exists():
            raise FileNotFoundError(
                f"no stored value of {context.asset_key.to_user_string()} at {path}; "
                "materialize it first (for the same partitions)."
            )
        with path.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - files this IO manager wrote itself
