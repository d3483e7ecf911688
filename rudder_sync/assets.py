"""The asset factory: `<sync>/snapshot`, `<sync>/diff` and `<sync>/events` for one sync.

Asset bodies stay short and delegate: the warehouse streams the model, `diff` computes the changes,
`delivery` sends them. All state that the next run needs lives in the sync's own DuckDB state file,
never in Dagster's instance or IO manager.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .config import SyncConfig
from .delivery import REJECTED_SAMPLE, DeliveryReport, deliver_pending, delivery_frame
from .diff import DiffSummary, ModelColumnsError, check_model_columns, compute_diff, pending_frame
from .events import sample_payloads
from .rudderstack import RudderstackError, RudderstackResource
from .state import StateError, SyncState, open_state
from .warehouse import DuckDBWarehouse, WarehouseError

PREVIEW_ROWS = 10


def asset_key(sync: SyncConfig, step: str) -> AssetKey:
    return AssetKey([sync.name, step])


def build_sync_assets(sync: SyncConfig, state_dir: Path) -> list[AssetsDefinition]:
    """The three assets of one sync, in the sync's own group."""

    @asset(
        key=asset_key(sync, "snapshot"),
        group_name=sync.name,
        kinds={"duckdb"},
        description=f"Result of the model of sync '{sync.name}', stored in its state.",
    )
    def snapshot(
        context: AssetExecutionContext, warehouse: DuckDBWarehouse, rudderstack: RudderstackResource
    ) -> MaterializeResult:
        with (
            _open_state(sync, state_dir, rudderstack) as state,
            warehouse.read_model(sync.model) as reader,
        ):
            check_model_columns(sync, reader.schema.names)
            schema = reader.schema
            rows = state.replace_model_rows(reader)
        context.log.info(f"sync '{sync.name}': model returned {rows} rows")
        return MaterializeResult(
            metadata={
                "dagster/row_count": rows,
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(f.name, str(f.type)) for f in schema]
                ),
                "state": MetadataValue.path(str(state_dir)),
            }
        )

    @asset(
        key=asset_key(sync, "diff"),
        group_name=sync.name,
        deps=[snapshot],
        kinds={"duckdb", "pandas"},
        description=f"Rows added, changed or removed since the last delivery of '{sync.name}'.",
    )
    def diff(
        context: AssetExecutionContext, rudderstack: RudderstackResource
    ) -> Output[pd.DataFrame]:
        with _open_state(sync, state_dir, rudderstack) as state:
            if not state.has_table("model_rows"):
                raise Failure(
                    f"sync '{sync.name}': no model snapshot yet; materialize "
                    f"{sync.name}/snapshot first."
                )
            summary = compute_diff(state, sync, datetime.now(UTC))
            frame = pending_frame(state, sync)
        _log_diff(context, sync, summary)
        return Output(frame, metadata=_diff_metadata(sync, summary, frame))

    @asset(
        key=asset_key(sync, "events"),
        group_name=sync.name,
        deps=[diff],
        kinds={"rudderstack"},
        description=f"Events of '{sync.name}' delivered to RudderStack (one row per event).",
    )
    def events(
        context: AssetExecutionContext, rudderstack: RudderstackResource
    ) -> Output[pd.DataFrame]:
        with _open_state(sync, state_dir, rudderstack) as state:
            state.check_destination(destination_label(rudderstack))
            samples = sample_payloads(state, sync)
            if rudderstack.dry_run:
                context.log.warning(
                    f"DRY RUN for sync '{sync.name}': RUDDERSTACK_DATA_PLANE_URL is not set, so "
                    "events are built and validated but NOT sent. Set it (and "
                    "RUDDERSTACK_WRITE_KEY) to deliver."
                )
                for change, payload in samples.items():
                    context.log.info(f"would send ({change}): {orjson.dumps(payload).decode()}")
            report = deliver_pending(state, sync, rudderstack, context.run.run_id, context.log)
            frame = delivery_frame(state, context.run.run_id, sync)
        rejected = frame[frame["status"] == "rejected"].head(REJECTED_SAMPLE)
        rejected_sample = [
            {"key": str(key), "change_type": change, "message_id": mid, "reason": reason}
            for key, change, mid, reason in zip(
                rejected[sync.primary_key],
                rejected["change_type"],
                rejected["message_id"],
                rejected["error"],
                strict=True,
            )
        ]
        _log_delivery(context, sync, report, rejected_sample)
        return Output(frame, metadata=_delivery_metadata(report, samples, rejected_sample))

    return [snapshot, diff, events]


def destination_label(rudderstack: RudderstackResource) -> str:
    """What the state records as its destination: the data plane URL (never the key)."""
    if rudderstack.dry_run:
        return "dry run"
    return (rudderstack.data_plane_url or "").rstrip("/")


def build_sync_job(sync: SyncConfig) -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        name=sync.name,
        selection=[asset_key(sync, step) for step in ("snapshot", "diff", "events")],
        description=f"Sync '{sync.name}': run the model, diff it, deliver the changes.",
    )


@contextmanager
def _open_state(
    sync: SyncConfig, state_dir: Path, rudderstack: RudderstackResource
) -> Iterator[SyncState]:
    """The sync's state (the dry-run one when nothing is sent), with errors named for the UI."""
    with _failures_named(sync), open_state(state_dir, sync.name, rudderstack.dry_run) as state:
        yield state


class _failures_named:
    """Turn our own errors into a Dagster Failure whose message names the sync and the fix."""

    def __init__(self, sync: SyncConfig) -> None:
        self.sync = sync

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, Failure):
            return False
        if isinstance(exc, WarehouseError):
            raise Failure(f"sync '{self.sync.name}': the model failed: {exc}") from None
        if isinstance(exc, (ModelColumnsError, StateError)):
            raise Failure(str(exc)) from None
        if isinstance(exc, RudderstackError):
            raise Failure(
                f"sync '{self.sync.name}': delivery stopped: {exc}. Changes that were accepted "
                "are committed; the rest stay pending and are sent at the next run."
            ) from None
        return False


def _log_diff(context: AssetExecutionContext, sync: SyncConfig, summary: DiffSummary) -> None:
    counts = ", ".join(f"{k} {v} (send {summary.to_send[k]})" for k, v in summary.counts.items())
    first = " (first run)" if summary.first_run else ""
    context.log.info(f"sync '{sync.name}'{first}: {summary.model_rows} model rows; {counts}")
    if summary.first_run and sync.type == "track" and not sync.send_initial_results:
        context.log.info(
            f"sync '{sync.name}': first run records the baseline without sending "
            "(send_initial_results is false)."
        )
    for pk, reason in summary.rejected_sample:
        context.log.warning(f"sync '{sync.name}': row {sync.primary_key}={pk} not sent: {reason}")
    if summary.rejected_count > len(summary.rejected_sample):
        more = summary.rejected_count - len(summary.rejected_sample)
        context.log.warning(f"sync '{sync.name}': ... and {more} more rejected rows")


def _diff_metadata(sync: SyncConfig, summary: DiffSummary, frame: pd.DataFrame) -> dict:
    metadata: dict[str, Any] = {
        "dagster/row_count": len(frame),
        "model_rows": summary.model_rows,
        "first_run": summary.first_run,
        "rejected_rows": summary.rejected_count,
        "preview": MetadataValue.md(markdown_table(frame.head(PREVIEW_ROWS))),
    }
    for change in summary.counts:
        metadata[change] = summary.counts[change]
        metadata[f"{change}_to_send"] = summary.to_send[change]
    if summary.rejected_sample:
        metadata["rejected_sample"] = MetadataValue.json(
            [{"key": pk, "reason": reason} for pk, reason in summary.rejected_sample]
        )
    return metadata


def _log_delivery(
    context: AssetExecutionContext, sync: SyncConfig, report: DeliveryReport, rejected: list[dict]
) -> None:
    stats = report.stats
    verb = "validated (dry run, nothing sent)" if report.status == "dry_run" else "delivered"
    context.log.info(
        f"sync '{sync.name}': {report.accepted} events {verb}, {len(report.rejected)} rejected, "
        f"{report.committed_without_event} changes committed without an event; "
        f"{stats.requests} requests, {stats.retries} retries, {stats.seconds:.1f}s"
    )
    for row in rejected:
        context.log.warning(
            f"sync '{sync.name}': {row['change_type']} event for {sync.primary_key}={row['key']} "
            f"rejected, kept pending for the next run: {row['reason']}"
        )


def _delivery_metadata(report: DeliveryReport, samples: dict, rejected: list[dict]) -> dict:
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
    }
    for change, payload in samples.items():
        metadata[f"sample_{change}"] = MetadataValue.json(payload)
    if rejected:
        metadata["rejected_sample"] = MetadataValue.json(rejected)
    return metadata


def markdown_table(frame: pd.DataFrame) -> str:
    """A small markdown table for the UI, without pulling in `tabulate`."""
    if frame.empty:
        return "_no changes_"

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
