"""What the data plane answers, taken at its word only when it is RudderStack's (issue 26).

- Item 1: a 2xx that is not the gateway's "OK" (an HTML page, an empty body, other text, JSON)
  comes from something else at the URL: the run fails naming the host and the URL's variable,
  nothing is committed, and everything is delivered once the URL is fixed.
- Item 4: a data plane that refuses every event (400 to every request) is told from a few bad
  events among good ones: stopped after a few requests, not bisected down to single events;
  the run fails with the reason and the attempt does not count toward quarantine.
- Item 7: a data plane slower than request_timeout_seconds fails naming that setting and the fix.

Every answer comes over real HTTP from the test gateway on 127.0.0.1; the syncs run in real
Dagster on a real DuckDB warehouse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from rudder_sync.definitions import build_definitions
from rudder_sync.rudderstack import (
    BatchOutcome,
    OutgoingEvent,
    RudderstackConfigError,
    RudderstackRefusedError,
    RudderstackResource,
    RudderstackUnavailableError,
)

from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    asset_metadata,
    failure_text,
    rudderstack_for,
    run_sync,
    write_project,
)
from .test_destinations import EU_KEY, PROD_KEY, project_with, run_job
from .test_resync import check_results, state_rows

NGINX_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
    "<h1>Welcome to nginx!</h1>\n</body>\n</html>\n"
)
# (body, Content-Type, how the message describes it)
NOT_THE_GATEWAY = {
    "html": (NGINX_PAGE, "text/html", "an HTML page"),
    "empty": ("", "text/plain", "an empty body"),
    "text": ("OK not json", "text/plain", "the text 'OK not json'"),
    "json": ('{"status": "ok"}', "application/json", "a JSON document"),
}


def outgoing(i: int, **fields: Any) -> OutgoingEvent:
    event = {
        "type": "track",
        "messageId": f"m-{i}",
        "userId": f"u{i}",
        "event": "Order Completed",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"i": i},
        **fields,
    }
    return OutgoingEvent(ref=i, message_id=event["messageId"], body=orjson.dumps(event))


def resource_for(url: str, **overrides: Any) -> RudderstackResource:
    settings: dict[str, Any] = {
        "data_plane_url": url,
        "write_key": WRITE_KEY,
        "retry_max_seconds": 2.0,
        "backoff_initial_seconds": 0.02,
        "backoff_max_seconds": 0.1,
        "request_timeout_seconds": 2.0,
        **overrides,
    }
    return RudderstackResource(**settings)


def deliver_until_raised(
    resource: RudderstackResource, events: list[OutgoingEvent]
) -> tuple[list[BatchOutcome], BaseException]:
    """The outcomes yielded before the delivery raised, and what it raised."""
    outcomes: list[BatchOutcome] = []
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the callers check its type
        for outcome in resource.deliver(events):
            outcomes.append(outcome)
    return outcomes, raised.value


# -- item 1: a 2xx that is not RudderStack's answer ------------------------------------------


@pytest.mark.parametrize("kind", list(NOT_THE_GATEWAY))
def test_a_2xx_that_is_not_the_gateways_ok_fails_naming_the_host(
    gateway: TestGateway, kind: str
) -> None:
    body, content_type, described = NOT_THE_GATEWAY[kind]
    gateway.impersonate(200, body, content_type)

    outcomes, error = deliver_until_raised(
        resource_for(gateway.url), [outgoing(i) for i in range(50)]
    )

    assert isinstance(error, RudderstackConfigError)
    message = str(error)
    assert f"the server at 127.0.0.1:{gateway.port} answered 200 with {described}" in message
    assert "this is not a RudderStack data plane" in message
    assert "Fix: check data_plane_url" in message  # set directly, not from a variable
    assert "\n" not in message and WRITE_KEY not in message
    assert not any(outcome.accepted for outcome in outcomes)  # nothing taken as delivered


@pytest.mark.parametrize(("status", "body"), [(204, ""), (202, "OK")])
def test_other_2xx_statuses_are_not_the_gateways_answer(
    gateway: TestGateway, status: int, body: str
) -> None:
    gateway.impersonate(status, body)
    _, error = deliver_until_raised(resource_for(gateway.url), [outgoing(1)])
    assert isinstance(error, RudderstackConfigError)
    assert f"answered {status} with" in str(error)


@pytest.mark.parametrize("body", ["OK", "ok", "OK\n"])
def test_the_gateways_ok_in_either_case_is_accepted(gateway: TestGateway, body: str) -> None:
    """rudder-server answers "OK" (older versions, the OpenAPI spec) or "ok" (v1.83)."""
    gateway.impersonate(200, body)
    outcomes = list(resource_for(gateway.url).deliver([outgoing(i) for i in range(5)]))
    assert [e.ref for o in outcomes for e in o.accepted] == [0, 1, 2, 3, 4]


def test_the_message_names_the_variable_the_url_came_from(
    gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named destination's URL comes from its own variable: the fix names that one."""
    monkeypatch.setenv("RS_EU_URL", gateway.url)
    gateway.impersonate(200, NGINX_PAGE, "text/html")
    _, error = deliver_until_raised(resource_for(gateway.url), [outgoing(1)])
    assert "Fix: check RS_EU_URL (scheme, host, port and path" in str(error)


def test_a_named_destination_pointed_at_another_server_names_its_own_variable(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the YAML's destinations, through the definitions and the job, as in production."""
    for name in ("RUDDERSTACK_DATA_PLANE_URL", "RUDDERSTACK_WRITE_KEY"):
        monkeypatch.delenv(name, raising=False)
    project = project_with(tmp_path, {"users_eu": dict(IDENTIFY_SYNC, destination="eu")})
    gateway.impersonate(200, NGINX_PAGE, "text/html")
    monkeypatch.setenv("RS_URL", "http://127.0.0.1:9")  # the other destination, unused
    monkeypatch.setenv("RS_KEY", PROD_KEY)
    monkeypatch.setenv("RS_EU_URL", gateway.url)
    monkeypatch.setenv("RS_EU_KEY", EU_KEY)

    result = run_job(build_definitions(project.config()), "users_eu")

    assert not result.success
    message = failure_text(result)
    assert f"the server at 127.0.0.1:{gateway.port} answered 200 with an HTML page" in message
    assert "Fix: check RS_EU_URL (scheme, host, port and path" in message
    assert "RUDDERSTACK_DATA_PLANE_URL" not in message and EU_KEY not in message


def test_a_sync_pointed_at_another_server_commits_nothing_and_delivers_once_fixed(
    tmp_path: Path, gateway: TestGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26, item 1: the run reported the events delivered, committed them, and after the
    URL was fixed nothing was sent again. One run per kind of answer, each checked on its own,
    then the fixed run: a kind that committed anything leaves fewer than 5 pending after it."""
    project = write_project(tmp_path, {"user_events": dict(TRACK_SYNC, send_initial_results=True)})
    for kind, (body, content_type, described) in NOT_THE_GATEWAY.items():
        with TestGateway() as impostor:
            impostor.impersonate(200, body, content_type)
            monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", impostor.url)
            wrong = run_sync(
                project, "user_events", rudderstack_for(impostor.url), raise_on_error=False
            )
            assert impostor.requests, kind  # it was asked
        assert not wrong.success, kind
        message = failure_text(wrong)
        assert f"the server at 127.0.0.1:{impostor.port} answered 200 with {described}" in message
        assert "this is not a RudderStack data plane" in message, kind
        assert "Fix: check RUDDERSTACK_DATA_PLANE_URL" in message, kind
        assert state_rows(project, "user_events", "select count(*) from pending") == [(5,)], kind

    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", gateway.url)
    fixed = run_sync(project, "user_events", rudderstack_for(gateway.url))
    assert asset_metadata(fixed, "user_events", "events")["events_accepted"] == 5
    assert sorted(e["userId"] for e in gateway.events) == [f"u{i}" for i in range(1, 6)]


# -- item 4: a data plane that refuses everything -----------------------------------------------


def test_a_data_plane_refusing_every_request_is_stopped_after_a_few_requests(
    gateway: TestGateway,
) -> None:
    """It used to take two requests per event (bisecting down to single events): 800 here."""
    gateway.fail_next(400, times=1_000_000, body="invalid request")

    outcomes, error = deliver_until_raised(
        resource_for(gateway.url), [outgoing(i) for i in range(400)]
    )

    assert isinstance(error, RudderstackRefusedError)
    message = str(error)
    assert f"the data plane at 127.0.0.1:{gateway.port} refuses (nearly) every event" in message
    assert "last answer: gateway 400: invalid request" in message
    assert "does not count toward quarantine" in message and "\n" not in message
    assert outcomes == []  # no event was reported refused: none is held against its row
    assert len(gateway.requests) < 100


def test_nearly_every_event_refused_for_one_reason_stops_too(gateway: TestGateway) -> None:
    """One good event in twenty: acceptances keep the refusals from ever being all in a row,
    but the same reason for 95 % of the events is no longer a few bad rows."""
    events = [outgoing(i) if i % 20 == 0 else outgoing(i, userId=None) for i in range(400)]
    _, error = deliver_until_raised(resource_for(gateway.url), events)
    assert isinstance(error, RudderstackRefusedError)
    assert "request neither has anonymousId nor userId" in str(error)
    assert "refused alike" in str(error)
    assert len(gateway.requests) < 200


def test_a_few_bad_events_among_good_ones_are_still_bisected(gateway: TestGateway) -> None:
    """One event in 25 refused, spread over the batch: isolated and rejected, the rest sent."""
    events = [outgoing(i, userId=None) if i % 25 == 7 else outgoing(i) for i in range(1000)]
    outcomes = list(resource_for(gateway.url, max_request_kb=16).deliver(events))
    refused = {e.ref for o in outcomes for e, _ in o.rejected}
    assert refused == {i for i in range(1000) if i % 25 == 7}
    assert len(gateway.events) == 960


def test_a_sync_against_a_data_plane_refusing_everything_fails_and_quarantines_nothing(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """Issue 26, item 4: each run took 1,598 requests for 400 events and exited 0; after
    max_attempts runs every row was quarantined, and nothing was sent when the data plane
    recovered."""
    project = write_project(tmp_path, {"traits": dict(IDENTIFY_SYNC, max_attempts=2)}, users=400)
    gateway.fail_next(400, times=1_000_000, body="invalid request")
    for _ in range(3):  # beyond max_attempts
        before = len(gateway.requests)
        result = run_sync(project, "traits", rudderstack_for(gateway.url), raise_on_error=False)
        assert not result.success
        message = failure_text(result)
        assert "sync 'traits': delivery stopped" in message
        assert "refuses (nearly) every event" in message and "invalid request" in message
        assert len(gateway.requests) - before < 100
    assert state_rows(project, "traits", "select count(*), max(__rs_attempts) from pending") == [
        (400, 0)
    ]

    gateway.clear_faults()  # the data plane is fixed
    recovered = run_sync(project, "traits", rudderstack_for(gateway.url))
    assert asset_metadata(recovered, "traits", "events")["events_accepted"] == 400
    assert check_results(recovered)["quarantined_rows"].passed
    assert len({e["userId"] for e in gateway.events}) == 400


# -- item 7: a data plane slower than request_timeout_seconds ---------------------------------


def test_a_data_plane_slower_than_the_timeout_names_the_setting_and_the_fix(
    gateway: TestGateway,
) -> None:
    gateway.delay_next(1.5, times=100)
    resource = resource_for(gateway.url, request_timeout_seconds=0.3, retry_max_seconds=1.0)

    _, error = deliver_until_raised(resource, [outgoing(i) for i in range(10)])

    assert isinstance(error, RudderstackUnavailableError)
    message = str(error)
    assert "last error: no answer within request_timeout_seconds=0.3 (ReadTimeout)" in message
    assert "The data plane takes longer than request_timeout_seconds=0.3" in message
    assert "Fix: raise delivery.request_timeout_seconds, or lower delivery.max_request_kb" in (
        message
    )
