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


def test_reconstructable_repository_still_points_at_a_module_as_the_cli_does() -> None:
    from rudder_sync._compat import ReconstructableRepository

    repository = ReconstructableRepository.for_module("rudder_sync.definitions", "defs", "/tmp")
    origin = repository.get_reconstructable_job("user_events").get_python_origin()
    assert origin.job_name == "user_events"
    assert origin.repository_origin.code_pointer.module == "rudder_sync.definitions"  # type: ignore[attr-defined]


def test_get_latest_completed_cron_tick_still_returns_the_last_tick() -> None:
    from datetime import UTC, datetime

    from rudder_sync._compat import get_latest_completed_cron_tick

    now = datetime(2024, 5, 1, 12, 7, tzinfo=UTC)
    tick = get_latest_completed_cron_tick("*/5 * * * *", now, "UTC")
    assert tick == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
