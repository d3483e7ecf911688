"""Open and clear alert conditions, and send an alert on each transition only.

A condition that starts sends one alert ("firing"); runs while it lasts send nothing; the run that
clears it sends one "resolved" alert. A transition is recorded only when at least one channel
took the alert, so an alert that no channel took is tried again at the next evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import SyncConfig
from . import mail, slack, webhook
from .message import Alert, AlertDeliveryError
from .settings import AlertsConfig, EmailChannel, SlackChannel, WebhookChannel
from .status import load_status, save_status

SENDERS: dict[type, Callable[[str, Any, Alert], None]] = {
    SlackChannel: slack.send,
    WebhookChannel: webhook.send,
    EmailChannel: mail.send,
}


@dataclass(frozen=True)
class Observation:
    """What one evaluation saw of one condition."""

    condition: str
    active: bool
    what: str  # firing: what happened with its numbers; resolved: what is true now
    fix: str  # firing: the fix; resolved: what cleared it
    figures: dict[str, Any]
    memory: dict[str, Any] | None = None  # kept for the next evaluation


class Dispatcher:
    """The alerts of one sync: its channels (all, or those the sync names) and conditions."""

    def __init__(self, alerts: AlertsConfig, sync: SyncConfig, state_dir: Path, log: Any) -> None:
        self.alerts = alerts
        self.sync = sync
        self.state_dir = state_dir
        self.log = log
        names = sync.alerts if sync.alerts is not None else list(alerts.channels)
        self.channels = {name: alerts.channels[name] for name in names}

    def observe(self, seen: Observation, run_id: str | None) -> Alert | None:
        """Record an observation; the alert sent for it, if it was a transition."""
        if seen.condition not in self.alerts.on:
            return None
        status = load_status(self.state_dir, self.sync.name, seen.condition)
        if seen.memory is not None:
            status.memory = seen.memory
        if seen.active == status.open:
            save_status(self.state_dir, self.sync.name, seen.condition, status)
            return None
        alert = Alert(
            sync=self.sync.name,
            condition=seen.condition,
            status="firing" if seen.active else "resolved",
            what=seen.what,
            fix=seen.fix,
            run_id=run_id,
            run_url=self.alerts.run_url(run_id) if run_id else None,
            figures=seen.figures,
        )
        if not self.send(alert):
            return None
        status.open = seen.active
        status.since = datetime.now(UTC).isoformat(timespec="seconds") if seen.active else None
        status.run_id = run_id if seen.active else None
        save_status(self.state_dir, self.sync.name, seen.condition, status)
        return alert

    def send(self, alert: Alert) -> bool:
        """Send to every channel of the sync; whether at least one took it."""
        taken = 0
        for name, channel in self.channels.items():
            try:
                SENDERS[type(channel)](name, channel, alert)
                taken += 1
            except AlertDeliveryError as exc:
                self.log.warning(f"sync '{self.sync.name}': alert not sent: {exc}")
        if taken:
            self.log.info(
                f"sync '{self.sync.name}': alert '{alert.condition}' ({alert.status}) sent to "
                f"{taken} of {len(self.channels)} channels"
            )
        return bool(taken)
