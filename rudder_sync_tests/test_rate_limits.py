"""Rate limits: a gateway that answers 429 without Retry-After beyond N events per window, and
max_events_per_second pacing. Everything must get through, with no duplicates beyond re-sends
of the same messageId; windows are short so that the tests run in seconds.
"""

import collections
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from rudder_sync.rudderstack import (
    DeliveryStats,
    OutgoingEvent,
    RudderstackConfigError,
    RudderstackResource,
    RudderstackUnavailableError,
)
from rudder_sync_tests.gateway import TestGateway
from rudder_sync_tests.helpers import (
    TRACK_SYNC,
    WRITE_KEY,
    asset_metadata,
    cli_env,
    job_execute,
    rudderstack_for,
    run_sync,
    write_project,
)

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def outgoing(i: int) -> OutgoingEvent:
    event = {
        "type": "track",
        "messageId": f"m-{i}",
        "userId": f"u{i}",
        "event": "Order Completed",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"i": i},
    }
    return OutgoingEvent(ref=i, message_id=event["messageId"], body=orjson.dumps(event))


def resource_for(gateway: TestGateway, **overrides: Any) -> RudderstackResource:
    """A retry budget far shorter than the deliveries below: only progress keeps them alive."""
    settings: dict[str, Any] = {
        "data_plane_url": gateway.url,
        "write_key": WRITE_KEY,
        "retry_max_seconds": 2.0,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.4,
        "request_timeout_seconds": 5.0,
    }
    settings.update(overrides)
    return RudderstackResource(**settings)


def request_sizes(gateway: TestGateway, status: int) -> list[int]:
    """Events per request answered with ``status``, in arrival order."""
    return [
        len(orjson.loads(r.body)["batch"])
        for r in gateway.requests
        if r.status == status and r.body is not None
    ]


def assert_each_event_once_or_repeated_as_is(
    events: list[dict[str, Any]], expected_ids: set[str]
) -> None:
    """Every event arrived; an event that arrived twice is the same event (same messageId)."""
    by_id: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        by_id[event["messageId"]].append(event)
    assert set(by_id) == expected_ids
    for copies in by_id.values():
        assert all(copy == copies[0] for copy in copies)


def test_the_gateway_rate_limit_answers_like_rudder_server(gateway: TestGateway) -> None:
    """The test gateway's own mode: whole requests over the window's budget get 429 without
    Retry-After, a request above the limit never passes, a new window starts afresh."""
    window = 3.0  # long enough for three requests to share one on a busy machine
    gateway.rate_limit(3, window_seconds=window)
    client = httpx.Client(headers={"Content-Type": "application/json"}, auth=(WRITE_KEY, ""))

    def post(n: int) -> httpx.Response:
        body = {"batch": [orjson.loads(outgoing(i).body) for i in range(n)]}
        return client.post(f"{gateway.url}/v1/batch", content=orjson.dumps(body))

    with client:
        # start right after a window boundary so that the three requests share one window
        time.sleep(window - time.monotonic() % window)
        first, second, too_big = post(2), post(2), post(4)
        assert first.status_code == 200
        assert (second.status_code, second.text) == (429, "max requests limit reached\n")
        assert "retry-after" not in second.headers
        assert too_big.status_code == 429
        time.sleep(window - time.monotonic() % window)
        assert post(1).status_code == 200 and post(4).status_code == 429
    assert len(gateway.events) == 3


def test_rate_limited_gateway_gets_every_event_through(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """300 events in one 4,000 KB request against 50 events/s: the request can never pass as
    it is, so repeated 429s must split it and shrink later ones; it takes at least six windows,
    three times the retry budget, which counts only time without progress."""
    gateway.rate_limit(50, window_seconds=1.0)
    resource = resource_for(gateway)
    stats = DeliveryStats()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        outcomes = list(
            resource.deliver(
                [outgoing(i) for i in range(300)], stats, logging.getLogger("test.rate")
            )
        )
    elapsed = time.monotonic() - started

    accepted = [event.ref for outcome in outcomes for event in outcome.accepted]
    assert accepted == list(range(300))
    assert_each_event_once_or_repeated_as_is(gateway.events, {f"m-{i}" for i in range(300)})
    assert max(request_sizes(gateway, 200)) <= 50
    assert request_sizes(gateway, 429)[0] == 300
    assert stats.throttled == len(request_sizes(gateway, 429)) > 0
    assert elapsed > resource.retry_max_seconds  # slow, but never without progress for long
    assert "rate limited (429 without Retry-After): now at most 37 events per request" in (
        caplog.text
    )
    assert "pacing at about" in caplog.text  # once something got through: a pace is learned
    assert gateway.schema_errors == []


def test_429s_with_nothing_through_shrink_the_requests_then_they_grow_back(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 while nothing gets through cuts the events per request to an eighth; the refused
    request is sent again as it was, and split when refused three times in a row; acceptances
    double the events per request back to what the body size allows. No pace is learned from
    refusals alone."""
    resource = resource_for(gateway, max_request_kb=8, max_in_flight=1)
    full = len(list(_packed_sizes(resource)))  # events per 8 KB request
    gateway.fail_next(429, times=3)
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        outcomes = list(
            resource.deliver([outgoing(i) for i in range(2000)], log=logging.getLogger("test.rate"))
        )

    assert sum(len(o.accepted) for o in outcomes) == 2000
    assert_each_event_once_or_repeated_as_is(gateway.events, {f"m-{i}" for i in range(2000)})
    cuts = re.findall(r"now at most (\d+) events per request", caplog.text)
    assert cuts == [str(full // 8)], caplog.text
    refused = [r.body for r in gateway.requests if r.status == 429]
    assert len(refused) == 3 and len(set(refused)) == 1  # sent again as it was, twice
    accepted_sizes = request_sizes(gateway, 200)
    assert accepted_sizes[0] == full // 8  # refused three times: split
    # ...and back to what 8 KB holds later (a few events fewer as their numbers grow longer)
    assert sum(size >= full - 5 for size in accepted_sizes[-8:]) >= 6
    assert "pacing at" not in caplog.text


def test_a_rate_limit_is_paced_not_backed_off(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 26, item 8: 429s without Retry-After were backed off like an outage, growing with
    every refusal in a row, so that most of each window of the limit went unused. Now the pace
    that gets through is learned and requests are sent at it; a refusal is retried at the
    pace, and backs off (at most a few seconds) only when nothing gets through at all.

    With an outage's backoff of 30 to 60 s and a retry budget of 10 s without progress, the
    old policy waited out the whole budget after the first refusals and failed; paced, the
    delivery gets through 60 events/s. The rate it reaches is measured in
    bench/bench_rate_limit.py, not here.
    """
    gateway.rate_limit(60, window_seconds=1.0)
    resource = resource_for(
        gateway, backoff_initial_seconds=30, backoff_max_seconds=60, retry_max_seconds=10
    )
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        outcomes = list(
            resource.deliver([outgoing(i) for i in range(240)], log=logging.getLogger("test.rate"))
        )

    assert [e.ref for o in outcomes for e in o.accepted] == list(range(240))
    assert_each_event_once_or_repeated_as_is(gateway.events, {f"m-{i}" for i in range(240)})
    assert "now pacing at about" in caplog.text


def _packed_sizes(resource: RudderstackResource) -> list[int]:
    """How many of these events one request of the resource's size holds (a dry run packs)."""
    dry = resource.model_copy(update={"data_plane_url": None})
    first = next(dry.deliver(outgoing(i) for i in range(1000)))
    return [event.ref for event in first.accepted]  # type: ignore[misc]


def test_pacing_holds_the_rate_and_counts_the_wait(gateway: TestGateway) -> None:
    """At 40 events/s a request carries at most 40 events and leaves only when the requests
    before it have had their n / 40 seconds: 100 events in requests of 40, 40 and 20 take at
    least (100 - the last request's events) / 40 seconds, all of it paced. Several senders
    reserve the slots, so the 20-event request need not be the last."""
    resource = resource_for(gateway, max_events_per_second=40, retry_max_seconds=0.5)
    stats = DeliveryStats()
    started = time.monotonic()
    outcomes = list(resource.deliver([outgoing(i) for i in range(100)], stats))
    elapsed = time.monotonic() - started

    assert sum(len(o.accepted) for o in outcomes) == 100
    sizes = request_sizes(gateway, 200)
    assert sorted(sizes, reverse=True) == [40, 40, 20]
    least = (100 - sizes[-1]) / 40  # 2 s when the 20 go last, 1.5 s when they do not
    assert elapsed >= least
    assert least - 0.1 <= stats.paced_seconds <= elapsed
    assert len(gateway.events) == 100


def test_pacing_spans_the_windows_of_a_run(gateway: TestGateway) -> None:
    """Deliveries sharing a run's stats (a backfill's windows) share one pace."""
    resource = resource_for(gateway, max_events_per_second=20)
    stats = DeliveryStats()
    started = time.monotonic()
    for window in range(3):
        list(resource.deliver([outgoing(window * 10 + i) for i in range(10)], stats))
    assert time.monotonic() - started >= 1.0  # 30 events at 20/s: the third leaves at 1 s
    # the later windows waited for the slots the first one took (less on a busy machine, where
    # the deliveries take longer to start)
    assert stats.paced_seconds > 0


def test_paced_outage_still_fails_within_the_retry_budget(gateway: TestGateway) -> None:
    """Time held back by pacing does not count against the budget, but backoff does: a data
    plane that answers 503 forever still fails a paced delivery."""
    gateway.fail_next(503, times=10_000)
    resource = resource_for(gateway, max_events_per_second=50, retry_max_seconds=0.5)
    with pytest.raises(RudderstackUnavailableError, match=r"without progress .*503"):
        list(resource.deliver([outgoing(i) for i in range(20)]))
    assert len(gateway.events) == 0


def test_bad_pace_is_refused(gateway: TestGateway) -> None:
    with pytest.raises(RudderstackConfigError, match="max_events_per_second must be > 0"):
        next(resource_for(gateway, max_events_per_second=0).deliver([outgoing(1)]))
    assert gateway.requests == []


# -- a whole sync, in real Dagster ------------------------------------------------------------


def test_sync_bigger_than_several_windows_gets_through_a_rate_limit(
    tmp_path: Path, gateway: TestGateway
) -> None:
    sync = dict(TRACK_SYNC, send_initial_results=True)
    project = write_project(tmp_path, {"user_events": sync}, users=240)
    gateway.rate_limit(60, window_seconds=1.0)
    resource = rudderstack_for(
        gateway.url, retry_max_seconds=2.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.4
    )
    result = run_sync(project, "user_events", resource)

    meta = asset_metadata(result, "user_events", "events")
    assert meta["events_accepted"] == 240 and meta["events_rejected"] == 0
    assert meta["throttled_requests"] > 0 and meta["paced_seconds"] == 0
    by_user = collections.Counter(e["userId"] for e in gateway.events)
    assert set(by_user) == {f"u{i}" for i in range(1, 241)}
    assert_each_event_once_or_repeated_as_is(
        gateway.events, {e["messageId"] for e in gateway.events}
    )
    assert len({e["messageId"] for e in gateway.events}) == 240
    assert any("rate-limited (429)" in line for line in result.run_logs)  # type: ignore[attr-defined]
    # the next run has nothing left to send
    again = run_sync(project, "user_events", resource)
    assert asset_metadata(again, "user_events", "events")["events_accepted"] == 0


@pytest.mark.slow  # dagster job execute in a subprocess
def test_max_events_per_second_from_the_yaml_paces_a_cli_run(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """delivery.max_events_per_second in the YAML reaches the resource of `dagster job execute`;
    paced below the gateway's limit, the run is slower but gets everything through."""
    project = write_project(
        tmp_path, {"user_events": dict(TRACK_SYNC, send_initial_results=True)}, users=150
    )
    config = yaml.safe_load(project.config_path.read_text())
    config["delivery"] = {"max_events_per_second": 100}
    project.config_path.write_text(yaml.safe_dump(config))
    gateway.rate_limit(200, window_seconds=1.0)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    result = job_execute("user_events", env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert len({e["messageId"] for e in gateway.events}) == 150
    assert max(request_sizes(gateway, 200)) <= 100
    assert "paced" in output and "by max_events_per_second" in output
    assert WRITE_KEY not in output
