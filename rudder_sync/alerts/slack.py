"""The Slack channel, through dagster-slack: a bot token (`SlackResource`, chat.postMessage to a
channel) or an incoming webhook (slack_sdk's `WebhookClient`, which dagster-slack installs).

Both are imported when an alert is sent, not when the definitions load: every run pays for what
the project imports, and most runs send no alert.
"""

from __future__ import annotations

from typing import Any

from .message import Alert, AlertDeliveryError
from .settings import SlackChannel


def escape(text: str) -> str:
    """Slack's mrkdwn reads <, > and & as markup: an error message must show them as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(alert: Alert) -> list[dict[str, Any]]:
    """Slack's layout of an alert: a header, what happened, the fix, the run's link."""
    fix = f"\n*Fix:* {escape(alert.fix)}" if alert.status == "firing" else f"\n{escape(alert.fix)}"
    body = escape(alert.what) + fix
    layout: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": alert.subject[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body[:3000]}},
    ]
    if alert.run_url:
        layout.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{alert.run_url}|Run in Dagster>"}],
            }
        )
    return layout


def send(name: str, channel: SlackChannel, alert: Alert) -> None:
    if channel.webhook_url is not None:
        _send_webhook(name, channel, alert)
    else:
        _send_bot(name, channel, alert)


def _send_webhook(name: str, channel: SlackChannel, alert: Alert) -> None:
    assert channel.webhook_url is not None
    env = channel.webhook_url.env
    url = channel.webhook_url.value()
    if not url.strip():
        raise AlertDeliveryError(f"channel '{name}': {env} is not set")
    from slack_sdk.webhook import WebhookClient

    client = WebhookClient(url, timeout=int(channel.timeout_seconds))
    try:
        response = client.send(text=escape(alert.text()), blocks=blocks(alert))
    except OSError as exc:
        raise AlertDeliveryError(
            f"channel '{name}': the Slack webhook ({env}) did not answer: {type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        raise AlertDeliveryError(
            f"channel '{name}': the Slack webhook ({env}) answered HTTP {response.status_code}: "
            f"{response.body[:200]}"
        )


def _send_bot(name: str, channel: SlackChannel, alert: Alert) -> None:
    assert channel.token is not None and channel.channel is not None
    env = channel.token.env
    token = channel.token.value()
    if not token.strip():
        raise AlertDeliveryError(f"channel '{name}': {env} is not set")
    from dagster_slack import SlackResource
    from slack_sdk.errors import SlackApiError

    client = SlackResource(token=token).get_client()
    client.base_url = channel.api_url if channel.api_url.endswith("/") else channel.api_url + "/"
    client.timeout = int(channel.timeout_seconds)
    try:
        client.chat_postMessage(
            channel=channel.channel, text=escape(alert.text()), blocks=blocks(alert)
        )
    except SlackApiError as exc:
        raise AlertDeliveryError(
            f"channel '{name}': Slack refused the message to {channel.channel}: "
            f"{exc.response.get('error', 'unknown error')}"
        ) from None
    except OSError as exc:
        raise AlertDeliveryError(
            f"channel '{name}': Slack ({channel.api_url}) did not answer: {type(exc).__name__}"
        ) from None
