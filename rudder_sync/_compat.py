"""The private Dagster names rudder_sync uses, in one place, checked by test_compat.py.

Dagster does not promise these across releases; when an upgrade moves or changes one, that test
fails with this module's name instead of an import error somewhere in the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The job pointer that `dagster job execute -m MODULE` builds; `python -m rudder_sync run` builds
# the same one, so its runs record the CLI's code origin.
from dagster._core.definitions.reconstruct import ReconstructableRepository

# Dagster's own cron validation (the one its schedules apply), so a bad `schedule:` fails at load;
# and its latest tick of a cron string, for `python -m rudder_sync run --due`.
from dagster._utils.schedules import get_latest_completed_cron_tick, is_valid_cron_string

if TYPE_CHECKING:
    # What `define_asset_job` returns; used only in annotations.
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

__all__ = [
    "ReconstructableRepository",
    "UnresolvedAssetJobDefinition",
    "get_latest_completed_cron_tick",
    "is_valid_cron_string",
]
