"""Dagster's private names that rudder_sync uses still exist and behave (rudder_sync/_compat.py)."""

from __future__ import annotations

from dagster import AssetKey, asset, define_asset_job


def test_is_valid_cron_string_still_judges_cron_expressions() -> None:
    from rudder_sync._compat import is_valid_cron_string

    assert is_valid_cron_string("*/15 * * * *")
    assert not is_valid_cron_string("every 15 minutes")


def test_define_asset_job_still_returns_an_unresolved_asset_job_definition() -> None:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

    @asset
    def thing() -> None:
        return None

    job = define_asset_job("thing_job", selection=[AssetKey("thing")])
    assert isinstance(job, UnresolvedAssetJobDefinition)
