"""Where a sync's state lives, behind the one protocol the assets call (`StateBackend`).

Two families: the sync's DuckDB file in the state folder (`LocalStateBackend`, here), and the
warehouse's `state_schema` (`warehouse_state.backend.WarehouseStateBackend`), whose SQL differs
per dialect through `warehouse_state/sql.py`. `state_backend` picks one for a sync, once; the
assets never ask which one they got. Both open a `SyncState`, so the events step (`deliver_windows`)
and the checks before a diff (`settle_diff`) are the same code for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from dagster import TimeWindowPartitionsDefinition

from .config import SyncConfig
from .diff import DiffMode
from .partitions import WindowSpec
from .state import SyncState, open_state
from .steps import DiffResult, Snapshot, run_diff, take_snapshot
from .warehouse_state import state_in_warehouse
from .warehouse_state.backend import WarehouseStateBackend
from .warehouses import WarehouseResource


class StateBackend(Protocol):
    """A sync's state and the snapshot and diff steps that run where it lives."""

    @property
    def engine(self) -> str:
        """Where the diff runs, for the assets' kinds: "duckdb", or the warehouse's kind."""
        ...

    def open(self, dry_run: bool) -> AbstractContextManager[SyncState]:
        """The sync's state (the dry runs' own one with ``dry_run``), locked while open."""
        ...

    def take_snapshot(
        self,
        state: SyncState,
        partitions: TimeWindowPartitionsDefinition | None,
        windows: Sequence[WindowSpec],
    ) -> Snapshot:
        """Run the model (once per window) and keep its rows where the state is."""
        ...

    def run_diff(
        self,
        state: SyncState,
        windows: Sequence[WindowSpec],
        mode: DiffMode,
        now: datetime,
        retry_quarantined: bool = False,
    ) -> DiffResult:
        """Diff the model against what was delivered (or each window against the one before)."""
        ...

    def location(self, state: SyncState) -> Path | str:
        """Where the state is, for metadata: the state folder, or the warehouse's schema."""
        ...


@dataclass
class LocalStateBackend:
    """The sync's state in its DuckDB file in the state folder (`state.py`)."""

    sync: SyncConfig
    warehouse: WarehouseResource
    state_dir: Path
    engine: str = "duckdb"

    def open(self, dry_run: bool) -> AbstractContextManager[SyncState]:
        # in_use: a state that was moved into a warehouse is refused, naming where it went.
        return open_state(self.state_dir, self.sync.name, dry_run, in_use=True)

    def take_snapshot(
        self,
        state: SyncState,
        partitions: TimeWindowPartitionsDefinition | None,
        windows: Sequence[WindowSpec],
    ) -> Snapshot:
        return take_snapshot(state, self.sync, self.warehouse, partitions, list(windows))

    def run_diff(
        self,
        state: SyncState,
        windows: Sequence[WindowSpec],
        mode: DiffMode,
        now: datetime,
        retry_quarantined: bool = False,
    ) -> DiffResult:
        return run_diff(
            state, self.sync, self.warehouse, list(windows), mode, now, retry_quarantined
        )

    def location(self, state: SyncState) -> Path | str:
        return self.state_dir


def state_backend(sync: SyncConfig, warehouse: WarehouseResource, state_dir: Path) -> StateBackend:
    """The sync's state backend: in the warehouse when it sets `state_schema`, else local.

    ``state_dir`` holds the local state (for the warehouse backend: a local state to move in).
    """
    if state_in_warehouse(warehouse):
        return WarehouseStateBackend(sync, warehouse, state_dir)
    return LocalStateBackend(sync, warehouse, state_dir)
