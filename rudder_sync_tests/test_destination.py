"""Where a sync delivers: a mistyped or unreachable data plane URL must not lock its state.

The state records its destination only once the gateway accepted something; a wrong URL fails
when the definitions load (malformed) or at the first request (refused, unresolvable), fast and
naming host and port; `move_destination` moves a sync to another URL of the same data plane.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from rudder_sync.assets import IO_MANAGER_KEY, build_sync_assets
from rudder_sync.config import ConfigError, DeliveryConfig
from rudder_sync.definitions import rudderstack_from_env
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.rudderstack import (
    DeliveryStats,
    OutgoingEvent,
    RudderstackResource,
    RudderstackUnreachableError,
)
from rudder_sync.state import open_state, state_path
from rudder_sync.warehouses import build_warehouse
from rudder_sync_tests.gateway import TestGateway
from rudder_sync_tests.helpers import (
    TRACK_SYNC,
    WRITE_KEY,
    Project,
    asset_metadata,
    cli_env,
    job_execute,
    rudderstack_for,
    sql,
    write_project,
)

DAGSTER = str(Path(sys.executable).with_name("dagster"))
SYNC = "user_events"
URL_ENV = "RUDDERSTACK_DATA_PLANE_URL"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recorded_destination(project: Project) -> str | None:
    path = state_path(project.state_dir, SYNC, dry_run=False)
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("select value from meta where key = 'destination'").fetchall()
    return rows[0][0] if rows else None


def run(
    project: Project, rudderstack: RudderstackResource, **events_config: Any
) -> ExecuteInProcessResult:
    """The sync's three assets in real Dagster, with run config on the events step."""
    config = project.config()
    instance = DagsterInstance.ephemeral()
    result = materialize(
        build_sync_assets(config.syncs[SYNC], config.state),
        resources={
            "warehouse": build_warehouse(config.warehouse),
            "rudderstack": rudderstack,
            IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
        },
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {f"{SYNC}__events": {"config": events_config}}},
    )
    result.run_logs = [entry.user_message for entry in instance.all_logs(result.run_id)]  # type: ignore[attr-defined]
    return result


def failure_text(result: ExecuteInProcessResult) -> str:
    return "\n".join(
        event.event_specific_data.error.message  # type: ignore[union-attr]
        for event in result.all_events
        if event.is_step_failure
    )


# -- the stuck-URL story, end to end through the CLI ----------------------------------------------


@pytest.mark.slow  # dagster job execute in a subprocess
def test_a_refused_url_fails_fast_and_the_fixed_url_then_delivers(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {SYNC: dict(TRACK_SYNC, send_initial_results=True)}, users=3)
    port = closed_port()
    env = cli_env(RUDDER_SYNC_CONFIG=str(project.config_path), RUDDERSTACK_WRITE_KEY=WRITE_KEY)

    def execute(url: str) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        done = job_execute(SYNC, {**env, URL_ENV: url}, tmp_path)
        return done, time.monotonic() - started

    typo, elapsed = execute(f"http://127.0.0.1:{port}")
    output = typo.stdout + typo.stderr
    assert typo.returncode != 0
    assert f"cannot reach the data plane at 127.0.0.1:{port}" in output
    assert "before any answer in this run" in output and "check the data plane URL" in output
    # first contact gives up after about 10 s, not after the 120 s retry budget
    assert elapsed < 100, f"the typo run took {elapsed:.0f}s"
    assert WRITE_KEY not in output
    assert recorded_destination(project) is None

    fixed, _ = execute(gateway.url)
    assert fixed.returncode == 0, (fixed.stdout + fixed.stderr)[-3000:]
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2", "u3"]
    assert recorded_destination(project) == gateway.url


@pytest.mark.slow  # dagster job execute in a subprocess
def test_a_malformed_url_fails_when_the_definitions_load(tmp_path: Path) -> None:
    project = write_project(tmp_path, {SYNC: TRACK_SYNC}, users=1)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL="htps://x.dataplane.rudderstack.com",
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
    )
    result = job_execute(SYNC, env, tmp_path)
    assert result.returncode != 0
    assert "RUDDERSTACK_DATA_PLANE_URL is not a usable data plane URL" in result.stderr
    assert not project.state_dir.exists()  # no run started


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("htps://x.dataplane.rudderstack.com", "must be an http(s) URL with a host"),
        ("x.dataplane.rudderstack.com", "must be an http(s) URL with a host"),
        ("https://", "must be an http(s) URL with a host"),
        ("http://rudder.example.com", "refusing plain http to rudder.example.com"),
        ("https://user:hunter2@x.io", "must not contain credentials"),
    ],
)
def test_url_errors_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    with pytest.raises(ConfigError) as caught:
        rudderstack_from_env(DeliveryConfig())
    message = str(caught.value)
    assert message.startswith(f"{URL_ENV} is not a usable data plane URL") and says in message
    assert "Fix: set it to the data plane's base URL" in message
    assert "hunter2" not in message and WRITE_KEY not in message


def test_plain_http_to_a_remote_host_loads_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "http://rudder.example.com")
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", WRITE_KEY)
    resource = rudderstack_from_env(DeliveryConfig(allow_insecure_http=True))
    assert resource.allow_insecure_http


# -- first contact: fast when nothing ever answered, patient once something did -------------------


def events(n: int) -> list[OutgoingEvent]:
    return [
        OutgoingEvent(
            ref=i,
            message_id=f"m-{i}",
            body=orjson.dumps({"type": "track", "messageId": f"m-{i}", "userId": f"u{i}"}),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("url", "host_port"),
    [("http://127.0.0.1:{port}", "127.0.0.1:{port}"), ("https://no-such-host.invalid", None)],
    ids=["connection-refused", "name-does-not-resolve"],
)
def test_first_request_unreachable_gives_up_at_first_contact(
    url: str, host_port: str | None
) -> None:
    port = closed_port()
    resource = RudderstackResource(
        data_plane_url=url.format(port=port),
        write_key=WRITE_KEY,
        retry_max_seconds=60,
        first_contact_seconds=0.5,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    started = time.monotonic()
    with pytest.raises(RudderstackUnreachableError) as caught:
        list(resource.deliver(events(3)))
    assert time.monotonic() - started < 30  # first_contact_seconds, not retry_max_seconds
    message = str(caught.value)
    where = host_port.format(port=port) if host_port else "no-such-host.invalid:443"
    assert f"cannot reach the data plane at {where}" in message
    assert "ConnectError" in message and "before any answer in this run" in message
    assert WRITE_KEY not in message


def test_refused_after_an_answer_is_retried_like_any_outage() -> None:
    """The data plane answered, then refuses for longer than first_contact_seconds: a blip
    mid-run, retried within retry_max_seconds, not a wrong URL."""
    gateway = TestGateway().start()
    port = gateway.port
    resource = RudderstackResource(
        data_plane_url=gateway.url,
        write_key=WRITE_KEY,
        max_request_kb=1,
        max_in_flight=1,
        first_contact_seconds=0.2,
        retry_max_seconds=20,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    stats = DeliveryStats()
    back: list[TestGateway] = []
    try:
        outcomes = resource.deliver(events(200), stats)
        accepted = [e.ref for e in next(outcomes).accepted]
        gateway.stop()  # refused from now on...
        restart = threading.Timer(1.0, lambda: back.append(TestGateway(port=port).start()))
        restart.start()  # ...for a second, five times first_contact_seconds
        accepted += [e.ref for outcome in outcomes for e in outcome.accepted]
        restart.join()
    finally:
        for started in back:
            started.stop()
    assert accepted == list(range(200))
    assert stats.requests > 2  # the outage fell mid-run
    assert stats.retries >= 1
    assert {e["messageId"] for e in gateway.events + back[0].events} == {
        f"m-{i}" for i in range(200)
    }


# -- the recorded destination ---------------------------------------------------------------------


def test_an_accepted_destination_refuses_another_url_until_moved(
    tmp_path: Path, gateway: TestGateway
) -> None:
    project = write_project(tmp_path, {SYNC: dict(TRACK_SYNC, send_initial_results=True)}, users=3)
    assert run(project, rudderstack_for(gateway.url)).success
    assert recorded_destination(project) == gateway.url

    sql(project.warehouse, "update users set plan = 'team' where id = 2")
    with TestGateway() as proxy:  # another URL of the same data plane, say
        refused = run(project, rudderstack_for(proxy.url))
        message = failure_text(refused)
        assert not refused.success
        assert f"was delivered to {gateway.url}, but this run sends to {proxy.url}" in message
        assert f"{{{SYNC}__events: {{config: {{move_destination: true}}}}}}" in message
        assert proxy.events == []

        moved = run(project, rudderstack_for(proxy.url), move_destination=True)
        assert moved.success
        meta = asset_metadata(moved, SYNC, "events")
        assert meta["moved_destination_from"] == gateway.url
        assert meta["destination"] == proxy.url
        assert any("destination moved from" in line for line in moved.run_logs)  # type: ignore[attr-defined]
        # nothing delivered before is resent: only the pending change goes, to the new URL
        assert [(e["userId"], e["event"]) for e in proxy.events] == [
            ("u2", "User Changed Subscription")
        ]
        assert recorded_destination(project) == proxy.url

    back = run(project, rudderstack_for(gateway.url))  # the old URL is now the other one
    assert not back.success and f"was delivered to {proxy.url}" in failure_text(back)


def test_a_destination_recorded_before_anything_was_accepted_does_not_bind(
    tmp_path: Path, gateway: TestGateway
) -> None:
    """States written before this fix recorded the URL before delivering: a typo that never
    accepted anything is replaced silently."""
    project = write_project(tmp_path, {SYNC: dict(TRACK_SYNC, send_initial_results=True)}, users=2)
    with open_state(project.state_dir, SYNC, dry_run=False) as state:
        state.set_meta("destination", "https://typo.dataplane.rudderstack.com")

    result = run(project, rudderstack_for(gateway.url))
    assert result.success, failure_text(result)
    assert sorted(e["userId"] for e in gateway.events) == ["u1", "u2"]
    assert recorded_destination(project) == gateway.url


def test_move_destination_in_a_dry_run_moves_nothing(tmp_path: Path, gateway: TestGateway) -> None:
    project = write_project(tmp_path, {SYNC: dict(TRACK_SYNC, send_initial_results=True)}, users=2)
    assert run(project, rudderstack_for(gateway.url)).success
    with TestGateway() as other:
        result = run(project, rudderstack_for(other.url), move_destination=True, dry_run=True)
        assert result.success
        assert any("move_destination ignored" in line for line in result.run_logs)  # type: ignore[attr-defined]
        assert other.events == []
    assert recorded_destination(project) == gateway.url
