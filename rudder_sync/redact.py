"""The one place that masks row values the user listed under `redact:` (docs/semantics.md).

Row values leave the product in two ways: to RudderStack, as the events (never masked), and to
the user's own tooling: Dagster metadata (the diff's preview, the `sample_<change>` payloads, the
rejected and quarantined samples), log lines, and the DataFrames the IO manager stores. Everything
in the second group goes through a `Redaction` first.

A listed value becomes `sha256:` and 12 hex digits of SHA-256 over the sync's name and the value:
the same value gives the same mask in every run, dry run and place of one sync, so a row can be
followed between runs without being shown. The "salt" (the sync's name) is no secret: it hides a
value from a reader, but a reader who guesses a value can confirm the guess. That is why
`redact: all` (every column value, including low-entropy ones such as a plan or a country,
confirmed by a few guesses) blanks the values to `<redacted>` and hashes only the primary key, so
rows stay distinguishable. Nulls stay null: a missing ID is a diagnosis, not a value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from .config import REDACT_ALL as ALL
from .config import REDACT_ANONYMOUS_ID as ANONYMOUS_ID
from .config import REDACT_PRIMARY_KEY as PRIMARY_KEY
from .config import REDACT_USER_ID as USER_ID
from .config import SyncConfig, redact_targets
from .diff import _frame_fields  # the diff names its field columns

HASH_PREFIX = "sha256:"
HASH_HEX_CHARS = 12
BLANK = "<redacted>"
# Columns at least this long are hashed by DuckDB (`Redaction._masked_column`); shorter ones (a
# preview, a sample) in Python, which costs less than a DuckDB connection.
VECTORIZED_ROWS = 1_000


def field_places(sync: SyncConfig) -> list[str]:
    """The diff frame's field columns, in its order (`diff._frame_fields`)."""
    return [name for name, _ in _frame_fields(sync)]


@dataclass(frozen=True)
class Redaction:
    """What one sync masks (`redaction_of`), and the masking of each thing it reports."""

    sync_name: str
    primary_key: str
    places: frozenset[str]  # PRIMARY_KEY, USER_ID, ANONYMOUS_ID and field places
    every: bool  # `redact: all`: blank every value, hash the primary key
    store_frames: bool = True
    listed: str = ""  # the names as the YAML lists them ("all" for all), for the metadata

    @property
    def active(self) -> bool:
        return bool(self.places)

    def masks(self, place: str) -> bool:
        return place in self.places

    def mask(self, value: Any, place: str) -> Any:
        """The value as it may be shown: masked when its place is listed; null stays null."""
        value = _plain(value)
        if value is None or place not in self.places:
            return value
        if self.every and place != PRIMARY_KEY:
            return BLANK
        text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
        digest = hashlib.sha256(f"{self.sync_name}\x00{text}".encode()).hexdigest()
        return HASH_PREFIX + digest[:HASH_HEX_CHARS]

    def key(self, value: Any) -> Any:
        """A primary key value as it may be shown (logs, samples)."""
        return self.mask(value, PRIMARY_KEY)

    def rows(self, sample: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A rejected or quarantined sample (dicts with a "key") with its keys masked."""
        return [
            {**row, "key": self.key(row["key"])} if "key" in row else dict(row) for row in sample
        ]

    def keyed(self, sample: Iterable[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """The diff's (key, reason) sample with its keys masked."""
        return [(self.key(pk), reason) for pk, reason in sample]

    def payload(self, sync_type: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """A sample event as the UI and the logs show it: its listed values masked."""
        shown: dict[str, Any] = orjson.loads(orjson.dumps(event))
        if not self.active:
            return shown
        for place in (USER_ID, ANONYMOUS_ID, "event", "name", "groupId", "previousId"):
            if place in shown and self.masks(place):
                shown[place] = self.mask(shown[place], place)
        container = {"identify": ("context", "traits"), "group": ("traits",)}.get(
            sync_type, ("properties",)
        )
        fields = _at(shown, container)
        context = shown.get("context")
        for place in self.places - {PRIMARY_KEY, USER_ID, ANONYMOUS_ID}:
            if place.startswith("context.") and isinstance(context, dict):
                _mask_path(context, place.split(".")[1:], lambda v, p=place: self.mask(v, p))
            elif isinstance(fields, dict):
                _mask_path(fields, place.split("."), lambda v, p=place: self.mask(v, p))
        return shown

    def frame(self, frame: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
        """A diff or events frame with its listed columns masked (a copy; the input is kept).

        `fields`: the field places of the frame's columns after `anonymous_id` (`field_places`);
        [] for the events frame, which has no field columns.
        """
        if not self.active:
            return frame
        columns: dict[str, str] = {self.primary_key: PRIMARY_KEY}
        if "anonymous_id" in frame.columns:
            columns.update(user_id=USER_ID, anonymous_id=ANONYMOUS_ID)
            start = frame.columns.get_loc("anonymous_id") + 1
            columns.update(zip((str(c) for c in frame.columns[start:]), fields, strict=False))
        masked = frame.copy()
        for column, place in columns.items():
            if column in masked.columns and self.masks(place):
                values = self._masked_column(masked[column], place)
                masked[column] = pd.Series(
                    pd.arrays.ArrowExtensionArray(values), index=masked.index
                )
        return masked

    def _masked_column(self, series: pd.Series, place: str) -> pa.Array:
        """A column masked as `mask` masks each value. Long text and integer columns (nearly
        all) are hashed by DuckDB, vectorized (3 columns of 1M values: 10 s where Python took 51 s,
        both on 2 busy cores); other columns go through `mask` value by value."""
        if self.every and place != PRIMARY_KEY:
            return pa.array(
                [None if v is None else BLANK for v in map(_plain, series)], pa.string()
            )
        kind = series.dtype
        if (
            len(series) < VECTORIZED_ROWS
            or pd.api.types.is_bool_dtype(kind)
            or not (pd.api.types.is_string_dtype(kind) or pd.api.types.is_integer_dtype(kind))
        ):
            return pa.array([self.mask(value, place) for value in series], pa.string())
        try:
            values = pa.table({"v": pa.array(series, from_pandas=True)})
        except (pa.ArrowException, TypeError, ValueError):  # an object column of mixed values
            return pa.array([self.mask(value, place) for value in series], pa.string())
        if not (pa.types.is_string(values["v"].type) or pa.types.is_integer(values["v"].type)):
            return pa.array([self.mask(value, place) for value in series], pa.string())
        salt = self.sync_name.replace("'", "''")
        query = (
            f"select '{HASH_PREFIX}' || left(sha256('{salt}' || chr(0) || v::varchar), "
            f"{HASH_HEX_CHARS}) as m from values_"
        )
        values_ = values  # noqa: F841 - read by DuckDB's replacement scan
        with duckdb.connect() as conn:
            return conn.sql(query).to_arrow_table().column("m").combine_chunks()

    def stored(self, frame: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
        """What the IO manager stores: the masked frame, or (`store_frames: false`) none of its
        rows, with its columns kept so readers of the asset still get a frame."""
        if not self.store_frames:
            return frame.iloc[0:0]
        return self.frame(frame, fields)


NO_REDACTION = Redaction("", "", frozenset(), every=False)


def redaction_of(sync: SyncConfig) -> Redaction:
    """The sync's `redact:` (its own names with the project's, merged by `config.parse_config`)
    and `store_frames`, as places to mask."""
    names = sync.redact
    every = names == ALL
    places: set[str] = set()
    if every:
        places = {PRIMARY_KEY, USER_ID, ANONYMOUS_ID, *field_places(sync)}
    elif names:
        targets = redact_targets(sync)
        for name in names:
            places |= targets.get(name, set())
    return Redaction(
        sync.name,
        sync.primary_key,
        frozenset(places),
        every=every,
        store_frames=sync.store_frames is not False,
        listed=ALL if every else ", ".join(names or []),
    )


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as Python values; NaN, NA and NaT as None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if value is pd.NaT or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value


def _at(event: dict[str, Any], path: tuple[str, ...]) -> Any:
    found: Any = event
    for part in path:
        found = found.get(part) if isinstance(found, dict) else None
    return found


def _mask_path(fields: dict[str, Any], path: list[str], mask: Any) -> None:
    """Mask the value at a dotted field path in place (the nested objects a dotted mapping
    key makes), when it is there."""
    for part in path[:-1]:
        fields = fields.get(part)  # type: ignore[assignment]
        if not isinstance(fields, dict):
            return
    if path[-1] in fields:
        fields[path[-1]] = mask(fields[path[-1]])
