"""Time partitions: each window's model result, and the window before it, for historical backfills.

A window's diff compares the model over that window with the model over the window before it (an
empty set before the first window), so its events depend only on the model: never on which windows
ran before or in what order. The model reads the window's bounds as `$partition_start` and
`$partition_end` (TIMESTAMP WITH TIME ZONE, end exclusive).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from dagster import (
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from .config import PartitionsConfig, SyncConfig
from .diff import Window, check_model_columns
from .errors import MissingWindowError
from .state import SyncState
from .warehouses import WarehouseResource

_WINDOW_PREFIX = "window__"  # the state's tables of window rows
_DEFINITIONS = {
    "hourly": HourlyPartitionsDefinition,
    "daily": DailyPartitionsDefinition,
    "weekly": WeeklyPartitionsDefinition,
    "monthly": MonthlyPartitionsDefinition,
}


def partitions_definition(config: PartitionsConfig) -> TimeWindowPartitionsDefinition:
    start = config.start_text
    if config.cadence == "hourly" and len(start) == 10:
        start += "-00:00"
    return _DEFINITIONS[config.cadence](start_date=start, timezone=config.timezone)


@dataclass(frozen=True)
class WindowSpec:
    key: str
    start: datetime
    end: datetime
    previous_key: str | None


def windows_for(
    partitions: TimeWindowPartitionsDefinition, keys: Sequence[str]
) -> list[WindowSpec]:
    """The windows of a run, in chronological order, each knowing the window before it."""
    specs = []
    for key in sorted(keys, key=lambda k: partitions.time_window_for_partition_key(k).start):
        window = partitions.time_window_for_partition_key(key)
        previous = partitions.get_prev_partition_window(window.start)
        previous_key = (
            partitions.get_partition_key_for_timestamp(previous.start.timestamp())
            if previous is not None
            else None
        )
        specs.append(WindowSpec(key, window.start, window.end, previous_key))
    return specs


def window_table(key: str) -> str:
    return _WINDOW_PREFIX + re.sub(r"[^0-9A-Za-z]", "_", key)


def store_window_rows(
    state: SyncState,
    sync: SyncConfig,
    warehouse: WarehouseResource,
    partitions: TimeWindowPartitionsDefinition,
    specs: Sequence[WindowSpec],
) -> dict[str, int]:
    """Run the model over every window of the run and the one before the first; rows per window.

    Tables of windows outside this run are dropped, so the state does not grow with history.
    """
    needed = [spec.key for spec in specs]
    if specs and specs[0].previous_key:
        needed.insert(0, specs[0].previous_key)
    state.drop_tables_except(_WINDOW_PREFIX, {window_table(k) for k in needed})
    rows = {}
    for key in needed:
        window = partitions.time_window_for_partition_key(key)
        params = {"partition_start": window.start, "partition_end": window.end}
        with warehouse.read_model(sync.model, params) as reader:
            check_model_columns(sync, reader.schema.names)
            rows[key] = state.replace_table(window_table(key), reader)
    return rows


def diff_window(spec: WindowSpec, state: SyncState) -> Window:
    """The diff inputs of one window: its rows and (when it has one) the previous window's."""
    table = window_table(spec.key)
    if not state.has_table(table):
        raise MissingWindowError(spec.key)
    previous = window_table(spec.previous_key) if spec.previous_key else None
    if previous and not state.has_table(previous):
        raise MissingWindowError(spec.previous_key or "")
    return Window(key=spec.key, end=spec.end, rows=table, previous_rows=previous)
