"""The generic webhook channel: the alert as one JSON POST (`Alert.document`)."""

from __future__ import annotations

import httpx

from .message import Alert, AlertDeliveryError
from .settings import WebhookChannel


def send(name: str, channel: WebhookChannel, alert: Alert) -> None:
    url = channel.url.value()
    if not url.strip():
        raise AlertDeliveryError(f"channel '{name}': {channel.url.env} is not set")
    try:
        response = httpx.post(url, json=alert.document(), timeout=channel.timeout_seconds)
    except httpx.HTTPError as exc:
        raise AlertDeliveryError(
            f"channel '{name}': the webhook ({channel.url.env}) did not answer: "
            f"{type(exc).__name__}"
        ) from None
    if response.status_code >= 300:
        raise AlertDeliveryError(
            f"channel '{name}': the webhook ({channel.url.env}) answered HTTP "
            f"{response.status_code}"
        )
