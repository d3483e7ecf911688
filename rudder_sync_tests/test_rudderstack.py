"""The delivery client against a real HTTP gateway: packing, retries, splitting, secrecy.

Nothing of rudder_sync is mocked: every case is produced by the test gateway over a socket.
"""

import base64
import collections
import email.utils
import itertools
import logging
import random
import socket
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa
import pytest

from rudder_sync import rudderstack
from rudder_sync.rudderstack import (
    BatchOutcome,
    DeliveryStats,
    EventColumns,
    OutgoingEvent,
    RudderstackAuthError,
    RudderstackConfigError,
    RudderstackError,
    RudderstackResource,
    RudderstackUnavailableError,
    batch_url,
)
from rudder_sync_tests.gateway import TestGateway

KEY = "test-write-key"
TOKEN = base64.b64encode(f"{KEY}:".encode()).decode()
NO_IDS = "gateway 400: request neither has anonymousId nor userId"


def event_dict(i: int, pad: int = 0, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "messageId": f"m-{i}",
        "userId": f"u{i}",
        "event": "Order Completed",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"i": i, "pad": "x" * pad},
        "context": {"library": {"name": "rudder_sync"}},
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not None}


def outgoing(i: int, pad: int = 0, **fields: Any) -> OutgoingEvent:
    event = event_dict(i, pad, **fields)
    return OutgoingEvent(ref=i, message_id=event["messageId"], body=orjson.dumps(event))


def make_events(n: int, pad: int = 0) -> list[OutgoingEvent]:
    return [outgoing(i, pad) for i in range(n)]


def resource_for(gateway: TestGateway, **overrides: Any) -> RudderstackResource:
    """Fast-failing settings so that every failure path stays well under a second or two."""
    settings: dict[str, Any] = {
        "data_plane_url": gateway.url,
        "write_key": KEY,
        "retry_max_seconds": 2.0,
        "backoff_initial_seconds": 0.02,
        "backoff_max_seconds": 0.1,
        "request_timeout_seconds": 2.0,
    }
    settings.update(overrides)
    return RudderstackResource(**settings)


def deliver_all(
    resource: RudderstackResource,
    events: Iterable[OutgoingEvent],
    stats: DeliveryStats | None = None,
    log: logging.Logger | None = None,
) -> list[BatchOutcome]:
    return list(resource.deliver(events, stats=stats, log=log))


def accepted_refs(outcomes: list[BatchOutcome]) -> list[object]:
    return [event.ref for outcome in outcomes for event in outcome.accepted]


def rejected(outcomes: list[BatchOutcome]) -> dict[object, str]:
    return {event.ref: reason for outcome in outcomes for event, reason in outcome.rejected}


def received_ids(gateway: TestGateway) -> list[str]:
    return [event["messageId"] for event in gateway.events]


def wait_for(condition: Any, seconds: float = 3.0) -> None:
    """Let a request that the client gave up on finish on the server side."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


# -- the happy path ------------------------------------------------------------------------


def test_delivers_every_event_once_as_given(gateway: TestGateway) -> None:
    events = make_events(50)
    stats = DeliveryStats()
    outcomes = deliver_all(resource_for(gateway), events, stats)

    assert accepted_refs(outcomes) == list(range(50))
    assert all(outcome.sent and not outcome.rejected for outcome in outcomes)
    assert received_ids(gateway) == [event.message_id for event in events]
    assert gateway.events[0]["timestamp"] == "2024-05-01T12:00:00.123Z"
    assert "sentAt" not in gateway.events[0]
    assert gateway.schema_errors == []
    (request,) = gateway.requests
    assert request.body == b'{"batch":[' + b",".join(e.body for e in events) + b"]}"
    assert request.headers["authorization"] == f"Basic {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["user-agent"].startswith("rudder_sync/")
    assert request.path == "/v1/batch"
    assert (stats.requests, stats.retries, stats.events_accepted) == (1, 0, 50)
    assert stats.bytes_uncompressed == request.body_size
    assert stats.bytes_sent == request.wire_size < request.body_size
    assert stats.seconds > 0 and stats.events_per_second > 0


def test_trailing_slash_and_no_gzip(gateway: TestGateway) -> None:
    deliver_all(resource_for(gateway, data_plane_url=gateway.url + "/", gzip=False), make_events(3))
    (request,) = gateway.requests
    assert request.path == "/v1/batch"
    assert "content-encoding" not in request.headers
    assert request.wire_size == request.body_size
    assert len(gateway.events) == 3


def test_packs_bodies_close_to_the_limit_and_yields_in_order(gateway: TestGateway) -> None:
    limit = 16 * 1024
    gateway.max_request_bytes = limit
    rng = random.Random(7)
    events = [outgoing(i, pad=rng.randint(0, 300)) for i in range(1500)]
    biggest = max(len(event.body) for event in events)

    outcomes = deliver_all(resource_for(gateway, max_request_kb=16, max_in_flight=4), events)

    assert accepted_refs(outcomes) == list(range(1500))  # in input order despite 4 workers
    assert sorted(received_ids(gateway)) == sorted(e.message_id for e in events)
    sizes = sorted((r.body_size or 0 for r in gateway.requests), reverse=True)
    assert len(sizes) > 10 and all(r.status == 200 for r in gateway.requests)
    assert sizes[0] <= limit
    assert all(size > limit - biggest - 1 for size in sizes[:-1])  # only the last is short
    assert gateway.schema_errors == []


def test_event_too_big_for_any_request_is_rejected_without_sending(gateway: TestGateway) -> None:
    fits = outgoing(1, pad=1024 - 12 - len(outgoing(1).body))  # exactly 1024 with the envelope
    too_big = outgoing(2, pad=1024 - 11 - len(outgoing(2).body))
    events = [outgoing(0), fits, too_big, outgoing(3)]
    assert (len(fits.body), len(too_big.body)) == (1012, 1013)

    outcomes = deliver_all(resource_for(gateway, max_request_kb=1), events)

    assert accepted_refs(outcomes) == [0, 1, 3]
    reason = rejected(outcomes)[2]
    assert "1,013 bytes" in reason and "1,024 bytes" in reason
    assert "m-2" not in received_ids(gateway)
    assert max(r.body_size or 0 for r in gateway.requests) == 1024


# -- the gateway refuses part of a batch ---------------------------------------------------


def test_413_splits_batches_until_they_fit(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.max_request_bytes = 20_000
    events = make_events(400, pad=200)
    lonely = outgoing(400, pad=25_000)  # fits our 64 KiB, not the gateway's 20,000 bytes
    log = logging.getLogger("test.rudderstack")
    with caplog.at_level(logging.INFO):
        outcomes = deliver_all(
            resource_for(gateway, max_request_kb=64, max_in_flight=2), [*events, lonely], log=log
        )

    assert accepted_refs(outcomes) == list(range(400))
    assert rejected(outcomes) == {400: "gateway 413: request size exceeds max limit"}
    assert sorted(received_ids(gateway)) == sorted(e.message_id for e in events)
    statuses = collections.Counter(r.status for r in gateway.requests)
    assert statuses[413] >= 1 and set(statuses) == {200, 413}
    assert all((r.body_size or 0) <= 20_000 for r in gateway.requests if r.status == 200)
    assert "(413); packing at most" in caplog.text


def test_400_bisects_to_exactly_the_bad_events(gateway: TestGateway) -> None:
    bad = {
        7: outgoing(7, userId=None),
        150: outgoing(150, userId="   "),
        299: outgoing(299, userId=""),
    }
    events = [bad.get(i) or outgoing(i) for i in range(300)]
    gateway.reject_events_where(lambda e: e["userId"] == "u42", "event is not a valid rudder event")
    stats = DeliveryStats()

    outcomes = deliver_all(resource_for(gateway, max_in_flight=1), events, stats)

    assert rejected(outcomes) == {
        7: NO_IDS,
        150: NO_IDS,
        299: NO_IDS,
        42: "gateway 400: event is not a valid rudder event",
    }
    good = [e.message_id for e in events if e.ref not in (7, 42, 150, 299)]
    assert sorted(received_ids(gateway)) == sorted(good)  # each delivered exactly once
    assert accepted_refs(outcomes) == [e.ref for e in events if e.ref not in (7, 42, 150, 299)]
    assert stats.requests < 4 * 2 * 9  # about 2 requests per level per bad event
    assert (stats.events_accepted, stats.events_rejected) == (296, 4)


# -- events as Arrow columns (the events step's way) ----------------------------------------


def in_runs(events: list[OutgoingEvent], seed: int, longest: int) -> list[EventColumns]:
    """The events as EventColumns runs of random lengths, cut wherever the dice say."""
    rng, runs, start = random.Random(seed), [], 0
    while start < len(events):
        stop = min(len(events), start + rng.randint(1, longest))
        runs.append(EventColumns.of(events[start:stop]))
        start = stop
    return runs


def test_columns_make_the_same_requests_as_single_events(gateway: TestGateway) -> None:
    """Runs of columns (cut anywhere against the requests) are packed greedily, to the byte
    as single events are: each request but the last is full, the next event would not fit."""
    limit = 16 * 1024
    rng = random.Random(11)
    events = [outgoing(i, pad=rng.randint(0, 300)) for i in range(1500)]
    single = deliver_all(resource_for(gateway, max_request_kb=16, max_in_flight=4), events)
    single_bodies = [r.body for r in gateway.requests]

    runs = in_runs(events, seed=3, longest=400)
    assert len(runs) > 5
    columns = deliver_all(resource_for(gateway, max_request_kb=16, max_in_flight=4), runs)

    assert accepted_refs(columns) == accepted_refs(single) == list(range(1500))
    bodies = bodies_in_order(r.body for r in gateway.requests[len(single_bodies) :])
    assert bodies == bodies_in_order(single_bodies)
    inner = b"".join(body[len(b'{"batch":[') : -len(b"]}")] + b"," for body in bodies)
    assert inner == b"".join(e.body + b"," for e in events)
    for body, next_body in itertools.pairwise(bodies):
        next_event = len(orjson.dumps(orjson.loads(next_body)["batch"][0]))
        assert len(body) <= limit < len(body) + 1 + next_event


def bodies_in_order(bodies: Iterable[bytes | None]) -> list[bytes]:
    """Request bodies in the order of their first events (workers answer in any order)."""
    return sorted(
        (body or b"" for body in bodies),
        key=lambda body: orjson.loads(body)["batch"][0]["properties"]["i"],
    )


def sized(i: int, size: int) -> OutgoingEvent:
    """Event i, padded to exactly ``size`` bytes."""
    event = outgoing(i, pad=size - len(outgoing(i).body))
    assert len(event.body) == size
    return event


@pytest.mark.parametrize("as_columns", [False, True], ids=["events", "columns"])
@pytest.mark.parametrize("spare", [0, 1], ids=["exactly full", "one byte over"])
def test_a_request_is_filled_to_the_byte(
    gateway: TestGateway, as_columns: bool, spare: int
) -> None:
    """Three events that fill 1,024 bytes with the envelope and commas go in one request; one
    byte more and the third waits for the next."""
    third = 1024 - len(b'{"batch":[]}') - 2 - 2 * 300 + spare
    events = [sized(0, 300), sized(1, 300), sized(2, third), sized(3, 200)]
    given: Any = (
        [EventColumns.of(events[:1]), EventColumns.of(events[1:])] if as_columns else events
    )

    deliver_all(resource_for(gateway, max_request_kb=1, max_in_flight=1), given)

    sizes = [r.body_size for r in gateway.requests]
    assert sizes == ([1024, 212] if spare == 0 else [613, third + 200 + 13])


def test_columns_bisect_400s_and_reject_too_big_events_inside_a_run(gateway: TestGateway) -> None:
    events = [outgoing(i) for i in range(200)]
    events[5] = outgoing(5, userId=None)
    events[120] = outgoing(120, pad=2000)  # bigger than a 1 KiB request
    events[121] = outgoing(121, userId="")

    outcomes = deliver_all(
        resource_for(gateway, max_request_kb=1, max_in_flight=2), in_runs(events, 5, longest=60)
    )

    assert rejected(outcomes)[5] == rejected(outcomes)[121] == NO_IDS
    assert "bytes; a request body may be at most 1,024 bytes" in rejected(outcomes)[120]
    assert accepted_refs(outcomes) == [i for i in range(200) if i not in (5, 120, 121)]
    assert sorted(received_ids(gateway)) == sorted(
        e.message_id for e in events if e.ref not in (5, 120, 121)
    )


def test_event_columns_as_a_sequence() -> None:
    bodies = [b'{"a":","}', '{"é":"中文 𝄞"}'.encode(), b"{}"]
    events = [OutgoingEvent(ref=10 + i, message_id=f"m{i}", body=b) for i, b in enumerate(bodies)]
    columns = EventColumns.of(events)

    assert list(columns) == events and len(columns) == 3
    assert columns[1] == events[1] and columns[-1] == events[2]
    assert list(columns[1:]) == events[1:] and list(columns[3:]) == []
    assert list(EventColumns.concat([columns[:1], columns[2:]])) == [events[0], events[2]]
    assert list(columns.filter([True, False, True])) == [events[0], events[2]]
    assert columns.ref_array().tolist() == [10, 11, 12]
    assert columns.sizes().tolist() == [len(b) for b in bodies]
    assert columns[1:].request_body() == b'{"batch":[' + b",".join(bodies[1:]) + b"]}"
    with pytest.raises(ValueError, match="one length"):
        EventColumns(columns.refs, columns.message_ids, columns.bodies[:2])
    with pytest.raises(ValueError, match="needs a body"):
        EventColumns(columns.refs, columns.message_ids, pa.array([b"{}", None, b"{}"]))


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_waits_as_long_as_retry_after_says(gateway: TestGateway, form: str) -> None:
    retry_after: str = (
        "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    )
    gateway.fail_next(429, retry_after=retry_after)
    stats = DeliveryStats()
    started = time.monotonic()

    outcomes = deliver_all(resource_for(gateway, retry_max_seconds=5), make_events(5), stats)

    assert time.monotonic() - started >= 1.0
    assert accepted_refs(outcomes) == list(range(5))
    assert [r.status for r in gateway.requests] == [429, 200]
    assert stats.retries == 1 and stats.requests == 2


def test_5xx_are_retried_with_the_same_bytes(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture
) -> None:
    for status in (500, 502, 503, 504):
        gateway.fail_next(status)
    stats = DeliveryStats()
    with caplog.at_level(logging.WARNING):
        outcomes = deliver_all(
            resource_for(gateway), make_events(10), stats, logging.getLogger("test.rudderstack")
        )

    assert accepted_refs(outcomes) == list(range(10))
    requests = gateway.requests
    assert [r.status for r in requests] == [500, 502, 503, 504, 200]
    assert len({r.body for r in requests}) == 1
    assert stats.retries == 4 and len(received_ids(gateway)) == 10
    assert "(503 Service Unavailable); retry 3 in" in caplog.text


@pytest.mark.parametrize("after_storing", [False, True])
def test_cut_connection_is_retried_with_identical_bytes(
    gateway: TestGateway, after_storing: bool
) -> None:
    events = make_events(20)
    gateway.cut_next(after_storing=after_storing)

    outcomes = deliver_all(resource_for(gateway), events)

    assert accepted_refs(outcomes) == list(range(20))
    first, second = gateway.requests
    assert (first.status, second.status) == (0, 200)
    assert first.body == second.body
    counts = collections.Counter(received_ids(gateway))
    assert set(counts) == {e.message_id for e in events}  # duplicates only of the same IDs
    assert set(counts.values()) == {2 if after_storing else 1}


def test_read_timeout_is_retried(gateway: TestGateway) -> None:
    gateway.delay_next(0.6)
    stats = DeliveryStats()
    resource = resource_for(gateway, request_timeout_seconds=0.2)
    outcomes = deliver_all(resource, make_events(5), stats)
    assert accepted_refs(outcomes) == list(range(5))
    assert stats.retries >= 1
    wait_for(lambda: len(gateway.requests) >= 2)  # the slow one still lands (a duplicate)
    assert set(received_ids(gateway)) == {f"m-{i}" for i in range(5)}


def test_down_server_fails_within_the_retry_budget() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resource = RudderstackResource(
        data_plane_url=f"http://127.0.0.1:{port}",
        write_key=KEY,
        retry_max_seconds=0.5,
        backoff_initial_seconds=0.02,
        backoff_max_seconds=0.1,
    )
    stats = DeliveryStats()
    started = time.monotonic()
    with pytest.raises(RudderstackUnavailableError) as caught:
        deliver_all(resource, make_events(3), stats)
    assert time.monotonic() - started < 2.0
    message = str(caught.value)
    assert "ConnectError" in message and "retry_max_seconds=0.5" in message
    assert stats.retries >= 2 and stats.events_accepted == 0


def test_persistent_503_gives_up_naming_the_last_error(gateway: TestGateway) -> None:
    gateway.fail_next(503, times=1000)
    with pytest.raises(RudderstackUnavailableError, match="last error: 503 Service Unavailable"):
        deliver_all(resource_for(gateway, retry_max_seconds=0.3), make_events(3))


def test_retry_after_beyond_the_budget_gives_up_at_once(gateway: TestGateway) -> None:
    gateway.fail_next(429, retry_after=60)
    started = time.monotonic()
    with pytest.raises(RudderstackUnavailableError, match="429 max requests limit reached"):
        deliver_all(resource_for(gateway, retry_max_seconds=5), make_events(3))
    assert time.monotonic() - started < 1.0


# -- errors that stop the run --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "cause"),
    [
        ("wrong-secret-key", "the write key was rejected (401 invalid write key)"),
        ("disabled-write-key", "the source is disabled (404 source is disabled)"),
    ],
)
def test_auth_errors_stop_at_once_and_never_show_the_key(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture, key: str, cause: str
) -> None:
    secrets = (key, base64.b64encode(f"{key}:".encode()).decode())
    resource = resource_for(gateway, write_key=key, max_request_kb=1, max_in_flight=4)
    stats = DeliveryStats()
    outcomes: list[BatchOutcome] = []
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    with pytest.raises(RudderstackAuthError) as caught:
        for outcome in resource.deliver(
            make_events(200), stats, logging.getLogger("test.rudderstack")
        ):
            outcomes.append(outcome)

    assert cause in str(caught.value)
    assert outcomes == []
    assert len(gateway.requests) <= 4  # only what was already in flight
    shown = [
        str(caught.value),
        repr(caught.value),
        "".join(traceback.format_exception(caught.value)),
        caplog.text,
        repr(resource),
        str(resource),
        repr(stats),
    ]
    for text in shown:
        for secret in secrets:
            assert secret not in text


def test_auth_error_does_not_wait_for_slower_batches(gateway: TestGateway) -> None:
    gateway.delay_next(1.5)  # one batch is slow (and then accepted) ...
    gateway.fail_next(401, body="invalid write key")  # ... while the other is refused
    started = time.monotonic()
    with pytest.raises(RudderstackAuthError):
        deliver_all(resource_for(gateway, max_request_kb=1, max_in_flight=2), make_events(20))
    assert time.monotonic() - started < 1.0


def test_wrong_path_is_a_stop_naming_the_url(gateway: TestGateway) -> None:
    with pytest.raises(RudderstackAuthError, match="was not found .*check data_plane_url"):
        deliver_all(resource_for(gateway, data_plane_url=gateway.url + "/nope"), make_events(1))


@pytest.mark.parametrize(("status", "body"), [(405, "Method Not Allowed"), (302, "")])
def test_unexpected_status_is_an_error(gateway: TestGateway, status: int, body: str) -> None:
    gateway.fail_next(status, body=body)
    with pytest.raises(RudderstackError, match=f"unexpected answer from .*: {status}") as caught:
        deliver_all(resource_for(gateway), make_events(1))
    assert type(caught.value) is RudderstackError


# -- configuration -------------------------------------------------------------------------


def test_plain_http_to_a_remote_host_is_refused() -> None:
    resource = RudderstackResource(data_plane_url="http://rudder.example.com", write_key=KEY)
    with pytest.raises(RudderstackConfigError, match="refusing plain http to rudder.example.com"):
        next(resource.deliver(make_events(1)))
    allowed = batch_url("http://rudder.example.com/", allow_insecure_http=True)
    assert allowed == "http://rudder.example.com/v1/batch"


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/", "http://127.0.0.5", "http://[::1]:9", "https://x.io/base"]
)
def test_acceptable_urls(url: str) -> None:
    assert batch_url(url) == url.rstrip("/") + "/v1/batch"


@pytest.mark.parametrize(
    "url", ["ftp://x.io", "https://", "x.io", "https://user:pw@x.io", "https://x.io/?a=1"]
)
def test_unusable_urls(url: str) -> None:
    with pytest.raises(RudderstackConfigError):
        batch_url(url)


@pytest.mark.parametrize("settings", [{"write_key": None}, {"max_in_flight": 0}])
def test_unusable_settings(gateway: TestGateway, settings: dict[str, Any]) -> None:
    with pytest.raises(RudderstackConfigError):
        next(resource_for(gateway, **settings).deliver(make_events(1)))
    assert gateway.requests == []


# -- dry run -------------------------------------------------------------------------------


def verdict_events() -> list[OutgoingEvent]:
    """Events the gateway accepts or refuses for different reasons."""
    raw = [
        orjson.dumps(event_dict(0)),
        orjson.dumps(event_dict(1, userId=None, anonymousId="a1")),
        orjson.dumps(event_dict(2, userId=None)),
        orjson.dumps(event_dict(3, userId=" \t", anonymousId="")),
        orjson.dumps(event_dict(4, userId=12345)),  # the gateway reads it as "12345"
        b'["not", "an", "object"]',
        b"{not json",
        orjson.dumps(event_dict(7, pad=5000)),
    ]
    return [OutgoingEvent(ref=i, message_id=f"m-{i}", body=body) for i, body in enumerate(raw)]


def test_dry_run_sends_nothing_and_predicts_the_gateway(gateway: TestGateway) -> None:
    dry = RudderstackResource(max_request_kb=4)
    assert dry.dry_run
    stats = DeliveryStats()
    predicted = deliver_all(dry, verdict_events(), stats)
    assert all(not outcome.sent for outcome in predicted)
    assert accepted_refs(predicted) == [0, 1, 4]
    reasons = rejected(predicted)
    assert (
        reasons[2] == "dry run, the gateway would answer 400: request neither has "
        "anonymousId nor userId"
    )
    assert "event is not a valid rudder event" in reasons[5]
    assert "invalid json" in reasons[6]
    assert "bytes" in reasons[7]
    assert (stats.requests, stats.events_accepted, stats.events_rejected) == (0, 3, 5)
    assert gateway.requests == []

    real = deliver_all(resource_for(gateway, max_request_kb=4), verdict_events())
    assert accepted_refs(real) == accepted_refs(predicted)
    assert set(rejected(real)) == set(reasons)


# -- streaming -----------------------------------------------------------------------------


def test_reads_events_lazily_and_stops_cleanly(gateway: TestGateway) -> None:
    consumed = itertools.count()

    def endless() -> Iterator[OutgoingEvent]:
        for i in itertools.count():
            next(consumed)
            yield outgoing(i)

    started = time.monotonic()
    deliveries = resource_for(gateway, max_request_kb=1, max_in_flight=2).deliver(endless())
    first = [next(deliveries) for _ in range(3)]
    deliveries.close()
    per_request = len(first[0].accepted)
    assert accepted_refs(first) == list(range(3 * per_request))
    assert next(consumed) <= (3 + 2 + 1) * per_request + 1
    assert time.monotonic() - started < 2.0


def test_progress_is_logged_without_the_key(
    gateway: TestGateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rudderstack, "_PROGRESS_INTERVAL_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="test.rudderstack"):
        deliver_all(
            resource_for(gateway, max_request_kb=1),
            make_events(30),
            log=logging.getLogger("test.rudderstack"),
        )
    progress = [r.getMessage() for r in caplog.records if r.name == "test.rudderstack"]
    assert len(progress) >= 3
    assert progress[-1].startswith("rudderstack: done, 30 events accepted, 0 rejected")
    assert all(KEY not in line and TOKEN not in line for line in progress)


def test_stats_accumulate_over_deliveries(gateway: TestGateway) -> None:
    stats = DeliveryStats()
    resource = resource_for(gateway)
    deliver_all(resource, make_events(5), stats)
    seconds = stats.seconds
    deliver_all(resource, make_events(5), stats)
    assert (stats.requests, stats.events_accepted) == (2, 10)
    assert stats.seconds > seconds
