"""The `alerts:` section of the sync YAML, checked when the config loads.

```yaml
alerts:
  ui_url: http://dagster.internal:3000          # links in messages
  channels:
    team_slack: {slack: {webhook_url: {env: SLACK_WEBHOOK_URL}}}   # or token + channel
    pager: {webhook: {url: {env: ALERT_WEBHOOK_URL}}}
    mail: {email: {smtp_host: smtp.example.com, smtp_port: 587, user: {env: SMTP_USER},
                   password: {env: SMTP_PASSWORD}, to: [data-team@example.com]}}
  on: [run_failure, guard_tripped, rejected_rows, quarantine, freshness, anomaly]
```

Every secret (a Slack token or webhook URL, a webhook URL, the SMTP password) is `{env: NAME}`
only; the variable must be set when the config loads and is read again when an alert is sent, so
its value never sits in the YAML, in Dagster's storage or in an alert.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, WarehouseSettingsError
from ..warehouses.settings import EnvRef, setting_value

Condition = Literal[
    "run_failure", "guard_tripped", "rejected_rows", "quarantine", "freshness", "anomaly"
]
CONDITIONS: tuple[str, ...] = (
    "run_failure",
    "guard_tripped",
    "rejected_rows",
    "quarantine",
    "freshness",
    "anomaly",
)
EXAMPLE = (
    "'alerts: {channels: {pager: {webhook: {url: {env: ALERT_WEBHOOK_URL}}}}, "
    "on: [run_failure, guard_tripped]}'"
)
CHANNEL_EXAMPLES = {
    "slack": "{slack: {webhook_url: {env: SLACK_WEBHOOK_URL}}} or "
    "{slack: {token: {env: SLACK_BOT_TOKEN}, channel: '#data-alerts'}}",
    "webhook": "{webhook: {url: {env: ALERT_WEBHOOK_URL}}}",
    "email": "{email: {smtp_host: smtp.example.com, smtp_port: 587, user: {env: SMTP_USER}, "
    "password: {env: SMTP_PASSWORD}, to: [data-team@example.com]}}",
}


class SlackChannel(BaseModel):
    """Slack through dagster-slack: a bot token and a channel, or an incoming webhook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slack"] = "slack"
    webhook_url: EnvRef | None = None
    token: EnvRef | None = None
    channel: str | None = None
    # Slack's Web API; another base URL for a proxy (the token mode only).
    api_url: str = "https://slack.com/api/"
    timeout_seconds: float = 10.0


class WebhookChannel(BaseModel):
    """A JSON POST of the alert to a URL of your own (an on-call tool, a chat bridge)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["webhook"] = "webhook"
    url: EnvRef
    timeout_seconds: float = 10.0


class EmailChannel(BaseModel):
    """Email over SMTP: STARTTLS (default), implicit TLS (`ssl`) or plain (`none`, local relays)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["email"] = "email"
    smtp_host: str | EnvRef
    smtp_port: int = 587
    user: str | EnvRef | None = None
    password: EnvRef | None = None
    to: list[str]
    sender: str = "rudder_sync@localhost"
    security: Literal["starttls", "ssl", "none"] = "starttls"
    timeout_seconds: float = 10.0


Channel = SlackChannel | WebhookChannel | EmailChannel
CHANNEL_TYPES: dict[str, type[BaseModel]] = {
    "slack": SlackChannel,
    "webhook": WebhookChannel,
    "email": EmailChannel,
}
SECRETS = {"slack": ("webhook_url", "token"), "webhook": ("url",), "email": ("password",)}
ENV_KEYS = {"email": ("smtp_host", "user")}  # may be {env: NAME} or literal


class AlertsConfig(BaseModel):
    """Where alerts go, and for which conditions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ui_url: str = "http://localhost:3000"
    channels: dict[str, Channel]
    on: tuple[Condition, ...] = CONDITIONS  # type: ignore[assignment]
    # rejected_rows: rows left out by the diff above this share of the model's rows.
    rejected_share: float = 0.0

    def run_url(self, run_id: str) -> str:
        """The run's page in the Dagster UI."""
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"


ALERTS_KEYS = set(AlertsConfig.model_fields)


def unknown_key(body: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    """Refuse a key not in ``allowed``, with a "did you mean"."""
    for key in body:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
            )
            raise ConfigError(f"{prefix}: unknown key '{key}'. Fix: remove it ({hint}).")


def parse_alerts(raw: Any, where: str) -> AlertsConfig | None:
    """The `alerts:` section, or None without one."""
    if raw is None:
        return None
    prefix = f"{where}: alerts"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping. Fix: e.g. {EXAMPLE}.")
    if True in raw and "on" not in raw:
        # YAML 1.1 loaders (PyYAML's, Dagster's for a Component) read the key `on:` as true.
        raw = {("on" if key is True else key): value for key, value in raw.items()}
    unknown_key(raw, ALERTS_KEYS, prefix)
    channels_raw = raw.get("channels")
    if not isinstance(channels_raw, Mapping) or not channels_raw:
        raise ConfigError(
            f"{prefix}: key 'channels' must name at least one channel. Fix: e.g. {EXAMPLE}."
        )
    channels = {
        str(name): _channel(f"{prefix}.channels.{name}", name, body)
        for name, body in channels_raw.items()
    }
    on = raw.get("on", list(CONDITIONS))
    if not isinstance(on, list) or not on:
        raise ConfigError(
            f"{prefix}: key 'on' must list conditions. Fix: e.g. 'on: [{', '.join(CONDITIONS)}]'."
        )
    for condition in on:
        if condition not in CONDITIONS:
            close = difflib.get_close_matches(str(condition), CONDITIONS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{prefix}: key 'on' has unknown condition {condition!r}{hint}. Fix: use "
                f"{', '.join(CONDITIONS)}."
            )
    ui_url = raw.get("ui_url", "http://localhost:3000")
    if not isinstance(ui_url, str) or not re.match(r"https?://[^/\s]+", ui_url):
        raise ConfigError(
            f"{prefix}: key 'ui_url' must be the Dagster UI's base URL (got {ui_url!r}). "
            "Fix: e.g. 'ui_url: http://dagster.internal:3000'."
        )
    share = raw.get("rejected_share", 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ConfigError(
            f"{prefix}: key 'rejected_share' must be a share from 0 to below 1 (got {share!r}). "
            "Fix: e.g. 'rejected_share: 0.01' alerts when more than 1% of rows are left out."
        )
    return AlertsConfig(ui_url=ui_url, channels=channels, on=tuple(on), rejected_share=share)


def _channel(prefix: str, name: Any, body: Any) -> Channel:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(
            f"{prefix}: bad channel name. Fix: use letters, digits, '_' or '-', e.g. 'pager'."
        )
    if not isinstance(body, Mapping) or len(body) != 1:
        raise ConfigError(
            f"{prefix}: expected one channel type (slack, webhook or email). Fix: e.g. "
            f"'{name}: {CHANNEL_EXAMPLES['webhook']}'."
        )
    kind, settings = next(iter(body.items()))
    if kind not in CHANNEL_TYPES:
        close = difflib.get_close_matches(str(kind), sorted(CHANNEL_TYPES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{prefix}: unknown channel type '{kind}'{hint}. Fix: use slack, webhook or email."
        )
    prefix = f"{prefix}.{kind}"
    example = CHANNEL_EXAMPLES[kind]
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys. Fix: e.g. {example}.")
    model = CHANNEL_TYPES[kind]
    unknown_key(settings, set(model.model_fields) - {"kind"}, prefix)
    values = dict(settings)
    try:
        for key in SECRETS[kind]:
            if key in values:
                values[key] = _secret(prefix, key, values[key])
        for key in ENV_KEYS.get(kind, ()):
            if key in values:
                values[key] = setting_value(prefix, key, values[key])
        channel = model(**values)
    except WarehouseSettingsError as exc:
        raise ConfigError(str(exc)) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "?"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{prefix}: key '{key}': {message}. Fix: e.g. {example}.") from None
    _check_channel(prefix, channel, example)
    return channel  # type: ignore[return-value]


def _secret(prefix: str, key: str, value: Any) -> EnvRef:
    """A secret: `{env: NAME}` only, set when the config loads."""
    ref = setting_value(prefix, key, value, secret=True)
    if not isinstance(ref, EnvRef):
        raise WarehouseSettingsError(
            f"{prefix}: key '{key}' must be {{env: NAME}} (got {type(value).__name__}). "
            f"Fix: write '{key}: {{env: {key.upper()}}}' and export {key.upper()}."
        )
    return ref


def _check_channel(prefix: str, channel: BaseModel, example: str) -> None:
    if isinstance(channel, SlackChannel):
        if (channel.webhook_url is None) == (channel.token is None):
            raise ConfigError(
                f"{prefix}: give either 'webhook_url' (an incoming webhook) or 'token' with "
                f"'channel' (a bot), not {'both' if channel.token else 'neither'}. "
                f"Fix: e.g. {example}."
            )
        if channel.token is not None and not (channel.channel or "").strip():
            raise ConfigError(
                f"{prefix}: key 'channel' is missing; a bot token posts to a channel. "
                "Fix: e.g. \"channel: '#data-alerts'\"."
            )
        if channel.webhook_url is not None and channel.channel is not None:
            raise ConfigError(
                f"{prefix}: key 'channel' does not apply to an incoming webhook (it posts to the "
                "channel it was created for). Fix: remove 'channel'."
            )
    if isinstance(channel, EmailChannel):
        if not channel.to or not all(isinstance(a, str) and "@" in a for a in channel.to):
            raise ConfigError(
                f"{prefix}: key 'to' must list email addresses. Fix: e.g. "
                "'to: [data-team@example.com]'."
            )
        if (channel.user is None) != (channel.password is None):
            raise ConfigError(
                f"{prefix}: 'user' and 'password' go together (SMTP login). Fix: give both, "
                "or neither for a relay without login."
            )
