"""Arrow columns that the state (DuckDB) and the JSON rules cannot take as drivers send them.

Drivers return some values as extension types: ADBC PostgreSQL's `numeric` is an opaque type over
its text, other vendors send decimals wider than DuckDB's 38 digits as text. Those become DuckDB
`JSON` holding the number's exact digits (so `12.50` is sent as the JSON number `12.50`, never
rounded through a float), with `NaN`/`Infinity` as `null`, before they reach the state.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_NOT_FINITE = pa.array(["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf", "+Infinity"])


def exact_number_json(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text of exact numbers -> arrow.json (DuckDB JSON) numbers; non-finite values -> null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values.cast(pa.string())
    finite = pc.if_else(pc.is_in(text, value_set=_NOT_FINITE), pa.scalar(None, pa.string()), text)
    return pa.ExtensionArray.from_storage(pa.json_(), finite)


def opaque_storage(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """An extension array's storage: what DuckDB would read for a type it does not know."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.storage if isinstance(values, pa.ExtensionArray) else values
