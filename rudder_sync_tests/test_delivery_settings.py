"""Delivery settings have one source: RudderstackResource's fields (defaults and bounds)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rudder_sync.config import DeliveryConfig
from rudder_sync.rudderstack import RudderstackConfigError, RudderstackResource, setting_bounds


@pytest.mark.parametrize("name", list(DeliveryConfig.model_fields))
def test_the_yaml_settings_take_the_resources_defaults_and_bounds(name: str) -> None:
    ours, resources = DeliveryConfig.model_fields[name], RudderstackResource.model_fields[name]
    assert ours.default == resources.default
    limits = {
        op: getattr(m, op) for m in ours.metadata for op in ("ge", "gt", "le") if hasattr(m, op)
    }
    assert limits == setting_bounds(name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_in_flight": 0}, "max_in_flight must be >= 1 and <= 64"),
        ({"max_in_flight": 65}, "max_in_flight must be >= 1 and <= 64"),
        ({"max_request_kb": 4001}, "max_request_kb must be >= 1 and <= 4000"),
        ({"max_event_kb": 0}, "max_event_kb must be >= 1 and <= 4000"),
        ({"request_timeout_seconds": 0}, "request_timeout_seconds must be > 0"),
        ({"retry_max_seconds": -1}, "retry_max_seconds must be >= 0"),
        ({"first_contact_seconds": 0}, "first_contact_seconds must be > 0"),
        ({"max_events_per_second": 0}, "must be > 0 \\(or unset: no limit\\)"),
    ],
)
def test_a_resource_out_of_bounds_fails_when_its_delivery_starts(
    settings: dict[str, Any], message: str
) -> None:
    resource = RudderstackResource(**settings)  # constructing it is allowed, as before
    with pytest.raises(RudderstackConfigError, match=message):
        next(resource.deliver([]))


def test_the_yaml_refuses_the_same_values_when_it_loads() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 64"):
        DeliveryConfig(max_in_flight=65)
    assert RudderstackResource(**DeliveryConfig().model_dump()).max_request_kb == 4000
