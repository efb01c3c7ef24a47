"""Notify: a group's rendered notice becomes a mail for the outbox, from the receiver's sender to its people.

The mail id is chosen by the caller (the group and the notice's sequence number), so a flush that runs twice
submits the same mail twice, which the outbox takes as one.
"""

from __future__ import annotations

from datetime import datetime

from ..config import Settings
from ..mail import MailRequest, compose_mail
from ..routing_file import Receiver
from .model import AlertGroup
from .render import render_group

GROUP_HEADER = "x-notifier-alert-group"


def alert_mail(group: AlertGroup, receiver: Receiver, settings: Settings, mail_id: str, now: datetime) -> MailRequest:
    """The checked mail for one group's notice, rendered as of `now` (so a re-run renders the same mail)."""
    rendered = render_group(group, receiver.template, now=now)
    critical = any(a.severity == "critical" for a in group.firing)
    return compose_mail(
        mail_id,
        receiver.sender,
        receiver.to,
        rendered.subject,
        rendered.html,
        rendered.text,
        settings,
        cc=receiver.cc,
        importance="high" if critical else "normal",
        headers={GROUP_HEADER: group.key},
    )
