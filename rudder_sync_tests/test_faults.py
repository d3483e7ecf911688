"""Fault injection: a data plane that misbehaves on demand loses nothing and duplicates safely.

Every scenario runs a real sync (real Dagster, real DuckDB state) against the test gateway on
127.0.0.1 and checks the result against the seeded model: the set of (primary key, change type)
delivered is exactly the expected one, and any event seen twice is the same messageId with the
same body.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gateway import DISABLED_WRITE_KEY, TestGateway
from .helpers import (
    SMALL_BODIES_KB,
    SYNC_NAME,
    FixedPortGateway,
    assert_delivered_exactly,
    assert_state_settled,
    asset_metadata,
    change_key,
    failure_text,
    pending_message_ids,
    rudderstack_for,
    run_sync,
    seed_model,
    state_digest,
    wait_until_idle,
)


def gave_up_after(message: str) -> float:
    """The seconds a request was retried before the delivery gave up, from its message."""
    found = re.search(r"gave up on a request of [\d,]+ events after ([\d.]+)s", message)
    assert found, f"no 'gave up' in: {message}"
    return float(found.group(1))


# -- transient faults: the run succeeds, nothing is lost -----------------------------------------

FAULT_KINDS = (
    "500",
    "502",
    "503",
    "504",
    "429",
    "429-retry-after-0",
    "429-retry-after-1",
    "slow",
    "timeout",
    "cut",
    "cut-after-storing",
)
FAILING = {kind for kind in FAULT_KINDS if kind != "slow"}


def _script(gateway: TestGateway, plan: list[str]) -> None:
    """Queue one scripted answer per coming request ("ok": answered normally)."""
    for step in plan:
        if step == "ok":
            gateway.delay_next(0.0)
        elif step == "slow":
            gateway.delay_next(0.2)  # well inside request_timeout_seconds
        elif step == "timeout":
            gateway.delay_next(1.2)  # beyond it: the events are stored after the client gave up
        elif step == "cut":
            gateway.cut_next()
        elif step == "cut-after-storing":
            gateway.cut_next(after_storing=True)
        elif step.startswith("429-retry-after-"):
            gateway.fail_next(429, retry_after=step.rsplit("-", 1)[1])
        else:
            gateway.fail_next(int(step))


def _plan(kinds: tuple[str, ...], faults: int, seed: int) -> list[str]:
    """`faults` faults drawn from `kinds`, spread over healthy requests in a seeded order."""
    rng = random.Random(seed)
    plan = [rng.choice(kinds) for _ in range(faults)] + ["ok"] * faults
    rng.shuffle(plan)
    return plan


SCENARIOS: dict[str, tuple[str, ...]] = {
    "5xx": ("500", "502", "503", "504"),
    "429-with-and-without-retry-after": ("429", "429-retry-after-0", "429-retry-after-1"),
    "slow-answers-and-timeouts": ("slow", "timeout"),
    "cut-before-the-answer": ("cut",),
    "stored-then-cut": ("cut-after-storing",),
    "everything-at-once": FAULT_KINDS,
}


# 429s without Retry-After make the client pace itself for the rest of the run (~20 s of waiting
# here, little CPU): the full suite runs that scenario, the inner loop its covers.
SLOW_SCENARIOS = {
    "429-with-and-without-retry-after": "everything-at-once (429s with Retry-After among the "
    "other faults) and test_rate_limits.py's test_sync_bigger_than_several_windows_gets_through_"
    "a_rate_limit (429s without Retry-After: a sync run, every event once, nothing left)"
}


@pytest.mark.parametrize(
    "kinds",
    [
        pytest.param(
            kinds,
            id=name,
            marks=[pytest.mark.slow(reason=f"covered by {SLOW_SCENARIOS[name]}")]
            if name in SLOW_SCENARIOS
            else [],
        )
        for name, kinds in SCENARIOS.items()
    ],
)
def test_transient_faults_lose_nothing(
    tmp_path: Path, gateway: TestGateway, kinds: tuple[str, ...]
) -> None:
    model = seed_model(tmp_path, gateway.url, rows=600, added=150)
    plan = _plan(kinds, faults=10, seed=len(kinds) * 7919)
    _script(gateway, plan)
    resource = rudderstack_for(
        gateway.url,
        max_request_kb=SMALL_BODIES_KB,
        retry_max_seconds=30.0,
        request_timeout_seconds=0.7 if "timeout" in kinds else 10.0,
    )
    result = run_sync(model.project, SYNC_NAME, resource)
    wait_until_idle(gateway)
    gateway.clear_faults()

    assert len(gateway.requests) >= len(plan), "every scripted answer was used"
    repeats = assert_delivered_exactly(gateway.events, model.expected)
    if set(kinds) <= {"cut-after-storing"}:
        assert repeats > 0, "stored-then-cut must make the client send the same events again"
    assert gateway.schema_errors == []
    # every failed attempt was retried with the very same bytes
    accepted = {r.body for r in gateway.requests if r.status == 200}
    for request in gateway.requests:
        if request.status != 200 and request.body is not None:
            assert request.body in accepted, f"request {request.index} was not re-sent as is"
    meta = asset_metadata(result, SYNC_NAME, "events")
    assert meta["retries"] >= sum(step in FAILING for step in plan)  # more if the host is slow
    assert meta["events_accepted"] == len(model.expected) and meta["events_rejected"] == 0
    assert_state_settled(model)  # nothing left pending: the next run has nothing to send


# -- a data plane that stays down: bounded failure, nothing committed, then everything -----------

RETRY_BUDGET = 1.5


@pytest.fixture
def pinned_gateway() -> Iterator[FixedPortGateway]:
    """A gateway that a test can stop and bring back on the same URL."""
    with TestGateway() as probe:
        port = int(probe.url.rsplit(":", 1)[1])
    gateway = FixedPortGateway(port=port).start()
    try:
        yield gateway
    finally:
        gateway.stop()


DOWN_MODES = {
    "connection-refused": "ConnectError",
    "503-forever": "503 Service Unavailable",
    "429-retry-after-beyond-the-budget": "429 max requests limit reached",
    "timeouts-forever": "ReadTimeout",
}


# The inner loop runs the whole-run contract (nothing committed, the recorded IDs delivered once
# the data plane is back) on two of the modes; the other two reach it through the same give-up
# (RudderstackUnavailableError), which these faster tests check for them.
SLOW_DOWN_MODES = {
    "503-forever": "test_retry_budget_is_configurable (503 all run long, in Dagster) and "
    "test_rudderstack.py::test_persistent_503_gives_up_naming_the_last_error",
    "429-retry-after-beyond-the-budget": (
        "test_rudderstack.py::test_retry_after_beyond_the_budget_gives_up_at_once"
    ),
}


@pytest.mark.parametrize(
    ("mode", "last_error"),
    [
        pytest.param(
            mode,
            last_error,
            id=mode,
            marks=[pytest.mark.slow(reason=f"covered by {SLOW_DOWN_MODES[mode]}")]
            if mode in SLOW_DOWN_MODES
            else [],
        )
        for mode, last_error in DOWN_MODES.items()
    ],
)
def test_data_plane_down_for_the_whole_run(
    tmp_path: Path, pinned_gateway: FixedPortGateway, mode: str, last_error: str
) -> None:
    url, port = pinned_gateway.url, pinned_gateway.port
    model = seed_model(tmp_path, url, rows=300, added=60)
    before = state_digest(model)
    if mode == "connection-refused":
        pinned_gateway.stop()
    elif mode == "503-forever":
        pinned_gateway.fail_next(503, times=10_000)
    elif mode == "429-retry-after-beyond-the-budget":
        pinned_gateway.fail_next(429, times=10_000, retry_after=3600)
    else:
        pinned_gateway.delay_next(1.0, times=10_000)

    resource = rudderstack_for(
        url,
        max_request_kb=SMALL_BODIES_KB,
        retry_max_seconds=RETRY_BUDGET,
        request_timeout_seconds=0.3,
    )
    started = time.monotonic()
    result = run_sync(model.project, SYNC_NAME, resource, raise_on_error=False)
    elapsed = time.monotonic() - started

    assert not result.success
    assert elapsed < RETRY_BUDGET + 30, f"the run took {elapsed:.1f}s"
    message = failure_text(result)
    # a request on the wire at the deadline may take up to request_timeout_seconds more
    assert gave_up_after(message) <= RETRY_BUDGET + 0.3 + 1.0
    assert f"sync '{SYNC_NAME}': delivery stopped" in message
    assert f"retry_max_seconds={RETRY_BUDGET:g}" in message and last_error in message
    assert "sent at the next run" in message
    assert state_digest(model) == before, "a run that delivered nothing committed something"
    recorded_ids = pending_message_ids(model)
    assert set(recorded_ids) == model.expected

    # the data plane comes back on the same URL: everything goes out, with the recorded IDs
    if mode == "connection-refused":
        gateway = FixedPortGateway(port=port).start()
    else:
        wait_until_idle(pinned_gateway)
        pinned_gateway.clear_faults()
        gateway = pinned_gateway
    try:
        stored_while_down = len(gateway.events)
        run_sync(model.project, SYNC_NAME, rudderstack_for(url))
        assert_delivered_exactly(gateway.events, model.expected)
        assert {change_key(e): e["messageId"] for e in gateway.events} == recorded_ids
        assert len(gateway.events) - stored_while_down == len(model.expected)
        assert_state_settled(model)
    finally:
        if gateway is not pinned_gateway:
            gateway.stop()


def test_retry_budget_is_configurable(tmp_path: Path, gateway: TestGateway) -> None:
    """The same outage is retried for as long as retry_max_seconds says, and no longer."""
    model = seed_model(tmp_path, gateway.url, rows=30, added=5)
    gateway.fail_next(503, times=10_000)
    for budget in (0.3, 1.5):
        resource = rudderstack_for(gateway.url, retry_max_seconds=budget)
        result = run_sync(model.project, SYNC_NAME, resource, raise_on_error=False)
        message = failure_text(result)
        assert not result.success and f"retry_max_seconds={budget:g}" in message
        assert budget - 0.1 <= gave_up_after(message) <= budget + 1.0, message


# -- refusals: stop at the first request, commit nothing ----------------------------------------

AUTH_CASES = {
    "wrong-write-key-401": ("not-the-write-key", "the write key was rejected (401"),
    "disabled-source-404": (DISABLED_WRITE_KEY, "the source is disabled (404"),
}


@pytest.mark.parametrize(
    ("key", "cause", "in_flight"),
    [
        (*AUTH_CASES["wrong-write-key-401"], 1),
        (*AUTH_CASES["wrong-write-key-401"], 4),
        (*AUTH_CASES["disabled-source-404"], 4),
    ],
    ids=["wrong-write-key-401-one-in-flight", "wrong-write-key-401", "disabled-source-404"],
)
def test_refused_key_stops_at_the_first_request(
    tmp_path: Path, gateway: TestGateway, key: str, cause: str, in_flight: int
) -> None:
    model = seed_model(tmp_path, gateway.url, rows=600, added=150)
    before = state_digest(model)
    resource = rudderstack_for(
        gateway.url, key=key, max_request_kb=SMALL_BODIES_KB, max_in_flight=in_flight
    )
    result = run_sync(model.project, SYNC_NAME, resource, raise_on_error=False)
    wait_until_idle(gateway)

    assert not result.success
    requests = gateway.requests
    # the delivery needs dozens of requests; it stops with those already on the wire
    assert 1 <= len(requests) <= in_flight
    assert all(r.status in (401, 404) for r in requests)
    assert not [line for line in result.run_logs if "; retry " in line], "a refusal was retried"
    message = failure_text(result)
    assert "RudderStack refused the delivery" in message and cause in message
    assert key not in message
    assert gateway.events == []
    assert state_digest(model) == before
    recorded_ids = pending_message_ids(model)
    assert set(recorded_ids) == model.expected

    run_sync(model.project, SYNC_NAME, rudderstack_for(gateway.url))
    assert_delivered_exactly(gateway.events, model.expected)
    assert {change_key(e): e["messageId"] for e in gateway.events} == recorded_ids


def test_checker_catches_loss_and_unsafe_duplicates() -> None:
    """The oracle itself: a missing change, an extra one and a re-keyed repeat all fail."""
    event = {"userId": "u1", "event": "Row Added", "messageId": "m1", "properties": {}}
    assert assert_delivered_exactly([event, dict(event)], {(1, "added")}) == 1
    bad_cases = [
        ([], {(1, "added")}),
        ([event, {**event, "userId": "u2", "messageId": "m2"}], {(1, "added")}),
        ([event, {**event, "messageId": "m2"}], {(1, "added")}),
        ([event, {**event, "properties": {"x": 1}}], {(1, "added")}),
    ]
    for events, expected in bad_cases:
        with pytest.raises(AssertionError):
            assert_delivered_exactly(events, expected)
