"""The one thing the sync needs from a warehouse: run a model read-only, stream Arrow batches.

Every engine is a `WarehouseResource` (a Dagster ConfigurableResource, so secrets arrive through
`EnvVar` and never land in Dagster's storage). Snapshot, diff, events, partitions, the change guard,
dry runs and the trigger sensor see a warehouse only through `read_model`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import dagster as dg
import pyarrow as pa
from pydantic import Field

BATCH_ROWS = 100_000


class WarehouseError(RuntimeError):
    """The warehouse could not be reached or the model could not run; the message names the
    warehouse (type, host, database; never a secret) and the fix."""


class WarehouseResource(dg.ConfigurableResource):
    """A warehouse that runs models read-only and streams their rows as Arrow record batches."""

    kind: ClassVar[str] = "warehouse"
    #: sqlglot dialect used to check models at load time
    dialect: ClassVar[str] = ""

    statement_timeout_seconds: float | None = Field(
        default=None,
        description="Cancel a model that runs longer than this (seconds). Default: no limit.",
    )

    def read_model(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[pa.RecordBatchReader]:
        """Run `sql` read-only, binding `$partition_start`/`$partition_end` from `params`."""
        raise NotImplementedError

    def describe(self) -> str:
        """Which warehouse this is, for messages: type, host, database; never a secret."""
        return self.kind


def stream(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader:
    """A reader over normalised batches: one batch in memory at a time."""
    return pa.RecordBatchReader.from_batches(schema, batches)
