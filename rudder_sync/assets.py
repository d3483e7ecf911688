"""The asset factory: `<sync>/snapshot`, `<sync>/diff` and `<sync>/events` for one sync.

Asset bodies stay short and delegate: the warehouse streams the model, `diff` computes the changes,
`delivery` sends them. All state that the next run needs lives in the sync's own DuckDB state file,
never in Dagster's instance or IO manager.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
)
from pydantic import Field

from .config import CHANGE_TYPES, SyncConfig
from .delivery import (
    REJECTED_SAMPLE,
    DeliveryReport,
    deliver_pending,
    delivery_frame,
    pending_counts,
)
from .diff import (
    DiffMode,
    DiffSummary,
    ModelColumnsError,
    check_model_columns,
    compute_diff,
    pending_frame,
)
from .events import sample_payloads
from .guard import evaluate_guard
from .jsonvalues import column_types
from .partitions import (
    MissingWindowError,
    WindowSpec,
    diff_window,
    partitions_definition,
    store_window_rows,
    window_table,
    windows_for,
)
from .rudderstack import RudderstackError, RudderstackResource
from .state import StateError, SyncState, open_state
from .warehouses import WarehouseError, WarehouseResource

if TYPE_CHECKING:
    from ._compat import UnresolvedAssetJobDefinition

PREVIEW_ROWS = 10
IO_MANAGER_KEY = "rudder_sync_io_manager"
CHANGE_GUARD = "change_guard"
REJECTED_ROWS = "rejected_rows"
GATEWAY_REJECTIONS = "gateway_rejections"
QUARANTINED_ROWS = "quarantined_rows"


def asset_key(sync: SyncConfig, step: str) -> AssetKey:
    return AssetKey([sync.name, step])


class DiffRunConfig(Config):
    """Run config of a sync's diff step."""

    approve_large_change: bool = Field(
        default=False,
        description="Let this one run deliver a diff that trips the change guard.",
    )
    resync: bool = Field(
        default=False,
        description="Send the whole current model again, with new messageIds (track: every row "
        "as 'added' when 'added' is sent; other types: every row). Unpartitioned syncs; needs "
        "approve_large_change.",
    )
    reset_baseline: bool = Field(
        default=False,
        description="Record the current model as delivered without sending anything; pending "
        "changes are dropped and the next run sends only later changes. Unpartitioned syncs; "
        "needs approve_large_change.",
    )
    retry_quarantined: bool = Field(
        default=False,
        description="Re-admit the quarantined changes (those that failed max_attempts times): "
        "they are sent again, with max_attempts new attempts.",
    )


class SyncRunConfig(Config):
    """Run config of a sync's events step."""

    dry_run: bool = Field(
        default=False,
        description="Build, validate and count the events (per window and change type) without "
        "sending them or moving the sync's state: what a run or a backfill would send.",
    )
    move_destination: bool = Field(
        default=False,
        description="Record this run's data plane URL as the sync's destination, replacing the "
        "one its state was delivered to, without resending anything: for a new URL of the same "
        "data plane (a custom domain, a proxy).",
    )


def build_sync_assets(sync: SyncConfig, state_dir: Path) -> list[AssetsDefinition]:
    """The three assets of one sync, in the sync's own group (partitioned if the sync is)."""
    partitions = partitions_definition(sync.partitions) if sync.partitions else None
    common: dict[str, Any] = {
        "group_name": sync.name,
        "partitions_def": partitions,
        "backfill_policy": BackfillPolicy.single_run() if partitions else None,
    }
    upstream = [AssetKey.from_user_string(key) for key in sync.upstream]
    # With upstream assets, each step runs when what it depends on was updated (and is not
    # already running), so the sync follows the user's own pipeline, e.g. dbt models.
    automation = AutomationCondition.eager() if upstream else None
    diff_key = asset_key(sync, "diff")

    def windows(context: AssetExecutionContext) -> list[WindowSpec]:
        return windows_for(partitions, context.partition_keys) if partitions else []

    @asset(
        key=asset_key(sync, "snapshot"),
        deps=upstream,
        kinds={"duckdb"},
        description=f"Result of the model of sync '{sync.name}', stored in its state.",
        automation_condition=automation,
        **common,
    )
    def snapshot(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        rudderstack: RudderstackResource,
    ) -> MaterializeResult:
        with _open_state(sync, state_dir, rudderstack) as state:
            if partitions is None:
                with warehouse.read_model(sync.model) as reader:
                    check_model_columns(sync, reader.schema.names)
                    rows_by_window = {"": state.replace_model_rows(reader)}
                table = "model_rows"
            else:
                specs = windows(context)
                rows_by_window = store_window_rows(state, sync, warehouse, partitions, specs)
                table = window_table(specs[-1].key)
            types = column_types(state.conn, table)
        for key, rows in rows_by_window.items():
            context.log.info(f"sync '{sync.name}'{_in(key)}: model returned {rows} rows")
        metadata: dict[str, Any] = {
            "dagster/row_count": sum(rows_by_window.values()),
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(name, str(kind)) for name, kind in types.items()]
            ),
            "state": MetadataValue.path(str(state_dir)),
        }
        if partitions is not None:
            metadata["rows_per_window"] = MetadataValue.json(rows_by_window)
        return MaterializeResult(metadata=metadata)

    @asset(
        key=diff_key,
        deps=[snapshot],
        kinds={"duckdb", "pandas"},
        io_manager_key=IO_MANAGER_KEY,
        description=f"Rows added, changed or removed since the last delivery of '{sync.name}'.",
        automation_condition=automation,
        check_specs=[
            AssetCheckSpec(
                CHANGE_GUARD,
                asset=diff_key,
                blocking=True,
                description="Stops delivery when the diff removes or changes a suspicious share "
                "of rows or sends too many events (the sync's 'guard').",
            ),
            AssetCheckSpec(
                REJECTED_ROWS,
                asset=diff_key,
                description="Rows left out: null or duplicate primary key, no user/anonymous ID.",
            ),
        ],
        **common,
    )
    def diff(
        context: AssetExecutionContext, config: DiffRunConfig, rudderstack: RudderstackResource
    ) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
        now = datetime.now(UTC)
        mode = _diff_mode(sync, config)
        with _open_state(sync, state_dir, rudderstack) as state:
            # Before the diff, so that its counts and the guard include the re-admitted changes.
            readmitted = (
                state.readmit_quarantined(sync.max_attempts) if config.retry_quarantined else 0
            )
            if partitions is None:
                if not state.has_table("model_rows"):
                    raise Failure(
                        f"sync '{sync.name}': no model snapshot yet; materialize "
                        f"{sync.name}/snapshot first."
                    )
                summaries = {"": compute_diff(state, sync, now, mode=mode)}
            else:
                summaries = {
                    spec.key: compute_diff(state, sync, now, diff_window(spec, state))
                    for spec in windows(context)
                }
            frame = pending_frame(state, sync, [k for k in summaries if k])
        if config.retry_quarantined:
            context.log.info(
                f"sync '{sync.name}': retry_quarantined: {readmitted} quarantined changes or "
                f"rows re-admitted, each with max_attempts ({sync.max_attempts}) new attempts"
            )
        for key, summary in summaries.items():
            _log_diff(context, sync, summary, key)
        metadata = _diff_metadata(sync, summaries, frame)
        metadata.update(resync=mode.resync, reset_baseline=mode.reset_baseline)
        if config.retry_quarantined:
            metadata["readmitted_quarantined"] = readmitted
        yield Output(frame, metadata=metadata)
        yield _rejected_rows_check(summaries)
        verdict = evaluate_guard(sync.guard, summaries.values(), _deliberate(context, mode))
        if not verdict.passed:
            action = (
                "approved by run config approve_large_change, delivering"
                if config.approve_large_change
                else "nothing will be sent or committed. If this change is intended, re-run with "
                f"run config ops: {{{sync.name}__diff: {{config: {{approve_large_change: true}}}}}}"
            )
            log = context.log.warning if config.approve_large_change else context.log.error
            log(
                f"sync '{sync.name}': change guard tripped ({'; '.join(verdict.tripped)}): {action}"
            )
        yield AssetCheckResult(
            check_name=CHANGE_GUARD,
            passed=verdict.passed or config.approve_large_change,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                **verdict.figures,
                "tripped": "; ".join(verdict.tripped) or "none",
                "approved": config.approve_large_change,
                "resync": mode.resync,
                "reset_baseline": mode.reset_baseline,
                **{k: -1 if v is None else v for k, v in sync.guard.model_dump().items()},
            },
        )

    @asset(
        key=asset_key(sync, "events"),
        deps=[diff],
        kinds={"rudderstack"},
        io_manager_key=IO_MANAGER_KEY,
        description=f"Events of '{sync.name}' delivered to RudderStack (one row per event).",
        automation_condition=automation,
        check_specs=[
            AssetCheckSpec(
                GATEWAY_REJECTIONS,
                asset=asset_key(sync, "events"),
                description="Events RudderStack rejected (kept pending, retried next run).",
            ),
            AssetCheckSpec(
                QUARANTINED_ROWS,
                asset=asset_key(sync, "events"),
                description="Changes rejected (or rows invalid) max_attempts times: no longer "
                "sent until the row changes or run config retry_quarantined re-admits them.",
            ),
        ],
        **common,
    )
    def events(
        context: AssetExecutionContext, config: SyncRunConfig, rudderstack: RudderstackResource
    ) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
        sender = (
            rudderstack.model_copy(update={"data_plane_url": None})
            if config.dry_run
            else (rudderstack)
        )
        keys: list[str | None] = [spec.key for spec in windows(context)] or [None]
        run_id = context.run.run_id
        destination = destination_label(sender)
        with _open_state(sync, state_dir, rudderstack) as state:
            moved_from = _settle_destination(context, sync, state, sender, config)
            samples = sample_payloads(state, sync, keys[0])
            _announce_dry_run(context, sync, sender, config.dry_run, samples)
            total = DeliveryReport(status="dry_run" if sender.dry_run else "delivered")
            per_window: dict[str, dict[str, Any]] = {}
            for number, key in enumerate(keys, start=1):
                counts = pending_counts(state, key, sync)
                try:
                    report = deliver_pending(
                        state,
                        sync,
                        sender,
                        run_id,
                        context.log,
                        window=key,
                        commit=not config.dry_run,
                        stats=total.stats,
                        destination=destination,
                    )
                except RudderstackError as exc:
                    if key is None:
                        raise
                    raise Failure(
                        f"sync '{sync.name}': window {key} ({number} of {len(keys)}) failed: "
                        f"{exc}. Windows before it are delivered; re-run from {key}."
                    ) from None
                total.absorb(report)
                if key is not None:
                    per_window[key] = {
                        **counts,
                        "accepted": report.accepted,
                        "rejected": len(report.rejected),
                    }
                    _log_window_progress(context, sync, key, number, len(keys), total)
            frame = delivery_frame(state, run_id, sync)
            quarantined, quarantine_sample = state.quarantined(sync.max_attempts, REJECTED_SAMPLE)
        rejected_sample = _rejected_sample(sync, frame)
        _log_delivery(context, sync, total, rejected_sample)
        metadata = _delivery_metadata(total, samples, rejected_sample)
        metadata["destination"] = destination
        metadata["quarantined"] = quarantined
        if quarantine_sample:
            metadata["quarantined_rows"] = MetadataValue.json(quarantine_sample)
            _log_quarantine(context, sync, quarantined, quarantine_sample)
        if moved_from is not None:
            metadata["moved_destination_from"] = moved_from
        if per_window:
            metadata["windows"] = MetadataValue.md(
                markdown_table(pd.DataFrame.from_dict(per_window, orient="index"), index="window")
            )
        yield Output(frame, metadata=metadata)
        yield AssetCheckResult(
            check_name=GATEWAY_REJECTIONS,
            passed=not total.rejected,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "rejected": len(total.rejected),
                "sample": MetadataValue.json(rejected_sample),
            },
        )
        yield AssetCheckResult(
            check_name=QUARANTINED_ROWS,
            passed=quarantined == 0,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "quarantined": quarantined,
                "max_attempts": -1 if sync.max_attempts is None else sync.max_attempts,
                "sample": MetadataValue.json(quarantine_sample),
            },
        )

    return [snapshot, diff, events]


def _log_quarantine(
    context: AssetExecutionContext, sync: SyncConfig, count: int, sample: list[dict[str, Any]]
) -> None:
    context.log.warning(
        f"sync '{sync.name}': {count} quarantined (failed {sync.max_attempts} times), not sent. "
        "They are re-admitted when their row changes, or by run config ops: "
        f"{{{sync.name}__diff: {{config: {{retry_quarantined: true}}}}}}"
    )
    for row in sample:
        context.log.warning(
            f"sync '{sync.name}': quarantined {sync.primary_key}={row['key']}"
            f"{_in(row.get('window'))} after {row['attempts']} attempts since "
            f"{row['first_seen']}: {row['reason']}"
        )


def _diff_mode(sync: SyncConfig, config: DiffRunConfig) -> DiffMode:
    """The diff's mode from run config, refusing what cannot apply to this sync."""
    fix_run_config = f"run config ops: {{{sync.name}__diff: {{config: {{...}}}}}}"
    if config.resync and config.reset_baseline:
        raise Failure(
            f"sync '{sync.name}': run config asks for both resync and reset_baseline, which "
            f"contradict each other (send everything / send nothing). Fix: set only one in the "
            f"{fix_run_config}."
        )
    if sync.partitions is not None and (config.resync or config.reset_baseline):
        key = "resync" if config.resync else "reset_baseline"
        raise Failure(
            f"sync '{sync.name}': run config {key} is for unpartitioned syncs; a partitioned "
            "sync keeps no baseline (each window is diffed with the window before). Fix: to "
            "send windows again, re-run them (RudderStack drops the same messageIds), or set "
            "the sync key 'message_id_salt' to a new value to re-send them with new messageIds."
        )
    return DiffMode(
        resync=config.resync, reset_baseline=config.reset_baseline, nonce=uuid.uuid4().hex
    )


def _deliberate(context: AssetExecutionContext, mode: DiffMode) -> list[str]:
    """Guard reasons for a resync or reset: deliberate, but it must still be approved."""
    if mode.resync:
        context.log.warning("resync: every row of the model is a change, sent with new messageIds")
        return ["resync (run config) sends the whole model again"]
    if mode.reset_baseline:
        context.log.warning(
            "reset_baseline: the current model is recorded as delivered, nothing is sent; "
            "pending changes are dropped"
        )
        return ["reset_baseline (run config) records the model as delivered without sending"]
    return []


def _rejected_rows_check(summaries: dict[str, DiffSummary]) -> AssetCheckResult:
    count = sum(s.rejected_count for s in summaries.values())
    sample = [
        {"key": pk, "reason": reason, **({"window": key} if key else {})}
        for key, summary in summaries.items()
        for pk, reason in summary.rejected_sample
    ][:REJECTED_SAMPLE]
    return AssetCheckResult(
        check_name=REJECTED_ROWS,
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"rejected": count, "sample": MetadataValue.json(sample)},
    )


def _in(window: str | None) -> str:
    return f" window {window}" if window else ""


def _announce_dry_run(
    context: AssetExecutionContext,
    sync: SyncConfig,
    sender: RudderstackResource,
    by_run_config: bool,
    samples: dict[str, Any],
) -> None:
    if not sender.dry_run:
        return
    reason = (
        "run config dry_run is true" if by_run_config else "RUDDERSTACK_DATA_PLANE_URL is not set"
    )
    how = "" if by_run_config else " Set it and RUDDERSTACK_WRITE_KEY to deliver."
    context.log.warning(
        f"DRY RUN for sync '{sync.name}': {reason}, so events are built and validated but NOT "
        f"sent.{how}"
    )
    for change, payload in samples.items():
        context.log.info(f"would send ({change}): {orjson.dumps(payload).decode()}")


def _log_window_progress(
    context: AssetExecutionContext,
    sync: SyncConfig,
    key: str,
    number: int,
    count: int,
    total: DeliveryReport,
) -> None:
    rate = total.stats.events_per_second
    context.log.info(
        f"sync '{sync.name}': window {key} done ({number} of {count}); "
        f"{total.accepted} events so far, {len(total.rejected)} rejected, {rate:,.0f} events/s"
    )


def _rejected_sample(sync: SyncConfig, frame: pd.DataFrame) -> list[dict[str, Any]]:
    rejected = frame[frame["status"] == "rejected"].head(REJECTED_SAMPLE)
    return [
        {"key": str(key), "change_type": change, "message_id": mid, "reason": reason}
        for key, change, mid, reason in zip(
            rejected[sync.primary_key],
            rejected["change_type"],
            rejected["message_id"],
            rejected["error"],
            strict=True,
        )
    ]


def _settle_destination(
    context: AssetExecutionContext,
    sync: SyncConfig,
    state: SyncState,
    sender: RudderstackResource,
    config: SyncRunConfig,
) -> str | None:
    """Refuse a destination other than the one the state was delivered to, unless run config
    move_destination says it is the same data plane; the destination moved from, if any."""
    destination = destination_label(sender)
    if not config.move_destination:
        if not sender.dry_run:
            state.check_destination(destination)
        return None
    if sender.dry_run:
        context.log.warning(
            f"sync '{sync.name}': move_destination ignored: a dry run sends nothing and moves "
            "no state."
        )
        return None
    recorded = state.move_destination(destination)
    if recorded == destination:
        context.log.info(f"sync '{sync.name}': move_destination: already delivered to {recorded}")
        return None
    context.log.warning(
        f"sync '{sync.name}': destination moved from {recorded or '(none recorded)'} to "
        f"{destination} by run config move_destination; events delivered before are not resent."
    )
    return recorded or "(none recorded)"


def destination_label(rudderstack: RudderstackResource) -> str:
    """What the state records as its destination: the data plane URL (never the key)."""
    if rudderstack.dry_run:
        return "dry run"
    return (rudderstack.data_plane_url or "").rstrip("/")


def build_sync_job(sync: SyncConfig) -> "UnresolvedAssetJobDefinition":
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
        if isinstance(exc, (ModelColumnsError, StateError, MissingWindowError)):
            raise Failure(str(exc)) from None
        if isinstance(exc, RudderstackError):
            raise Failure(
                f"sync '{self.sync.name}': delivery stopped: {exc}. Changes that were accepted "
                "are committed; the rest stay pending and are sent at the next run."
            ) from None
        return False


def _log_diff(
    context: AssetExecutionContext, sync: SyncConfig, summary: DiffSummary, window: str
) -> None:
    name = f"sync '{sync.name}'{_in(window)}"
    counts = ", ".join(f"{k} {v} (send {summary.to_send[k]})" for k, v in summary.counts.items())
    first = " (first run)" if summary.first_run and not window else ""
    context.log.info(f"{name}{first}: {summary.model_rows} model rows; {counts}")
    if summary.first_run and sync.type == "track" and not sync.send_initial_results:
        context.log.info(
            f"{name}: the initial result set is recorded without sending "
            "(send_initial_results is false)."
        )
    for pk, reason in summary.rejected_sample:
        context.log.warning(f"{name}: row {sync.primary_key}={pk} not sent: {reason}")
    if summary.rejected_count > len(summary.rejected_sample):
        more = summary.rejected_count - len(summary.rejected_sample)
        context.log.warning(f"{name}: ... and {more} more rejected rows")


def _diff_metadata(
    sync: SyncConfig, summaries: dict[str, DiffSummary], frame: pd.DataFrame
) -> dict[str, Any]:
    values = list(summaries.values())
    metadata: dict[str, Any] = {
        "dagster/row_count": len(frame),
        "model_rows": sum(s.model_rows for s in values),
        "first_run": any(s.first_run for s in values),
        "rejected_rows": sum(s.rejected_count for s in values),
        "preview": MetadataValue.md(markdown_table(frame.head(PREVIEW_ROWS))),
    }
    for change in CHANGE_TYPES:
        metadata[change] = sum(s.counts[change] for s in values)
        metadata[f"{change}_to_send"] = sum(s.to_send[change] for s in values)
    sample = [
        {"key": pk, "reason": reason, **({"window": key} if key else {})}
        for key, summary in summaries.items()
        for pk, reason in summary.rejected_sample
    ][:REJECTED_SAMPLE]
    if sample:
        metadata["rejected_sample"] = MetadataValue.json(sample)
    if len(summaries) > 1 or sync.partitions:
        table = pd.DataFrame.from_dict(
            {key: {**s.counts, "rejected": s.rejected_count} for key, s in summaries.items()},
            orient="index",
        )
        metadata["windows"] = MetadataValue.md(markdown_table(table, index="window"))
    return metadata


def _log_delivery(
    context: AssetExecutionContext, sync: SyncConfig, report: DeliveryReport, rejected: list[dict]
) -> None:
    stats = report.stats
    verb = "validated (dry run, nothing sent)" if report.status == "dry_run" else "delivered"
    limits = ""
    if stats.throttled:
        limits += f", {stats.throttled} rate-limited (429)"
    if stats.paced_seconds:
        limits += f", paced {stats.paced_seconds:.1f}s by max_events_per_second"
    context.log.info(
        f"sync '{sync.name}': {report.accepted} events {verb}, {len(report.rejected)} rejected, "
        f"{report.committed_without_event} changes committed without an event; "
        f"{stats.requests} requests, {stats.retries} retries{limits}, {stats.seconds:.1f}s"
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
        "throttled_requests": stats.throttled,
        "paced_seconds": round(stats.paced_seconds, 3),
    }
    for change, payload in samples.items():
        metadata[f"sample_{change}"] = MetadataValue.json(payload)
    if rejected:
        metadata["rejected_sample"] = MetadataValue.json(rejected)
    return metadata


def markdown_table(frame: pd.DataFrame, index: str | None = None) -> str:
    """A small markdown table for the UI, without pulling in `tabulate`."""
    if frame.empty:
        return "_no changes_"
    if index is not None:
        frame = frame.rename_axis(index).reset_index()

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
