"""The email channel: one plain-text message over SMTP (STARTTLS, implicit TLS, or plain for a
local relay), logged in with `user`/`password` when given."""

from __future__ import annotations

import smtplib
import ssl
from email import policy
from email.message import EmailMessage

from ..warehouses.settings import EnvRef
from .message import Alert, AlertDeliveryError
from .settings import EmailChannel


def _text(value: str | EnvRef | None) -> str | None:
    return value.value() if isinstance(value, EnvRef) else value


# Headers folded at 200 characters, not 78: the subject stays on its line in every client.
POLICY = policy.SMTP.clone(max_line_length=200)


def message(channel: EmailChannel, alert: Alert) -> EmailMessage:
    mail = EmailMessage(policy=POLICY)
    mail["Subject"] = alert.subject
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.to)
    mail.set_content(alert.text())
    return mail


def send(name: str, channel: EmailChannel, alert: Alert) -> None:
    host = _text(channel.smtp_host) or ""
    if not host.strip():
        raise AlertDeliveryError(f"channel '{name}': no SMTP host (smtp_host is empty)")
    timeout = channel.timeout_seconds
    try:
        if channel.security == "ssl":
            context = ssl.create_default_context()
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                host, channel.smtp_port, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(host, channel.smtp_port, timeout=timeout)
        with smtp:
            if channel.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if channel.user is not None and channel.password is not None:
                smtp.login(_text(channel.user) or "", channel.password.value())
            smtp.send_message(message(channel, alert))
    except smtplib.SMTPAuthenticationError as exc:
        raise AlertDeliveryError(
            f"channel '{name}': the SMTP server refused the login ({exc.smtp_code}); check "
            f"{_env_names(channel)}"
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise AlertDeliveryError(
            f"channel '{name}': SMTP {host}:{channel.smtp_port} failed: {type(exc).__name__}"
        ) from None


def _env_names(channel: EmailChannel) -> str:
    names = [v.env for v in (channel.user, channel.password) if isinstance(v, EnvRef)]
    return " and ".join(names) or "user and password"
