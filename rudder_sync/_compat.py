"""The private Dagster names rudder_sync uses, in one place, checked by test_compat.py.

Dagster does not promise these across releases; when an upgrade moves or changes one, that test
fails with this module's name instead of an import error somewhere in the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Dagster's own cron validation (the one its schedules apply), so a bad `schedule:` fails at load.
from dagster._utils.schedules import is_valid_cron_string

if TYPE_CHECKING:
    # What `define_asset_job` returns; used only in annotations.
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

__all__ = ["UnresolvedAssetJobDefinition", "is_valid_cron_string"]
