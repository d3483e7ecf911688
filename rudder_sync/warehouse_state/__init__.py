"""In-warehouse state: a sync's snapshot, pending changes and delivery log as tables in the
warehouse's `state_schema`, and the diff computed there (docs/large-models.md).

`sql` holds the diff's SQL, rendered per dialect; `store` the protocol of the warehouse tables and
their lock, with one dialect module per engine (`postgres_store`, `snowflake_store`,
`redshift_store`; `rowlock_store` is what the last two share);
`state` the scratch copy the local code runs on, mirrored into the warehouse; `steps` the snapshot
and diff steps; `backend` puts them behind `state_backend.StateBackend`, the protocol the assets
call; `move` switches a sync's state between local files and the warehouse (its command:
`python -m rudder_sync state`, in `cli/state.py`). An append sync (`append.py`) keeps its state in
the same tables (and `<sync>__append_cursor`) through the same scratch copy and stores, with its
own snapshot and diff steps.
"""

from __future__ import annotations

from ..warehouses.base import WarehouseResource
from .store import supports


def state_in_warehouse(warehouse: WarehouseResource) -> bool:
    """Whether this sync keeps its state in the warehouse (`state_schema` is set, on an engine
    with a store)."""
    return supports(warehouse) and bool(getattr(warehouse, "state_schema", None))
