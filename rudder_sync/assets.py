"""The asset factory: `<sync>/snapshot`, `<sync>/diff` and `<sync>/events` for one sync.

Asset bodies stay short and delegate: `steps.py` does each step's work on the sync's state and
`reporting.py` turns the result into logs, metadata and checks. All state that the next run needs
lives in the sync's own DuckDB state file, never in Dagster's instance or IO manager.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
from dagster import (
    AssetCheckResult,
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
    asset,
    define_asset_job,
)
from pydantic import Field

from .alerts.freshness import freshness_policy
from .alerts.hooks import alert_hooks
from .anomaly import anomaly_checks
from .append import AppendSnapshot, sync_backend
from .config import IO_MANAGER_KEY as IO_MANAGER_KEY  # the default key, re-exported
from .config import SyncConfig
from .dbt import bind_dbt, check_dbt_upstream
from .diff import DiffMode, sync_shape
from .dry_runs import resource_for_run
from .errors import RudderSyncError
from .events import sample_payloads
from .guard import evaluate_guard
from .partitions import WindowSpec, partitions_definition, windows_for
from .redact import field_places, redaction_of
from .reporting import (
    CHANGE_GUARD,
    GATEWAY_REJECTIONS,
    QUARANTINED_ROWS,
    REJECTED_ROWS,
    announce_dry_run,
    change_guard_check,
    delivery_metadata,
    diff_metadata,
    gateway_rejections_check,
    in_window,
    log_delivery,
    log_diff,
    log_quarantine,
    quarantined_rows_check,
    redaction_metadata,
    rejected_rows_check,
    rejected_sample,
    snapshot_metadata,
    windows_metadata,
)
from .rudderstack import RudderstackError, RudderstackResource
from .state import SyncState, memory_fix
from .state_backend import StateBackend
from .steps import deliver_windows, settle_diff
from .warehouses import WarehouseError, WarehouseResource

if TYPE_CHECKING:
    from ._compat import UnresolvedAssetJobDefinition


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
    adopt_state_of: str | None = Field(
        default=None,
        description="The sync's name before a rename: the state found at this sync's place "
        "(its file moved there, or its tables renamed) belongs to that sync, and this sync "
        "takes it over instead of refusing it.",
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
    only_keys: list[Any] | None = Field(
        default=None,
        description="Send only the pending changes of these rows (primary keys, as strings or "
        "numbers), committed as usual with the messageIds they would have had; the other "
        "changes stay pending for the next run. A key without a pending change to send fails "
        "the run before anything is sent.",
    )


def build_sync_assets(
    sync: SyncConfig, state_dir: Path, warehouse: WarehouseResource | None = None
) -> list[AssetsDefinition]:
    """The three assets of one sync, in the sync's own group (partitioned if the sync is).

    `warehouse` (the one the definitions give the sync; DuckDB when not given) names the engine
    in the assets' kinds: the model runs there, and the diff too when the state lives there.
    """
    engine = warehouse.kind if warehouse is not None else "duckdb"
    # Where the diff runs: the warehouse when the state lives there (`state_schema`).
    diff_engine = "duckdb" if warehouse is None else sync_backend(sync, warehouse, state_dir).engine
    partitions = partitions_definition(sync.partitions) if sync.partitions else None
    common: dict[str, Any] = {
        "group_name": sync.name,
        "partitions_def": partitions,
        "backfill_policy": BackfillPolicy.single_run() if partitions else None,
        "hooks": alert_hooks(sync, state_dir),  # alerts on failures and checks (alerts/hooks.py)
    }
    upstream = [AssetKey.from_user_string(key) for key in sync.upstream]
    # The dbt models the model reads, named as dagster-dbt names them (bound by the definitions
    # with the user's translator; else the default one).
    dbt_upstream = bind_dbt(sync.dbt_models) if sync.dbt_upstream is None else sync.dbt_upstream
    upstream += [d.asset_key for d in dbt_upstream if d.asset_key not in upstream]
    # With upstream assets, each step runs when what it depends on was updated (and is not
    # already running), so the sync follows the user's own pipeline, e.g. dbt models.
    automation = AutomationCondition.eager() if upstream else None
    # require_checks: automation waits for the dbt models' blocking tests to pass too (the
    # snapshot step checks them again, for runs launched by hand or by a schedule).
    snapshot_automation = (
        automation & AutomationCondition.all_deps_blocking_checks_passed()
        if automation is not None and sync.require_checks
        else automation
    )
    diff_key = asset_key(sync, "diff")
    events_key = asset_key(sync, "events")
    redaction = redaction_of(sync)  # `redact:` and `store_frames` (redact.py)

    def windows(context: AssetExecutionContext) -> list[WindowSpec]:
        return windows_for(partitions, context.partition_keys) if partitions else []

    # The sync's resources, under the keys its project's definitions gave them (a named
    # destination is `rudderstack_<name>`; several projects in one location may suffix them).
    def rudderstack_of(context: AssetExecutionContext) -> RudderstackResource:
        # A dry run when the YAML says so; a missing URL fails unless it is one (dry_runs.py).
        resource = getattr(context.resources, sync.rudderstack_key)
        return resource_for_run(sync, resource, context.run.run_config)

    def warehouse_of(context: AssetExecutionContext) -> WarehouseResource:
        return getattr(context.resources, sync.warehouse_key)

    @asset(
        key=asset_key(sync, "snapshot"),
        deps=upstream,
        kinds={engine},
        description=f"Result of the model of sync '{sync.name}', stored in its state (a DuckDB "
        "warehouse's unpartitioned model: checked and counted, then read in place by the diff).",
        automation_condition=snapshot_automation,
        required_resource_keys={sync.warehouse_key, sync.rudderstack_key},
        **common,
    )
    def snapshot(context: AssetExecutionContext) -> MaterializeResult:
        warehouse = warehouse_of(context)
        with warehouse.session():  # its reads (dbt checks, windows, append bounds) share one
            if sync.dbt_models:
                check_dbt_upstream(
                    sync.name,
                    sync.dbt_models,
                    dbt_upstream,
                    sync.require_checks,
                    context.instance,
                    warehouse,
                )
            backend = sync_backend(sync, warehouse, state_dir)
            with _open_state(sync, backend, rudderstack_of(context)) as state:
                taken = backend.take_snapshot(state, partitions, windows(context))
        for key, rows in taken.rows_by_window.items():
            context.log.info(f"sync '{sync.name}'{in_window(key)}: model returned {rows} rows")
        where, moved = backend.location(state), state.notice  # a local state moved in, if any
        if moved:
            context.log.info(f"sync '{sync.name}': {moved} (the warehouse sets 'state_schema')")
        metadata = snapshot_metadata(
            taken.rows_by_window,
            taken.types,
            where,
            partitions is not None,
            taken.read_in_place,
            moved=moved,
        )
        if isinstance(taken, AppendSnapshot):  # mode: append: where the read began (append.py)
            metadata.update(taken.metadata)
        return MaterializeResult(metadata=metadata)

    @asset(
        key=diff_key,
        deps=[snapshot],
        kinds={diff_engine, "pandas"},
        io_manager_key=sync.io_manager_key,
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
        required_resource_keys={sync.warehouse_key, sync.rudderstack_key},
        **common,
    )
    def diff(
        context: AssetExecutionContext, config: DiffRunConfig
    ) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
        mode = _diff_mode(sync, config)
        warehouse = warehouse_of(context)
        rudderstack = rudderstack_of(context)
        backend = sync_backend(sync, warehouse, state_dir)
        with _open_state(sync, backend, rudderstack) as state:
            mode = settle_diff(
                state,
                sync,
                mode,
                lambda: None if rudderstack.dry_run else _delivered_before(context, events_key),
                config.adopt_state_of,
                context.log,
            )
            result = backend.run_diff(
                state, windows(context), mode, datetime.now(UTC), config.retry_quarantined
            )
        if config.retry_quarantined:
            context.log.info(
                f"sync '{sync.name}': retry_quarantined: {result.readmitted} quarantined changes "
                f"or rows re-admitted, each with max_attempts ({sync.max_attempts}) new attempts"
            )
        for key, summary in result.summaries.items():
            log_diff(context.log, sync, summary, key, redaction)
        if result.frame_left_out:
            context.log.info(
                f"sync '{sync.name}': the diff's output lists {len(result.frame):,} changes; "
                f"{result.frame_left_out:,} more that send nothing (the baseline) are counted, "
                "not listed: they are in the state"
            )
        metadata = diff_metadata(
            sync, result.summaries, result.frame, redaction, result.frame_left_out
        )
        metadata.update(resync=mode.resync, reset_baseline=mode.reset_baseline)
        if config.resync and not mode.resync:  # an earlier resync was finished instead
            metadata["resync_finished_earlier_one"] = True
        metadata.update(result.transfer or {})
        if config.retry_quarantined:
            metadata["readmitted_quarantined"] = result.readmitted
        yield Output(redaction.stored(result.frame, field_places(sync)), metadata=metadata)
        yield rejected_rows_check(result.summaries, redaction)
        verdict = evaluate_guard(sync.guard, result.summaries.values(), _deliberate(context, mode))
        yield change_guard_check(
            context.log,
            sync,
            verdict,
            config.approve_large_change,
            {"resync": mode.resync, "reset_baseline": mode.reset_baseline},
        )

    @asset(
        key=events_key,
        deps=[diff],
        kinds={"rudderstack"},
        io_manager_key=sync.io_manager_key,
        description=f"Events of '{sync.name}' delivered to RudderStack (one row per event).",
        automation_condition=automation,
        freshness_policy=freshness_policy(sync),  # the sync's `freshness: {max_lag}`
        check_specs=[
            AssetCheckSpec(
                GATEWAY_REJECTIONS,
                asset=events_key,
                description="Events RudderStack rejected (kept pending, retried next run).",
            ),
            AssetCheckSpec(
                QUARANTINED_ROWS,
                asset=events_key,
                description="Changes rejected (or rows invalid) max_attempts times: no longer "
                "sent until the row changes or run config retry_quarantined re-admits them.",
            ),
        ],
        required_resource_keys={sync.warehouse_key, sync.rudderstack_key},
        **common,
    )
    def events(
        context: AssetExecutionContext, config: SyncRunConfig
    ) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
        rudderstack = rudderstack_of(context)
        sender = (
            rudderstack.model_copy(update={"data_plane_url": None})
            if config.dry_run
            else rudderstack
        )
        specs = windows(context)
        only_keys = _only_keys(sync, config)
        backend = sync_backend(sync, warehouse_of(context), state_dir)
        with _open_state(sync, backend, rudderstack) as state:
            state.check_identity(sync_shape(sync))
            moved_from = _settle_destination(context, sync, state, sender, config)
            samples = {
                change: redaction.payload(sync.type, payload)
                for change, payload in sample_payloads(
                    state, sync, specs[0].key if specs else None, only_keys
                ).items()
            }
            if sender.dry_run:
                announce_dry_run(context.log, sync, *_dry_run_reason(sync, config), samples)
            done = deliver_windows(
                state,
                sync,
                sender,
                context.run.run_id,
                context.log,
                specs,
                commit=not config.dry_run,
                destination=destination_label(sender),
                only_keys=only_keys,
            )
        assert done.frame is not None
        rejected = rejected_sample(sync, done.frame, redaction)
        log_delivery(context.log, sync, done.total, rejected)
        metadata = delivery_metadata(done.total, samples, rejected)
        metadata.update(destination=destination_label(sender), quarantined=done.quarantined)
        metadata.update(redaction_metadata(redaction))
        quarantine_sample = redaction.rows(done.quarantine_sample)
        if quarantine_sample:
            metadata["quarantined_rows"] = MetadataValue.json(quarantine_sample)
            log_quarantine(context.log, sync, done.quarantined, quarantine_sample)
        if moved_from is not None:
            metadata["moved_destination_from"] = moved_from
        if only_keys is not None:
            # Keys are what the user typed; the held-back count is the other rows' changes.
            metadata.update(only_keys=MetadataValue.json(only_keys), held_back=done.held_back)
            context.log.info(
                f"sync '{sync.name}': only_keys: {done.total.accepted} events of "
                f"{len(only_keys)} row(s) {'accepted' if not sender.dry_run else 'built'}; "
                f"{done.held_back} changes of other rows left pending for the next run"
            )
        if done.per_window:
            metadata["windows"] = windows_metadata(done.per_window)
        yield Output(redaction.stored(done.frame, []), metadata=metadata)
        yield gateway_rejections_check(done.total, rejected)
        yield quarantined_rows_check(sync, done.quarantined, quarantine_sample)

    return [snapshot, diff, events, *anomaly_checks(sync, state_dir)]


def _only_keys(sync: SyncConfig, config: SyncRunConfig) -> list[str] | None:
    """Run config only_keys as the state stores primary keys (text), without repeats; a key
    that is neither a string nor a whole number fails here, before the state is opened."""
    if config.only_keys is None:
        return None
    fix = f"Fix: run config ops: {{{sync.name}__events: {{config: {{only_keys: ['42', ...]}}}}}}"
    bad = [k for k in config.only_keys if isinstance(k, bool) or not isinstance(k, str | int)]
    if bad or not config.only_keys:
        what = f"values that are not keys: {bad!r}" if bad else "no key"
        raise Failure(
            f"sync '{sync.name}': run config only_keys has {what}; it takes the primary keys "
            f"({sync.primary_key}) of the rows to send, as strings or whole numbers. {fix}."
        )
    return list(dict.fromkeys(str(key) for key in config.only_keys))


def _dry_run_reason(sync: SyncConfig, config: SyncRunConfig) -> tuple[str, str]:
    """Why nothing is sent, and how to send: for the dry run's announcement. A sync names its
    own destination's variables (RUDDERSTACK_* for the default destination)."""
    if config.dry_run:
        return "run config dry_run is true", ""
    if sync.dry_run:
        return "the config says dry_run: true", " Remove dry_run from the YAML to deliver."
    destination = sync.destination_config
    named = "" if destination.name is None else f" (destination '{destination.name}')"
    url = destination.url_env or "its data_plane_url"
    return f"{url} is not set{named}", f" Set it and {destination.write_key.env} to deliver."


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


def _delivered_before(context: AssetExecutionContext, events_key: AssetKey) -> str | None:
    """The latest delivery of the sync's events that Dagster's instance recorded (a dry run's
    does not count), as "run <id> at <time>"; None when it recorded none.

    Newest first: the latest record settles it unless dry runs came after the last delivery
    (then pages of 100). Every delivery commits the sync's baseline first, so a state without
    one has been lost. An instance that forgets (`dagster job execute` without DAGSTER_HOME)
    knows of none."""
    cursor, limit = None, 1
    while True:
        found = context.instance.fetch_materializations(events_key, limit=limit, cursor=cursor)
        limit = 100
        for record in found.records:
            materialization = record.asset_materialization
            status = materialization.metadata.get("status") if materialization else None
            if status is not None and getattr(status, "value", None) == "delivered":
                at = datetime.fromtimestamp(record.timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
                return f"run {record.run_id} at {at}"
        if not found.has_more:
            return None
        cursor = found.cursor


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
    sync: SyncConfig, backend: StateBackend, rudderstack: RudderstackResource
) -> Iterator[SyncState]:
    """The sync's state (the dry-run one when nothing is sent), wherever it lives
    (`state_backend`), with errors named for the UI."""
    with failures_named(sync), backend.open(rudderstack.dry_run) as state:
        yield state


@contextmanager
def failures_named(sync: SyncConfig) -> Iterator[None]:
    """Turn our own errors (`errors.RudderSyncError`) into a Dagster Failure whose message names
    the sync and the fix; anything else is a bug and keeps its traceback."""
    try:
        yield
    except WarehouseError as exc:
        raise Failure(f"sync '{sync.name}': the model failed: {exc}{memory_fix(exc)}") from None
    except duckdb.OutOfMemoryException as exc:
        text = " ".join(str(exc).split())
        raise Failure(f"sync '{sync.name}': the diff failed: {text}{memory_fix(exc)}") from None
    except RudderstackError as exc:
        raise Failure(
            f"sync '{sync.name}': delivery stopped: {exc}. Changes that were accepted "
            "are committed; the rest stay pending and are sent at the next run."
        ) from None
    except RudderSyncError as exc:
        named = f"sync '{sync.name}'"
        raise Failure(str(exc) if named in str(exc) else f"{named}: {exc}") from None
