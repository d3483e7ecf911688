"""Alerts (issue 23 item 1) and freshness (item 2), against real receivers on 127.0.0.1.

Real Dagster runs of real syncs trip real conditions; the alerts go out over real HTTP and SMTP
to a webhook server, a Slack-compatible endpoint (dagster-slack / slack_sdk, both modes) and
aiosmtpd. Each run gets a throwaway Dagster instance, as `dagster job execute` from cron does: the
no-repeat rule holds through the status files in the state folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    build_run_status_sensor_context,
    build_sensor_context,
    materialize,
)

from rudder_sync import RudderstackSyncComponent
from rudder_sync.alerts.dispatch import Dispatcher, Observation
from rudder_sync.alerts.freshness import freshness_sensor
from rudder_sync.alerts.runs import SENSOR_NAME as RUN_FAILURE_SENSOR
from rudder_sync.assets import IO_MANAGER_KEY, asset_key, build_sync_assets
from rudder_sync.component import RudderstackSyncAttributes
from rudder_sync.config import load_config, parse_config
from rudder_sync.definitions import build_definitions, sync_definitions
from rudder_sync.errors import ConfigError
from rudder_sync.io_manager import SyncOutputIOManager
from rudder_sync.warehouses import build_warehouse

from .alert_receivers import HttpReceiver, SmtpReceiver
from .gateway import TestGateway
from .helpers import (
    IDENTIFY_SYNC,
    TRACK_SYNC,
    WRITE_KEY,
    cli_env,
    job_execute,
    rudderstack_for,
    run_sync,
    sql,
    write_project,
)

UI = "http://dagster.test:3000"
SECRET_TOKEN = "s3cr3t-hook-T0KEN"
SMTP_USER, SMTP_PASSWORD = "alerts@example.com", "smtp-pa55word-XYZ"
BOT_TOKEN = "xoxb-bot-t0ken-123"


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver(SMTP_USER, SMTP_PASSWORD) as receiver:
        yield receiver


@pytest.fixture
def channels_env(
    http: HttpReceiver, smtp: SmtpReceiver, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The three channels of the issue's example, their secrets in the environment."""
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{http.url}/hooks/{SECRET_TOKEN}")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{http.url}/services/T0/B0/{SECRET_TOKEN}")
    monkeypatch.setenv("SMTP_USER", SMTP_USER)
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    return {
        "ui_url": UI,
        "channels": {
            "team_slack": {"slack": {"webhook_url": {"env": "SLACK_WEBHOOK_URL"}}},
            "pager": {"webhook": {"url": {"env": "ALERT_WEBHOOK_URL"}}},
            "mail": {
                "email": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": smtp.port,
                    "security": "none",
                    "user": {"env": "SMTP_USER"},
                    "password": {"env": "SMTP_PASSWORD"},
                    "to": ["data-team@example.com"],
                }
            },
        },
    }


def alerting_project(
    root: Path, section: dict[str, Any], users: int, name: str = "signups", **sync: Any
) -> Any:
    """A project of one sync (the track sync, or the keys given) with the `alerts` section."""
    body = sync if "type" in sync else {**TRACK_SYNC, **sync}
    project = write_project(root, {name: body}, users=users)
    document = yaml.safe_load(project.config_path.read_text())
    document["alerts"] = section
    project.config_path.write_text(yaml.safe_dump(document))
    return project


def received(http: HttpReceiver, smtp: SmtpReceiver) -> dict[str, list[Any]]:
    """What each receiver got: webhook JSON documents, Slack payloads, emails."""
    return {
        "pager": [r.json() for r in http.on("/hooks/")],
        "slack": [r.json() for r in http.on("/services/")],
        "mail": list(smtp.messages),
    }


def all_text(http: HttpReceiver, smtp: SmtpReceiver) -> str:
    return "\n".join(
        [r.body.decode() for r in http.requests] + [m.as_string() for m in smtp.messages]
    )


def test_guard_alert_fires_once_while_it_lasts_and_resolves_once_on_every_channel(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    project = alerting_project(tmp_path, channels_env, users=200)
    rudderstack = rudderstack_for(gateway.url)
    run_sync(project, "signups", rudderstack)  # the baseline: nothing to alert
    assert http.requests == [] and smtp.messages == []

    sql(project.warehouse, "delete from users where id > 100")  # half the rows gone
    tripped = run_sync(project, "signups", rudderstack, raise_on_error=False)
    got = received(http, smtp)
    assert [len(v) for v in got.values()] == [1, 1, 1]
    document = got["pager"][0]
    assert document["sync"] == "signups" and document["condition"] == "guard_tripped"
    assert document["status"] == "firing"
    assert "removed 50.0%" in document["what"] and "max_removed_fraction" in document["what"]
    assert "approve_large_change: true" in document["fix"]
    assert document["run_url"] == f"{UI}/runs/{tripped.run_id}"
    slack = got["slack"][0]
    assert (
        "change guard tripped" in slack["text"] and f"{UI}/runs/{tripped.run_id}" in slack["text"]
    )
    assert slack["blocks"][0]["type"] == "header"
    mail = got["mail"][0]
    assert (
        str(mail["Subject"]).strip()
        == "[rudder_sync] sync 'signups': change guard tripped, waiting for approval"
    )
    assert mail["To"] == "data-team@example.com" and smtp.logins == [SMTP_USER]
    body = mail.get_payload(decode=True).decode()
    assert "removed 50.0%" in body and "Fix: " in body and f"/runs/{tripped.run_id}" in body

    # Still tripped at the next run (another throwaway instance): no new alert.
    run_sync(project, "signups", rudderstack, raise_on_error=False)
    assert [len(v) for v in received(http, smtp).values()] == [1, 1, 1]

    approved = run_sync(project, "signups", rudderstack, approve_large_change=True)
    got = received(http, smtp)
    assert [len(v) for v in got.values()] == [2, 2, 2]
    resolved = got["pager"][1]
    assert resolved["status"] == "resolved" and resolved["condition"] == "guard_tripped"
    assert resolved["run_url"] == f"{UI}/runs/{approved.run_id}"
    assert (
        str(got["mail"][1]["Subject"]).strip().startswith("[rudder_sync] RESOLVED sync 'signups'")
    )
    assert "RESOLVED" in got["slack"][1]["text"]
    # Only the guard changed state: the approved run's success closes nothing else.
    text = all_text(http, smtp)
    assert SECRET_TOKEN not in text.replace(f"/hooks/{SECRET_TOKEN}", "")
    assert SMTP_PASSWORD not in text and "user1@example.com" not in text


def test_run_failure_alerts_once_and_resolves_when_a_run_delivers(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    """A model that fails (its table is gone) opens run_failure; it narrows to the pager."""
    project = alerting_project(tmp_path, channels_env, users=5, alerts=["pager"])
    rudderstack = rudderstack_for(gateway.url)
    sql(project.warehouse, "alter table users rename to users_moved")
    failed = run_sync(project, "signups", rudderstack, raise_on_error=False)
    assert not failed.success
    run_sync(project, "signups", rudderstack, raise_on_error=False)  # still failing: quiet
    pager = [r.json() for r in http.on("/hooks/")]
    assert len(pager) == 1 and http.on("/services/") == [] and smtp.messages == []
    firing = pager[0]
    assert firing["condition"] == "run_failure" and firing["status"] == "firing"
    assert "the snapshot step failed" in firing["what"] and "users" in firing["what"]
    assert firing["run_url"] == f"{UI}/runs/{failed.run_id}"
    assert "dagster job execute -m rudder_sync.definitions -j signups" in firing["fix"]

    sql(project.warehouse, "alter table users_moved rename to users")
    run_sync(project, "signups", rudderstack)
    pager = [r.json() for r in http.on("/hooks/")]
    assert [(p["condition"], p["status"]) for p in pager] == [
        ("run_failure", "firing"),
        ("run_failure", "resolved"),
    ]


def test_rejected_rows_above_the_share_alert(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    project = alerting_project(
        tmp_path, {**channels_env, "rejected_share": 0.1, "on": ["rejected_rows"]}, users=10
    )
    rudderstack = rudderstack_for(gateway.url)
    sql(project.warehouse, "update users set user_id = null, anon_id = null where id <= 2")
    first = run_sync(project, "signups", rudderstack)
    pager = [r.json() for r in http.on("/hooks/")]
    assert len(pager) == 1 and pager[0]["condition"] == "rejected_rows"
    assert "2 of 10 model rows (20.0%) were left out" in pager[0]["what"]
    assert pager[0]["figures"] == {"rejected_rows": 2, "model_rows": 10, "rejected_share": 0.2}
    assert pager[0]["run_url"] == f"{UI}/runs/{first.run_id}"
    run_sync(project, "signups", rudderstack)
    assert len(http.on("/hooks/")) == 1
    sql(project.warehouse, "update users set user_id = 'u' || id, anon_id = 'a' || id")
    run_sync(project, "signups", rudderstack)
    pager = [r.json() for r in http.on("/hooks/")]
    assert [p["status"] for p in pager] == ["firing", "resolved"]


def test_quarantine_grew_alert_and_clears_when_the_quarantine_empties(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    """A change that RudderStack rejects max_attempts times is quarantined: one alert; the row
    fixed (a changed row is re-admitted and delivered): one resolved alert."""
    sync = {**IDENTIFY_SYNC, "max_attempts": 2}
    alerts = {**channels_env, "on": ["quarantine"]}
    project = alerting_project(tmp_path, alerts, users=3, name="traits", **sync)
    sql(project.warehouse, "update users set plan = 'bad' where id = 2")
    gateway.reject_events_where(
        lambda e: e.get("context", {}).get("traits", {}).get("plan") == "bad", "rejected"
    )
    rudderstack = rudderstack_for(gateway.url)
    run_sync(project, "traits", rudderstack)  # attempt 1: pending
    assert http.on("/hooks/") == []
    quarantined = run_sync(project, "traits", rudderstack)  # attempt 2: quarantined
    run_sync(project, "traits", rudderstack)  # still quarantined, no growth: quiet
    (firing,) = [r.json() for r in http.on("/hooks/")]
    assert firing["condition"] == "quarantine" and firing["status"] == "firing"
    assert firing["figures"] == {"quarantined": 1, "quarantined_before": 0}
    assert "1 changes are quarantined (was 0)" in firing["what"]
    assert "retry_quarantined: true" in firing["fix"]
    assert firing["run_url"] == f"{UI}/runs/{quarantined.run_id}"
    sql(project.warehouse, "update users set plan = 'pro' where id = 2")
    run_sync(project, "traits", rudderstack)
    statuses = [(r.json()["condition"], r.json()["status"]) for r in http.on("/hooks/")]
    assert statuses == [("quarantine", "firing"), ("quarantine", "resolved")]


def test_slack_bot_token_mode_posts_to_the_channel_through_dagster_slack(
    tmp_path: Path, http: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    project = parse_config(
        {
            "syncs": {"signups": TRACK_SYNC},
            "alerts": {
                "ui_url": UI,
                "channels": {
                    "bot": {
                        "slack": {
                            "token": {"env": "SLACK_BOT_TOKEN"},
                            "channel": "#data-alerts",
                            "api_url": f"{http.url}/api/",
                        }
                    }
                },
            },
        },
        base_dir=tmp_path,
    )
    sync = project.syncs["signups"]
    assert sync.alerts_config is not None
    dispatcher = Dispatcher(sync.alerts_config, sync, tmp_path, _Log())
    seen = Observation(
        "run_failure", True, "Sync 'signups': the diff step failed: boom <b> & c", "fix it", {}
    )
    assert dispatcher.observe(seen, "run-1") is not None
    assert dispatcher.observe(seen, "run-2") is None  # still open: nothing
    (request,) = http.on("/api/chat.postMessage")
    assert request.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    payload = request.json()
    assert payload["channel"] == "#data-alerts"
    assert "the diff step failed: boom &lt;b&gt; &amp; c" in payload["text"]  # Slack's escapes
    assert f"{UI}/runs/run-1" in payload["text"]
    assert BOT_TOKEN not in payload["text"] + str(payload.get("blocks"))


def test_freshness_is_dagsters_policy_and_its_sensor_alerts_when_stale_and_when_fresh(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    alerts = {**channels_env, "on": ["freshness"]}
    project = alerting_project(tmp_path, alerts, users=3, freshness={"max_lag": "2h"})
    config = load_config(project.config_path)
    sync = config.syncs["signups"]
    definitions = sync_definitions(sync, config.state)
    specs = {spec.key: spec for a in definitions.assets or [] for spec in a.specs}  # type: ignore[union-attr]
    policy = specs[asset_key(sync, "events")].freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta() == timedelta(hours=2)
    assert specs[asset_key(sync, "diff")].freshness_policy is None
    assert [s.name for s in definitions.sensors or []] == ["signups_freshness_alerts"]
    later = timedelta()  # how far the sensor's clock runs ahead of the real one
    sensor = freshness_sensor(sync, config.state, clock=lambda: datetime.now(UTC) + later)
    assert sensor is not None

    instance = DagsterInstance.ephemeral()
    resources = {
        "warehouse": build_warehouse(config.warehouse),
        "rudderstack": rudderstack_for(gateway.url),
        IO_MANAGER_KEY: SyncOutputIOManager(directory=str(config.state / "outputs")),
    }

    def evaluate() -> str:
        result = sensor.evaluate_tick(build_sensor_context(instance=instance))
        return result.skip_message or ""

    assert "never materialized" in evaluate()
    run = materialize(build_sync_assets(sync, config.state), resources=resources, instance=instance)
    assert "fresh" in evaluate() and http.requests == []
    later = timedelta(hours=2, minutes=1)
    assert evaluate() == "stale; alert sent"
    assert evaluate() == "stale; no alert (no change)"
    (document,) = [r.json() for r in http.on("/hooks/")]
    assert document["condition"] == "freshness" and document["status"] == "firing"
    assert "delivered 2.0h ago" in document["what"]
    assert "more than freshness.max_lag (2.0h)" in document["what"]
    assert document["run_url"] == f"{UI}/runs/{run.run_id}"
    assert "daemon" in document["fix"]
    again = materialize(
        build_sync_assets(sync, config.state), resources=resources, instance=instance
    )
    later = timedelta()
    assert evaluate() == "fresh; alert sent"
    resolved = [r.json() for r in http.on("/hooks/")][-1]
    assert resolved["status"] == "resolved" and resolved["run_url"] == f"{UI}/runs/{again.run_id}"
    assert len(smtp.messages) == 2 and len(http.on("/services/")) == 2


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)

    warning = info


# -- configuration -------------------------------------------------------------------------------


def _config_error(tmp_path: Path, section: Any, **sync: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"syncs": {"signups": {**TRACK_SYNC, **sync}}, "alerts": section}, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    return message


HOOK = {"pager": {"webhook": {"url": {"env": "ALERT_WEBHOOK_URL"}}}}


@pytest.mark.parametrize(
    ("alerts", "sync", "expected"),
    [
        (
            {"chanels": HOOK},
            {},
            "alerts: unknown key 'chanels'. Fix: remove it (did you mean 'channels'?)",
        ),
        (
            {"channels": {"pager": {"webhook": {"url": "https://hooks.example.com/T0/abc"}}}},
            {},
            "alerts.channels.pager.webhook: key 'url' is a secret written in the YAML. Fix: "
            "write 'url: {env: URL}'",
        ),
        (
            {"channels": {"pager": {"webhok": {"url": {"env": "ALERT_WEBHOOK_URL"}}}}},
            {},
            "unknown channel type 'webhok' (did you mean 'webhook'?)",
        ),
        (
            {"channels": HOOK, "on": ["guard_tripped", "run_failures"]},
            {},
            "key 'on' has unknown condition 'run_failures' (did you mean 'run_failure'?)",
        ),
        (
            {"channels": HOOK},
            {"alerts": ["pagr"]},
            "sync 'signups': key 'alerts' names channel 'pagr', which is not under "
            "'alerts.channels' (did you mean 'pager'?)",
        ),
        (
            {"channels": {"s": {"slack": {"token": {"env": "ALERT_WEBHOOK_URL"}}}}},
            {},
            "alerts.channels.s.slack: key 'channel' is missing; a bot token posts to a channel",
        ),
        (
            {
                "channels": {
                    "m": {
                        "email": {
                            "smtp_host": "smtp.example.com",
                            "to": ["a@b.c"],
                            "user": "me",
                            "password": "hunter2",
                        }
                    }
                }
            },
            {},
            "alerts.channels.m.email: key 'password' is a secret written in the YAML",
        ),
        (
            {"channels": {"pager": {"webhook": {"url": {"env": "NO_SUCH_ALERT_URL"}}}}},
            {},
            "reads environment variable NO_SUCH_ALERT_URL, which is not set",
        ),
        ({"channels": HOOK}, {"freshness": {"max_lag": "2 hours"}}, "key 'freshness.max_lag'"),
        ({"channels": HOOK}, {"freshness": {"max_lag": "30s"}}, "must be at least 1m"),
    ],
)
def test_alert_config_mistakes_fail_at_load_naming_the_key_and_the_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    alerts: Any,
    sync: dict[str, Any],
    expected: str,
) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    message = _config_error(tmp_path, alerts, **sync)
    assert expected in message and "Fix:" in message
    assert "hunter2" not in message and "hooks.example.com/T0/abc" not in message


def test_the_component_takes_alerts_as_the_yaml_does_and_its_schema_mirrors_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    alerts = {"ui_url": UI, "channels": HOOK, "on": ["run_failure"]}
    syncs = {"signups": {**TRACK_SYNC, "alerts": ["pager"], "freshness": {"max_lag": "2h"}}}
    component = RudderstackSyncComponent.from_attributes_dict(
        attributes={"syncs": syncs, "alerts": alerts}
    )
    project = component.project(tmp_path)
    assert project == parse_config({"syncs": syncs, "alerts": alerts}, base_dir=tmp_path)
    assert project.syncs["signups"].alerts_config == project.alerts

    schema = RudderstackSyncAttributes.model_json_schema()
    jsonschema.validate({"syncs": syncs, "alerts": alerts}, schema)
    typo = {**alerts, "channels": {"pager": {"webhok": {"url": {"env": "X"}}}}}
    with pytest.raises(jsonschema.ValidationError, match="'webhok' was unexpected"):
        jsonschema.validate({"syncs": syncs, "alerts": typo}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'sometimes' is not one of"):
        jsonschema.validate({"syncs": syncs, "alerts": {**alerts, "on": ["sometimes"]}}, schema)


@pytest.mark.slow  # dagster job execute in a subprocess
def test_cron_style_runs_alert_once_without_a_daemon_or_a_dagster_home(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver
) -> None:
    """`dagster job execute` from cron: a throwaway instance per run, no daemon. The step hooks
    alert in the run; the state folder remembers the open condition between the processes."""
    section = {"ui_url": UI, "channels": {"pager": {"webhook": {"url": {"env": "HOOK_URL"}}}}}
    project = alerting_project(tmp_path, section, users=5)
    env = cli_env(
        RUDDER_SYNC_CONFIG=str(project.config_path),
        RUDDERSTACK_DATA_PLANE_URL=gateway.url,
        RUDDERSTACK_WRITE_KEY=WRITE_KEY,
        HOOK_URL=f"{http.url}/hooks/{SECRET_TOKEN}",
    )
    sql(project.warehouse, "alter table users rename to users_moved")
    for _ in range(2):
        failed = job_execute("signups", env, tmp_path)
        assert failed.returncode != 0
    (alert,) = [r.json() for r in http.on("/hooks/")]
    assert alert["condition"] == "run_failure" and alert["run_url"].startswith(f"{UI}/runs/")
    assert SECRET_TOKEN not in failed.stdout + failed.stderr
    sql(project.warehouse, "alter table users_moved rename to users")
    done = job_execute("signups", env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r.json()["status"] for r in http.on("/hooks/")] == ["firing", "resolved"]


def test_a_run_that_fails_outside_its_steps_alerts_through_the_run_failure_sensor(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    """A run worker that dies fails the run with no step failure: the hooks cannot see it, the
    run-failure sensor does (once); a failure the hooks reported is left to them."""
    project = alerting_project(tmp_path, {**channels_env, "on": ["run_failure"]}, users=1)
    defs = build_definitions(project.config(), rudderstack_for(gateway.url))
    sensor = defs.resolve_sensor_def(RUN_FAILURE_SENSOR)
    instance = DagsterInstance.ephemeral()

    def evaluate(run_id: str) -> None:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        (failure,) = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert failure.dagster_event is not None
        context = build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=failure.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()
        sensor(context)

    killed = instance.create_run_for_job(job_def=defs.resolve_job_def("signups"))
    instance.report_run_failed(killed, "the run worker exited unexpectedly (signal 9)")
    evaluate(killed.run_id)
    evaluate(killed.run_id)  # evaluated again (or another such run): still open, no repeat
    (alert,) = [r.json() for r in http.on("/hooks/")]
    assert alert["condition"] == "run_failure" and alert["run_url"] == f"{UI}/runs/{killed.run_id}"
    assert alert["what"] == (
        "Sync 'signups': the run failed outside its steps: the run worker exited unexpectedly "
        "(signal 9)"
    )

    sql(project.warehouse, "alter table users rename to users_moved")  # a step fails
    failed = defs.resolve_job_def("signups").execute_in_process(
        instance=instance, raise_on_error=False
    )
    evaluate(failed.run_id)
    assert len(http.on("/hooks/")) == 1  # the condition was open already; the hooks own it


def test_a_dry_run_asked_for_by_the_run_config_neither_opens_nor_clears_a_condition(
    tmp_path: Path, gateway: TestGateway, http: HttpReceiver, smtp: SmtpReceiver, channels_env: Any
) -> None:
    project = alerting_project(tmp_path, channels_env, users=5, alerts=["pager"])
    rudderstack = rudderstack_for(gateway.url)
    sql(project.warehouse, "alter table users rename to users_moved")
    run_sync(project, "signups", rudderstack, raise_on_error=False, dry_run=True)
    assert http.requests == []  # a failing dry run: no alert
    run_sync(project, "signups", rudderstack, raise_on_error=False)
    assert len(http.on("/hooks/")) == 1
    sql(project.warehouse, "alter table users_moved rename to users")
    assert run_sync(project, "signups", rudderstack, dry_run=True).success
    assert len(http.on("/hooks/")) == 1  # a dry run's success clears nothing
    run_sync(project, "signups", rudderstack)
    assert [r.json()["status"] for r in http.on("/hooks/")] == ["firing", "resolved"]


def test_the_key_on_written_in_a_yaml_file_is_read_as_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML 1.1 reads a bare `on:` as the boolean true; the documented key must still work."""
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/alerts")
    path = tmp_path / "rudder_sync.yaml"
    path.write_text(
        "alerts:\n"
        "  channels:\n"
        "    pager: {webhook: {url: {env: ALERT_WEBHOOK_URL}}}\n"
        "  on: [run_failure, quarantine]\n"
        "syncs:\n"
        "  users: {model: 'select id, user_id from users', primary_key: id, type: identify,\n"
        "          user_id: user_id}\n"
    )
    config = load_config(path)
    assert config.alerts is not None
    assert config.alerts.on == ("run_failure", "quarantine")
