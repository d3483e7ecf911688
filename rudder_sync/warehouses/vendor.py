"""What the vendor engines (Snowflake, BigQuery, Redshift, Databricks) share.

Their connectors hand over Arrow that DuckDB and the JSON rules do not all take as is: time zone
names DuckDB may not know, nanosecond timestamps, decimals wider than 38 digits, JSON as plain
text. Each engine decides, from the warehouse's own column types, the Arrow schema its rows get
(`target` types below); `conform` casts every batch to that schema, so all batches of one model
have one schema whatever each chunk held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import UTC as _UTC
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .arrow import exact_number_json, opaque_storage
from .base import BATCH_ROWS

UTC = "UTC"
JSON = pa.json_()


def timestamp(tz: bool) -> pa.DataType:
    """Microsecond timestamps (DuckDB's precision), zone-aware ones labelled UTC."""
    return pa.timestamp("us", tz=UTC if tz else None)


def plain_type(t: pa.DataType) -> pa.DataType:
    """A connector's Arrow type made DuckDB-friendly, recursively: timestamps in microseconds
    (UTC when zone-aware), times in microseconds, decimals wider than 38 digits as text (only a
    top-level column keeps exact JSON digits, see `conform`), unknown extension types as their
    storage, large strings/binaries as plain ones."""
    if isinstance(t, pa.ExtensionType):
        return t if t.extension_name in ("arrow.json", "arrow.uuid") else plain_type(t.storage_type)
    if pa.types.is_timestamp(t):
        return timestamp(t.tz is not None)
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_decimal(t) and (t.precision > 38 or pa.types.is_decimal256(t)):
        if t.precision <= 38:
            return pa.decimal128(t.precision, t.scale)
        return pa.string()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(plain_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(plain_type(t.key_type), plain_type(t.item_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(plain_type(t.value_type), t.list_size)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(plain_type(t.value_type))
    if pa.types.is_dictionary(t):
        return plain_type(t.value_type)
    return t


def conform(
    column: pa.Array | pa.ChunkedArray, target: pa.DataType, exact_text: bool = False
) -> pa.Array:
    """One column as `target`: JSON from its text, exact numbers as JSON digits, else a cast.

    `exact_text`: the column holds numbers (decimal256, text) whose exact digits become a JSON
    number (`arrow.exact_number_json`).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(target, pa.ExtensionType) and target.extension_name == "arrow.json":
        if exact_text:
            return exact_number_json(opaque_storage(column))
        if column.type == target:
            return column
        storage = opaque_storage(column)
        if not pa.types.is_string(storage.type):
            storage = pc.cast(storage, pa.string())
        return pa.ExtensionArray.from_storage(JSON, storage)
    if isinstance(column.type, pa.ExtensionType) and column.type != target:
        column = opaque_storage(column)
    if column.type == target:
        return column
    naive = pa.types.is_timestamp(target) and target.tz is None
    if naive and pa.types.is_timestamp(column.type) and column.type.tz is not None:
        column = column.cast(pa.timestamp(column.type.unit))  # keep the wall time as given
    options = pc.CastOptions(target_type=target, allow_time_truncate=True)
    return pc.cast(column, options=options)


def batches_of(
    tables: Iterable[pa.Table | pa.RecordBatch],
    schema: pa.Schema,
    exact: frozenset[str] = frozenset(),
) -> Iterator[pa.RecordBatch]:
    """Each connector chunk cut to at most BATCH_ROWS rows and conformed to `schema`."""
    for table in tables:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.num_rows == 0:
            continue
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            yield pa.RecordBatch.from_arrays(
                [
                    conform(column, field.type, field.name in exact)
                    for field, column in zip(schema, batch.columns, strict=True)
                ],
                schema=schema,
            )


def utc_datetime(value: Any) -> Any:
    """A zone-aware datetime as a plain `datetime` in UTC (drivers look at the class name);
    anything else unchanged."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        utc = value.astimezone(_UTC)
        return datetime(
            utc.year,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
            utc.microsecond,
            tzinfo=_UTC,
        )
    return value


def whole_seconds(seconds: float) -> int:
    """A timeout in whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def first_line(text: str) -> str:
    """The driver's words on one line, without trailing noise."""
    return " ".join(str(text).split()).rstrip(". ") or "unknown error"


def close_quietly(*steps: Any) -> None:
    """Close quietly: after a dropped connection, closing raises too; the first error counts."""
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001, S112 - the original error is already on its way
            continue
