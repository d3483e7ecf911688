"""32 KB per event (issue 26, item 6): RudderStack documents 32 KB per event and its Python SDK
drops larger events. A larger event is rejected locally, reported by key with its size like any
rejected row, and never put in a request; the limit is the `delivery` setting max_event_kb.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from rudder_sync.config import ConfigError, load_config
from rudder_sync.rudderstack import OutgoingEvent, RudderstackResource

from .gateway import TestGateway
from .helpers import (
    TRACK_SYNC,
    WRITE_KEY,
    asset_metadata,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)
from .test_resync import check_results, state_rows


def event_of(i: int, size: int) -> OutgoingEvent:
    """A Track event of exactly ``size`` bytes."""
    shell = {"type": "track", "messageId": f"m-{i}", "userId": f"u{i}", "event": "E", "p": ""}
    pad = size - len(orjson.dumps(shell))
    body = orjson.dumps({**shell, "p": "x" * pad})
    assert len(body) == size
    return OutgoingEvent(ref=i, message_id=f"m-{i}", body=body)


def sent(gateway: TestGateway, field: str = "messageId") -> set[str]:
    """The ``field`` of every event any request carried, accepted or not."""
    return {
        event[field]
        for request in gateway.requests
        if request.body
        for event in orjson.loads(request.body)["batch"]
    }


def test_events_over_32_kb_are_rejected_with_their_size_and_never_sent(
    gateway: TestGateway,
) -> None:
    events = [
        event_of(0, 500),
        event_of(1, 32 * 1024),  # exactly the limit: sent
        event_of(2, 32 * 1024 + 1),
        event_of(3, 40_000),
        event_of(4, 1_000_000),
        event_of(5, 500),
    ]
    resource = RudderstackResource(data_plane_url=gateway.url, write_key=WRITE_KEY)
    outcomes = list(resource.deliver(events))

    assert [e.ref for o in outcomes for e in o.accepted] == [0, 1, 5]
    reasons = {e.ref: reason for o in outcomes for e, reason in o.rejected}
    assert set(reasons) == {2, 3, 4}
    assert reasons[3] == (
        "event is 40,000 bytes; RudderStack accepts at most 32 KB (32,768 bytes) per event, "
        "see max_event_kb"
    )
    assert "event is 1,000,000 bytes" in reasons[4] and "32,769 bytes" in reasons[2]
    assert sent(gateway) == {"m-0", "m-1", "m-5"}  # never put in a request


def test_max_event_kb_raises_the_limit(gateway: TestGateway) -> None:
    resource = RudderstackResource(data_plane_url=gateway.url, write_key=WRITE_KEY, max_event_kb=64)
    outcomes = list(resource.deliver([event_of(0, 40_000), event_of(1, 70_000)]))
    assert [e.ref for o in outcomes for e in o.accepted] == [0]
    ((_, reason),) = outcomes[-1].rejected
    assert reason.startswith("event is 70,000 bytes; RudderStack accepts at most 64 KB")


def test_a_dry_run_rejects_them_too() -> None:
    outcomes = list(RudderstackResource().deliver([event_of(0, 500), event_of(1, 40_000)]))
    assert [e.ref for o in outcomes for e in o.accepted] == [0]
    assert "see max_event_kb" in outcomes[-1].rejected[0][1]


def test_a_sync_rejects_rows_whose_event_is_over_32_kb_by_key_and_sends_the_rest(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """Issue 26, item 6: a 40 KB event and a 1 MB event were sent without a word."""
    project = write_project(tmp_path, {"user_events": dict(TRACK_SYNC, send_initial_results=True)})
    sql(project.warehouse, "update users set email = repeat('x', 40000) where id = 2")
    sql(project.warehouse, "update users set email = repeat('y', 1000000) where id = 4")

    result = run_sync(project, "user_events", rudderstack_for(gateway.url))

    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u3", "u5"]
    assert sent(gateway, "userId") == {"u1", "u3", "u5"}
    assert all(len(r.body or b"") < 40_000 for r in gateway.requests)  # never in a batch
    meta = asset_metadata(result, "user_events", "events")
    assert meta["events_accepted"] == 3 and meta["events_rejected"] == 2
    check = check_results(result)["gateway_rejections"]
    assert not check.passed
    sample = {row["key"]: row["reason"] for row in check.metadata["sample"].value}
    assert set(sample) == {"2", "4"}
    assert "RudderStack accepts at most 32 KB (32,768 bytes) per event" in sample["2"]
    assert sample["2"].startswith("event is 40,") and sample["4"].startswith("event is 1,000,")
    logs = "\n".join(result.run_logs)  # type: ignore[attr-defined]
    assert "event for id=2 rejected" in logs and "event for id=4 rejected" in logs
    # still pending, never committed: the rows are sent once they fit
    assert state_rows(project, "user_events", "select __rs_pk from pending order by 1") == [
        ("2",),
        ("4",),
    ]
    sql(project.warehouse, "update users set email = 'short@example.com' where id in (2, 4)")
    run_sync(project, "user_events", rudderstack_for(gateway.url))
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3", "u4", "u5"]


@pytest.mark.parametrize("value", [0, 4001, "big"])
def test_a_bad_max_event_kb_fails_when_the_yaml_loads(tmp_path: Path, value: object) -> None:
    project = write_project(tmp_path, {"user_events": TRACK_SYNC}, users=0)
    config = yaml.safe_load(project.config_path.read_text())
    config["delivery"] = {"max_event_kb": value}
    project.config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_config(project.config_path)
    message = str(raised.value)
    assert "delivery: key 'max_event_kb'" in message and "Fix:" in message
    assert "\n" not in message


def test_max_event_kb_from_the_yaml_reaches_the_resource(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"user_events": TRACK_SYNC}, users=0)
    config = yaml.safe_load(project.config_path.read_text())
    config["delivery"] = {"max_event_kb": 64}
    project.config_path.write_text(yaml.safe_dump(config))
    delivery = load_config(project.config_path).delivery
    assert RudderstackResource(**delivery.model_dump()).max_event_kb == 64
