"""Whether a run sends, is a dry run, or must fail: no silent no-ops.

A sync is a dry run when the YAML says `dry_run: true` (on the sync, its destination or the
project), when the run config asks for one (`dry_run` on the events step), or in the packaged
demo without a data plane URL. With the user's own config, a destination whose URL variable was
unset when the definitions loaded fails the run at its first step, naming the variable: a
forgotten RUDDERSTACK_DATA_PLANE_URL must not exit 0 after sending nothing.
"""

from __future__ import annotations

from typing import Any

from dagster import Failure

from .config import SyncConfig
from .rudderstack import RudderstackResource


def run_asks_for_dry_run(run_config: Any, sync: SyncConfig) -> bool:
    """Whether the run's config sets `dry_run: true` on the sync's events step."""
    ops = (run_config or {}).get("ops") or {}
    config = (ops.get(f"{sync.name}__events") or {}).get("config") or {}
    return bool(config.get("dry_run"))


def resource_for_run(
    sync: SyncConfig, resource: RudderstackResource, run_config: Any
) -> RudderstackResource:
    """The resource a step of this run delivers with (a copy without URL for `dry_run: true`),
    or a Failure when the URL is missing and nobody asked for a dry run."""
    if sync.dry_run:
        return (
            resource if resource.dry_run else resource.model_copy(update={"data_plane_url": None})
        )
    missing = sync.url_required
    if missing is None or not resource.dry_run or run_asks_for_dry_run(run_config, sync):
        return resource
    destination = sync.destination_config
    named = "" if destination.name is None else f" (its destination '{destination.name}')"
    raise Failure(
        f"sync '{sync.name}': {missing} is not set{named}, so nothing would be sent. Fix: "
        f"export {missing} and {destination.write_key.env} to deliver; for a dry run, add "
        "'dry_run: true' to the sync (or its destination, or the whole config), or run with "
        f"run config ops: {{{sync.name}__events: {{config: {{dry_run: true}}}}}}."
    )
