"""Notify: what a group's flush owes its receiver, and the hand-off of that notice to the outbox within the
receiver's mail cap (`overflow`); a pre-grouping source's notification passed through as it came.

A notice's mail id is chosen from the group and the notice's sequence number (a pass-through's from its
content and a short window), so a flush that runs twice submits the same mail twice, which the outbox takes
as one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import Settings
from ..errors import Conflict
from ..mail import MailRequest, app_mail_id
from ..outbox import submit_mail
from ..routing_file import Receiver
from ..store import Store
from ..store.alert_groups import AlertRow, GroupRow
from ..store.mail_caps import HeldBack
from .model import Alert, AlertGroup
from .overflow import held_back, hold_back, send_summary, take_slot
from .render import receiver_mail, render_group, subject_of

GROUP_HEADER = "x-notifier-alert-group"
PASS_THROUGH_RETRY_WINDOW = 120  # seconds in which the same notification again is the source's retry


def alert_mail(group: AlertGroup, receiver: Receiver, settings: Settings, mail_id: str, now: datetime) -> MailRequest:
    """The checked mail for one group's notice, rendered as of `now` (so a re-run renders the same mail)."""
    rendered = render_group(group, receiver.template, now=now, zone=receiver.zone)
    critical = any(a.severity == "critical" for a in group.firing)
    return receiver_mail(
        receiver,
        mail_id,
        rendered,
        settings,
        importance="high" if critical else "normal",
        headers={GROUP_HEADER: group.key},
        priority="critical" if critical else "alert",
    )


class Notifier:
    """The notify stage: given the settings (mail policy) and the store it hands notices to."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def decide(
        self,
        group: GroupRow,
        members: list[tuple[AlertRow, Alert]],
        receiver: Receiver,
        at: datetime,
        notice_id: str,
    ) -> dict[str, Any] | None:
        """The notice a flush at `at` owes, or None: new firing alerts, announced ones resolved
        (send_resolved), or a repeat after repeat_interval. The notice lists every firing alert and the
        resolved ones it announces, with the mail that says so."""
        firing: list[tuple[str, Alert]] = []
        resolved: list[tuple[str, Alert]] = []
        news = False
        for alert_row, alert in members:
            announced_firing = alert_row.notified == "firing"
            if alert.status == "firing":
                firing.append((alert_row.row_key, alert))
                news = news or not announced_firing
            elif receiver.send_resolved and announced_firing:
                resolved.append((alert_row.row_key, alert))
        last = group.last_notice
        every = timedelta(seconds=receiver.seconds("repeat_interval"))
        repeat = bool(firing) and last is not None and at - last >= every
        if not (news or resolved or repeat):
            return None
        notified = AlertGroup(receiver.name, group.key, group.labels, tuple(a for _, a in firing + resolved))
        mail_id = app_mail_id("alert", hashlib.sha256(group.key.encode()).hexdigest()[:20], notice_id)
        mail = alert_mail(notified, receiver, self.settings, mail_id, at)
        return {"mail": mail.dump(), "alerts": {row_key: alert.status for row_key, alert in firing + resolved}}

    async def within_cap(self, receiver: Receiver, source: str, at: datetime) -> bool:
        """Count a notice due at `at` against the receiver's mail cap for the source: False when it is to be held
        back."""
        return await take_slot(self.store, receiver, source, at)

    async def send(self, key: str, notice: dict[str, Any], notice_id: str, receiver: Receiver, at: datetime) -> None:
        """Hand a recorded notice over: to the outbox, or (held back by the cap) to the receiver's summary."""
        if notice.get("held_back"):
            await hold_back(self.store, receiver, notice_id, held_back(key, notice, at), datetime.now(UTC))
        else:
            await submit_mail(self.store, MailRequest.model_validate(notice["mail"]))

    async def pass_through(self, group: AlertGroup, receiver: Receiver, now: datetime) -> str | None:
        """Mail a pre-grouping source's notification as it came, at once (within the receiver's mail cap); the
        mail's id, or None when nothing is mailed now (resolved without send_resolved, or held back by the
        cap). The id is made of the notification's content and a short window, so the source's retry of a
        request whose answer it missed is the same mail, which the outbox takes once."""
        if group.status == "resolved" and not receiver.send_resolved:
            return None
        window = int(now.timestamp() // PASS_THROUGH_RETRY_WINDOW)
        ids = [_pass_through_id(group, w) for w in (window, window - 1)]
        for mail_id in ids:  # the source's retry of a request whose answer it missed: that mail, once
            if await self.store.statuses.get(mail_id) is not None:
                return mail_id
        mail_id = ids[0]
        if not await take_slot(self.store, receiver, group.alerts[0].source, now):
            held = HeldBack(group.key, subject_of(group), group.status, len(group.alerts), now.replace(microsecond=0))
            await hold_back(self.store, receiver, mail_id, held, now)
            return None
        # rendered as of now, so its footer says when it was sent; a Conflict is a retry racing this one that
        # submitted the same notification (the id is its content) a moment earlier: that mail stands
        with contextlib.suppress(Conflict):
            await submit_mail(self.store, alert_mail(group, receiver, self.settings, mail_id, now))
        return mail_id

    async def summary(self, receiver: Receiver, due: datetime) -> tuple[str, str | None, int]:
        """Mail the receiver's summary of held-back notices: (outcome, mail id, notices listed)."""
        return await send_summary(receiver, due, self.settings, self.store)


def _pass_through_id(group: AlertGroup, window: int) -> str:
    """The mail id of a notification in a retry window: its content, hashed (an `app:` id, which no caller can
    take, see `shared.mail.APP_ID_PREFIX`)."""
    content = json.dumps([group.key, group.status, [a.as_dict() for a in group.alerts], window], sort_keys=True)
    return app_mail_id("alert", hashlib.sha256(content.encode()).hexdigest()[:40])
