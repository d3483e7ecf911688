"""The in-warehouse family of `state_backend.StateBackend`: a sync's state in `state_schema`.

Opening locks the sync's tables and loads a scratch copy (`state.open_warehouse_state`), after
moving a local state in if the sync had one (`move.settle_local_state`); the snapshot and diff run
in the warehouse (`steps`), in its dialect's SQL (`sql`). A new engine is a dialect there, not a
branch in the assets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dagster import TimeWindowPartitionsDefinition

from ..config import SyncConfig
from ..diff import DiffMode
from ..partitions import WindowSpec
from ..state import SyncState, state_path
from ..steps import DiffResult, Snapshot
from ..warehouses.base import WarehouseResource
from .move import settle_local_state
from .state import WarehouseSyncState, open_warehouse_state
from .steps import run_diff_in_warehouse, take_snapshot_in_warehouse


@dataclass
class WarehouseStateBackend:
    """The sync's state as tables in the warehouse's `state_schema`, diffed there."""

    sync: SyncConfig
    warehouse: WarehouseResource
    state_dir: Path  # where a local state to move in would be

    @property
    def engine(self) -> str:
        return self.warehouse.kind

    @contextmanager
    def open(self, dry_run: bool) -> Iterator[SyncState]:
        with open_warehouse_state(
            self.warehouse, self.sync.name, self.sync.primary_key, dry_run
        ) as state:
            local = state_path(self.state_dir, self.sync.name, dry_run)
            state.notice = settle_local_state(state, local)
            yield state

    def take_snapshot(
        self,
        state: SyncState,
        partitions: TimeWindowPartitionsDefinition | None,
        windows: Sequence[WindowSpec],
    ) -> Snapshot:
        return take_snapshot_in_warehouse(
            _opened(state), self.sync, self.warehouse, partitions, windows
        )

    def run_diff(
        self,
        state: SyncState,
        windows: Sequence[WindowSpec],
        mode: DiffMode,
        now: datetime,
        retry_quarantined: bool = False,
    ) -> DiffResult:
        return run_diff_in_warehouse(
            _opened(state), self.sync, self.warehouse, mode, now, retry_quarantined, windows
        )

    def location(self, state: SyncState) -> Path | str:
        return state.path  # the warehouse, schema and table prefix (`WarehouseStore.where`)


def _opened(state: SyncState) -> WarehouseSyncState:
    """The state this backend opened (another one is a bug: it would not reach the warehouse)."""
    if not isinstance(state, WarehouseSyncState):
        raise TypeError(f"not an in-warehouse state: {state.path}")
    return state
