"""What an alert says: the sync, what happened with its numbers, the run's link and the fix.

One `Alert` is rendered by every channel: as plain text (email, Slack's fallback text) and as a
JSON document (the webhook). Alerts carry counts, shares and messages of our own, never row
values or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["firing", "resolved"]

TITLES = {
    "run_failure": "run failed",
    "guard_tripped": "change guard tripped, waiting for approval",
    "rejected_rows": "rejected rows above the share",
    "quarantine": "quarantine grew",
    "freshness": "freshness missed",
    "anomaly": "unusual run (anomaly checks)",
}


class AlertDeliveryError(Exception):
    """A channel did not take an alert; the message names the channel, never its secret."""


@dataclass(frozen=True)
class Alert:
    """One transition of one condition of one sync."""

    sync: str
    condition: str
    status: Status
    what: str  # what happened, with its numbers
    fix: str  # what to do (for a resolved alert: what cleared it)
    run_url: str | None = None
    run_id: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def subject(self) -> str:
        title = TITLES.get(self.condition, self.condition)
        if self.status == "resolved":
            return f"[rudder_sync] RESOLVED sync '{self.sync}': {title}"
        return f"[rudder_sync] sync '{self.sync}': {title}"

    def text(self) -> str:
        """The alert as plain text: subject, what happened, the fix, the run's link."""
        lines = [self.subject, "", self.what]
        if self.status == "firing":
            lines += ["", f"Fix: {self.fix}"]
        elif self.fix:
            lines += ["", self.fix]
        if self.run_url:
            lines += ["", f"Run: {self.run_url}"]
        return "\n".join(lines)

    def document(self) -> dict[str, Any]:
        """The alert as the webhook's JSON body."""
        return {
            "source": "rudder_sync",
            "sync": self.sync,
            "condition": self.condition,
            "status": self.status,
            "title": self.subject,
            "what": self.what,
            "fix": self.fix,
            "run_id": self.run_id,
            "run_url": self.run_url,
            "figures": self.figures,
            "at": self.at,
        }
