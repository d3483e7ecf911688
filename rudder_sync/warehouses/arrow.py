"""Arrow columns that the state (DuckDB) and the JSON rules cannot take as drivers send them.

Drivers return some values as extension types: ADBC PostgreSQL's `numeric` is an opaque type over
its text, other vendors send decimals wider than DuckDB's 38 digits. A decimal whose precision is
known and at most 38 becomes `decimal128(p, s)` (DuckDB `DECIMAL(p,s)`: exact digits and scale in
the payload). Wider or unconstrained ones become DuckDB `JSON` numbers: integers of any size stay
exact, fractions keep a double's ~15-17 significant digits (DuckDB parses JSON numbers that way).
`NaN` and infinities become `null` either way.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_NOT_FINITE = pa.array(["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf", "+Infinity"])


def exact_number_json(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text of numbers -> arrow.json (DuckDB JSON) numbers; non-finite values -> null."""
    return pa.ExtensionArray.from_storage(pa.json_(), _finite_text(values))


def exact_decimal(values: pa.Array | pa.ChunkedArray, precision: int, scale: int) -> pa.Array:
    """Text of numbers -> decimal128(precision, scale), exactly; non-finite values -> null."""
    return pc.cast(_finite_text(values), pa.decimal128(precision, scale))


def _finite_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values.cast(pa.string())
    return pc.if_else(pc.is_in(text, value_set=_NOT_FINITE), pa.scalar(None, pa.string()), text)


def opaque_storage(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """An extension array's storage: what DuckDB would read for a type it does not know."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.storage if isinstance(values, pa.ExtensionArray) else values
