"""What a run tells its user: log lines, materialization metadata and check results.

Row values shown here (keys, IDs, fields) go through the sync's `Redaction` (redact.py) first.

Built from the figures the steps return (`steps.py`), so that what a step does and how it is shown
in the Dagster UI change independently. Nothing here reads the state or talks to RudderStack.
"""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from .config import CALL_COLUMN_KEYS, CHANGE_TYPES, SyncConfig
from .delivery import DeliveryReport
from .diff import REJECTED_SAMPLE, DiffSummary
from .guard import GuardVerdict
from .redact import NO_REDACTION, Redaction, field_places

PREVIEW_ROWS = 10
# The diff's preview fits the Dagster UI at 1400 px: a few fields, and no cell longer than this
# (a longer value is cut, "…" at its end); a messageId shows its first characters only.
PREVIEW_FIELDS = 2
PREVIEW_CHARS = 10
PREVIEW_MESSAGE_ID_CHARS = 8
# How wide the preview may be, in characters of its narrowest columns (2 a column for padding):
# what fits beside the metadata keys at 1400 px (measured: 78 such characters took 627 px of
# the 603 there are). Fields are left out of the preview when they would not fit.
PREVIEW_WIDTH_CHARS = 74
CHANGE_GUARD = "change_guard"
REJECTED_ROWS = "rejected_rows"
GATEWAY_REJECTIONS = "gateway_rejections"
QUARANTINED_ROWS = "quarantined_rows"


def in_window(window: str | None) -> str:
    """' window K' for a window's log lines, '' for an unpartitioned sync."""
    return f" window {window}" if window else ""


# -- snapshot ------------------------------------------------------------------------------------


def snapshot_metadata(
    rows_by_window: dict[str, int],
    types: Mapping[str, str],
    state: Path | str,
    partitioned: bool,
    read_in_place: bool = False,
    moved: str | None = None,
) -> dict[str, Any]:
    """`state`: the sync's state folder, or (with `state_schema`) where in the warehouse it is;
    `moved`: what this run did when it found a local state to move into the warehouse."""
    metadata: dict[str, Any] = {
        "dagster/row_count": sum(rows_by_window.values()),
        # True: the rows stayed in the DuckDB warehouse; the diff step reads them there.
        "read_in_place": read_in_place,
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name, str(kind)) for name, kind in types.items()]
        ),
        "state": MetadataValue.path(state) if isinstance(state, Path) else state,
    }
    if moved:
        metadata["state_moved"] = moved
    if partitioned:
        metadata["rows_per_window"] = MetadataValue.json(rows_by_window)
    return metadata


# -- diff ----------------------------------------------------------------------------------------


def log_diff(
    log: Any,
    sync: SyncConfig,
    summary: DiffSummary,
    window: str,
    redaction: Redaction = NO_REDACTION,
) -> None:
    name = f"sync '{sync.name}'{in_window(window)}"
    counts = ", ".join(f"{k} {v} (send {summary.to_send[k]})" for k, v in summary.counts.items())
    first = " (first run)" if summary.first_run and not window else ""
    log.info(f"{name}{first}: {summary.model_rows} model rows; {counts}")
    if summary.first_run and sync.type == "track" and not sync.send_initial_results:
        log.info(
            f"{name}: the initial result set is recorded without sending "
            "(send_initial_results is false)."
        )
    # A duplicated key is one rejected row per copy, with one reason: said once.
    for pk, reason in dict.fromkeys(summary.rejected_sample):
        why = sync.rejected_on_purpose.get(pk)
        note = f"; {why}" if why else ""
        shown = redaction.key(pk)
        log.warning(f"{name}: row {sync.primary_key}={shown} not sent: {reason}{note}")
    if summary.rejected_count > len(summary.rejected_sample):
        more = summary.rejected_count - len(summary.rejected_sample)
        log.warning(f"{name}: ... and {more} more rejected rows")


def diff_metadata(
    sync: SyncConfig,
    summaries: dict[str, DiffSummary],
    frame: pd.DataFrame,
    redaction: Redaction = NO_REDACTION,
    frame_left_out: int = 0,
) -> dict[str, Any]:
    values = list(summaries.values())
    # The UI lists metadata in this order: the counts first, the preview after them.
    metadata: dict[str, Any] = {"dagster/row_count": len(frame)}
    if frame_left_out:
        # A baseline of millions of rows: its silent changes are counted, not all listed.
        metadata["silent_changes_not_in_output"] = frame_left_out
    for change in CHANGE_TYPES:
        metadata[change] = sum(s.counts[change] for s in values)
    for change in CHANGE_TYPES:
        metadata[f"{change}_to_send"] = sum(s.to_send[change] for s in values)
    metadata.update(
        model_rows=sum(s.model_rows for s in values),
        first_run=any(s.first_run for s in values),
        rejected_rows=sum(s.rejected_count for s in values),
        preview=table_metadata(
            preview_frame(sync, redaction.frame(frame.head(PREVIEW_ROWS), field_places(sync)))
        ),
    )
    metadata.update(redaction_metadata(redaction))
    sample = _rejected_rows_sample(summaries, redaction)
    if sample:
        metadata["rejected_sample"] = MetadataValue.json(sample)
    if len(summaries) > 1 or sync.partitions:
        metadata["windows"] = windows_metadata(
            {
                key: {**s.counts, "to_send": sum(s.to_send.values()), "rejected": s.rejected_count}
                for key, s in summaries.items()
            }
        )
    return metadata


def preview_frame(sync: SyncConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The diff's first rows as the UI shows them inline, narrow enough for a 1400 px window:
    (window,) key, change (marked when it sends nothing), the event or name, the IDs, fields
    while they fit (at most PREVIEW_FIELDS) and the messageId's start. Long values are cut; the
    whole diff is the asset's output."""
    head = frame.head(PREVIEW_ROWS)
    fields = [str(c) for c in head.columns[head.columns.get_loc("anonymous_id") + 1 :]]
    shown: dict[str, list[Any]] = {}
    if "partition" in head.columns:
        shown["window"] = list(head["partition"])
    shown[sync.primary_key] = _cut_all(head[sync.primary_key])
    shown["change"] = [
        change if send else f"{change} (not sent)"
        for change, send in zip(head["change_type"], head["will_send"], strict=True)
    ]
    named, title = _event_or_name(sync, head, fields)
    if named is not None:  # wraps at its spaces: its words are cut, and its length
        shown[title] = [_cut(_cut_words(value), 2 * PREVIEW_CHARS) for value in named]
    shown["userId"] = _cut_all(head["user_id"])
    shown["anonymousId"] = _cut_all(head["anonymous_id"])
    message_ids = [_cut(value, PREVIEW_MESSAGE_ID_CHARS + 1) for value in head["message_id"]]
    width = sum(_width(name, values) for name, values in shown.items())
    width += _width("messageId", message_ids)
    for field in fields[: len(sync.mapping)][:PREVIEW_FIELDS]:
        values = _cut_all(head[field])
        name = field if field not in shown else f"{field} (field)"
        width += _width(name, values)
        if width > PREVIEW_WIDTH_CHARS:
            break
        shown[name] = values
    shown["messageId"] = message_ids
    return pd.DataFrame(shown)


def _event_or_name(
    sync: SyncConfig, head: pd.DataFrame, fields: list[str]
) -> tuple[list[Any] | None, str]:
    """The track event's name (fixed, or from its column), or the page/screen name, groupId or
    previousId, with its column's title; (None, '') for identify. `fields`: the frame's field
    columns, mapped fields first, then the event's, then the call's (`diff.pending_frame`)."""
    extras = fields[len(sync.mapping) :]
    if sync.type == "track":
        if sync.event_columns:
            return list(head[extras[0]]), "event"
        return [sync.event_name(change) for change in head["change_type"]], "event"
    if sync.call_column:
        return list(head[extras[0]]), CALL_COLUMN_KEYS[sync.type][1]
    return None, ""


def _cut_all(values: Any) -> list[Any]:
    return [_cut(value, PREVIEW_CHARS) for value in values]


def _cut(value: Any, chars: int) -> Any:
    """A cell at most `chars` characters long, "…" ending a cut one; short numbers, booleans
    and None stay as they are."""
    cell = _cell(value)
    text = cell if isinstance(cell, str) else str(cell)
    if cell is None or (not isinstance(cell, str) and len(text) <= chars):
        return cell
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _cut_words(value: Any) -> Any:
    """A text whose words are at most PREVIEW_CHARS long (the narrowest its column can get)."""
    if not isinstance(value, str):
        return value
    return " ".join(_cut(word, PREVIEW_CHARS) for word in value.split())


def _width(name: str, values: list[Any]) -> int:
    """The narrowest a column can be, in characters: its title or its longest word, padded."""
    words = [len(word) for value in values if value is not None for word in str(value).split()]
    return max([len(name), *words]) + 2


def rejected_rows_check(
    summaries: dict[str, DiffSummary], redaction: Redaction = NO_REDACTION
) -> AssetCheckResult:
    count = sum(s.rejected_count for s in summaries.values())
    sample = _rejected_rows_sample(summaries, redaction)
    return _warning_check(REJECTED_ROWS, "rejected", count, sample)


def _rejected_rows_sample(
    summaries: dict[str, DiffSummary], redaction: Redaction
) -> list[dict[str, Any]]:
    return [
        {"key": redaction.key(pk), "reason": reason, **({"window": key} if key else {})}
        for key, summary in summaries.items()
        for pk, reason in dict.fromkeys(summary.rejected_sample)
    ][:REJECTED_SAMPLE]


def change_guard_check(
    log: Any, sync: SyncConfig, verdict: GuardVerdict, approved: bool, mode: dict[str, bool]
) -> AssetCheckResult:
    """The blocking check: failed unless the diff passed the guard or the run approved it."""
    if not verdict.passed:
        action = (
            "approved by run config approve_large_change, delivering"
            if approved
            else "nothing will be sent or committed. If this change is intended, re-run with "
            f"run config ops: {{{sync.name}__diff: {{config: {{approve_large_change: true}}}}}}"
        )
        (log.warning if approved else log.error)(
            f"sync '{sync.name}': change guard tripped ({'; '.join(verdict.tripped)}): {action}"
        )
    return AssetCheckResult(
        check_name=CHANGE_GUARD,
        passed=verdict.passed or approved,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            **verdict.figures,
            "tripped": "; ".join(verdict.tripped) or "none",
            "approved": approved,
            **mode,
            **{k: -1 if v is None else v for k, v in sync.guard.model_dump().items()},
        },
    )


# -- events --------------------------------------------------------------------------------------


def announce_dry_run(
    log: Any, sync: SyncConfig, reason: str, how: str, samples: dict[str, Any]
) -> None:
    log.warning(
        f"DRY RUN for sync '{sync.name}': {reason}, so events are built and validated but NOT "
        f"sent.{how}"
    )
    for change, payload in samples.items():
        log.info(f"would send ({change}): {orjson.dumps(payload).decode()}")


def log_window_done(
    log: Any,
    sync: SyncConfig,
    key: str,
    number: int,
    count: int,
    window: DeliveryReport,
    total: DeliveryReport,
) -> None:
    """One window's own counts first; the run's total so far after them."""
    verb = "validated" if window.status == "dry_run" else "accepted"
    log.info(
        f"sync '{sync.name}': window {key} done ({number} of {count}): {window.accepted} events "
        f"{verb}, {len(window.rejected)} rejected; run so far: {total.accepted} {verb}, "
        f"{len(total.rejected)} rejected, {total.stats.events_per_second:,.0f} events/s"
    )


def rejected_sample(
    sync: SyncConfig, frame: pd.DataFrame, redaction: Redaction = NO_REDACTION
) -> list[dict[str, Any]]:
    """The first events of a run's delivery frame that the gateway (or the dry run) rejected."""
    rejected = frame[frame["status"] == "rejected"].head(REJECTED_SAMPLE)
    return [
        {"key": redaction.key(str(key)), "change_type": change, "message_id": mid, "reason": reason}
        for key, change, mid, reason in zip(
            rejected[sync.primary_key],
            rejected["change_type"],
            rejected["message_id"],
            rejected["error"],
            strict=True,
        )
    ]


def log_delivery(log: Any, sync: SyncConfig, report: DeliveryReport, rejected: list[dict]) -> None:
    stats = report.stats
    verb = "validated (dry run, nothing sent)" if report.status == "dry_run" else "delivered"
    limits = ""
    if stats.throttled:
        limits += f", {stats.throttled} rate-limited (429)"
    if stats.paced_seconds:
        limits += f", paced {stats.paced_seconds:.1f}s by max_events_per_second"
    log.info(
        f"sync '{sync.name}': {report.accepted} events {verb}, {len(report.rejected)} rejected, "
        f"{report.committed_without_event} changes committed without an event; "
        f"{stats.requests} requests, {stats.retries} retries{limits}, {stats.seconds:.1f}s"
    )
    for row in rejected:
        log.warning(
            f"sync '{sync.name}': {row['change_type']} event for {sync.primary_key}={row['key']} "
            f"rejected, kept pending for the next run: {row['reason']}"
        )


def log_quarantine(log: Any, sync: SyncConfig, count: int, sample: list[dict[str, Any]]) -> None:
    log.warning(
        f"sync '{sync.name}': {count} quarantined (failed {sync.max_attempts} times), not sent. "
        "They are re-admitted when their row changes, or by run config ops: "
        f"{{{sync.name}__diff: {{config: {{retry_quarantined: true}}}}}}"
    )
    for row in sample:
        log.warning(
            f"sync '{sync.name}': quarantined {sync.primary_key}={row['key']}"
            f"{in_window(row.get('window'))} after {row['attempts']} attempts since "
            f"{row['first_seen']}: {row['reason']}"
        )


def delivery_metadata(report: DeliveryReport, samples: dict, rejected: list[dict]) -> dict:
    stats = report.stats
    metadata: dict[str, Any] = {
        "dagster/row_count": report.accepted + len(report.rejected),
        "status": report.status,
        "events_accepted": report.accepted,
        "events_rejected": len(report.rejected),
        "committed_without_event": report.committed_without_event,
        "requests": stats.requests,
        "retries": stats.retries,
        "bytes_uncompressed": stats.bytes_uncompressed,
        "bytes_sent": stats.bytes_sent,
        "seconds": round(stats.seconds, 3),
        "events_per_second": round(stats.events_per_second, 1),
        "throttled_requests": stats.throttled,
        "paced_seconds": round(stats.paced_seconds, 3),
    }
    for change, payload in samples.items():
        metadata[f"sample_{change}"] = MetadataValue.json(payload)
    if rejected:
        metadata["rejected_sample"] = MetadataValue.json(rejected)
    return metadata


def gateway_rejections_check(report: DeliveryReport, sample: list[dict]) -> AssetCheckResult:
    return _warning_check(GATEWAY_REJECTIONS, "rejected", len(report.rejected), sample)


def quarantined_rows_check(sync: SyncConfig, count: int, sample: list[dict]) -> AssetCheckResult:
    max_attempts = -1 if sync.max_attempts is None else sync.max_attempts
    return _warning_check(QUARANTINED_ROWS, "quarantined", count, sample, max_attempts=max_attempts)


def _warning_check(
    name: str, counted: str, count: int, sample: list[dict[str, Any]], **figures: Any
) -> AssetCheckResult:
    """A WARN check that fails when ``count`` rows were left out; the first ones as a sample."""
    return AssetCheckResult(
        check_name=name,
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={counted: count, **figures, "sample": MetadataValue.json(sample)},
    )


def redaction_metadata(redaction: Redaction) -> dict[str, Any]:
    """Says on an asset that its shown values are masked, and when its frame keeps no rows."""
    metadata: dict[str, Any] = {}
    if redaction.active:
        metadata["redacted"] = redaction.listed
    if not redaction.store_frames:
        metadata["output_frame"] = "no rows stored (store_frames: false): counts only"
    return metadata


# -- tables the UI renders inline ------------------------------------------------------------------


def windows_metadata(per_window: dict[str, dict[str, Any]]) -> MetadataValue:
    """One row per window, in order: the window's own counts (never running totals)."""
    frame = pd.DataFrame.from_dict(per_window, orient="index")
    return table_metadata(frame.rename_axis("window").reset_index())


def table_metadata(frame: pd.DataFrame) -> MetadataValue:
    """A small DataFrame as a table metadata value (rendered inline in the Dagster UI).

    Table cells hold scalars only: nested values (lists, objects) are shown as their JSON.
    """
    columns = [str(c) for c in frame.columns]
    records = [
        TableRecord(dict(zip(columns, (_cell(v) for v in row), strict=True)))
        for row in frame.itertuples(index=False)
    ]
    schema = TableSchema(
        columns=[TableColumn(c, _column_type(frame[c].dtype)) for c in frame.columns]
    )
    return MetadataValue.table(records, schema=schema)


def _column_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "string"


def _cell(value: Any) -> str | int | float | bool | None:
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()  # numpy and pandas scalars
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, dict, tuple)):
        return orjson.dumps(value, default=str).decode()
    return str(value)
