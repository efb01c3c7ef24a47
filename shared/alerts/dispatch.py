"""Dispatch: grouping with state, Alertmanager's aggregation groups in serverless form.

State lives in Table storage, one partition per group: a `group` row (receiver, labels, the due time of its
one live flush, the last notice) and a row per alert (`a-<hash of source and fingerprint>`: the alert, its status,
the status it was last announced with).

- `ingest` writes routed alerts to their groups (digest receivers: to the digest buffer instead) and makes
  sure each group has a flush pending: a message on `alerts-flush`, visible after `group_wait` for a new
  group, or at the next `group_interval` tick after the last flush.
- `flush` handles such a message. Only the message whose due time is the group's `scheduled_for` acts, so
  redelivered and superseded messages do nothing. It mails when alerts fire that were not announced, when
  announced ones resolved (with `send_resolved`), or when `repeat_interval` has passed; the notice (what it
  mails and the alerts' statuses) is stored before the mail is submitted under an id made of the group and
  the notice's number, so a flush that dies half-way is finished by its redelivery without a second mail.
  While alerts remain, the next flush is one `group_interval` later.

- A pre-grouping source's notification (Alertmanager, Grafana) is not grouped again unless the receiver says
  `regroup`: `pass_through` mails it at once, as the source formed it.
- Every notice counts against its receiver's mail cap (`overflow`); one over the cap goes into a summary.

Concurrent instances are kept apart by ETags on the group row; every write can be repeated safely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from ..audit import audit
from ..config import Settings
from ..errors import AppError, unavailable
from ..mail import MailRequest
from ..outbox import submit_mail
from ..store import StatusChanged, Store
from ..store.alert_digest import BufferedAlert
from ..store.alert_groups import AlertRow, GroupRow
from ..store.mail_caps import HeldBack
from ..text import json_too_deep
from .grouping import group_alerts, receiver_key
from .intake import parse_alerts
from .model import Alert, AlertGroup, stamp
from .model import parse_stamp as _moment
from .notify import alert_mail
from .overflow import held_back, hold_back, parse_summary_message, send_summary, take_slot
from .render import subject_of
from .routing import NotifyConfig, Receiver

log = logging.getLogger("notifier.alerts")

STALE_AFTER = timedelta(minutes=10)  # a flush this overdue was lost; the next alert schedules a new one
_ATTEMPTS = 8  # ETag races tried before an intake gives up with 503


def _whole_second_after(moment: datetime) -> datetime:
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)


def alert_row_key(alert: Alert) -> str:
    """An alert's identity: its fingerprint within the source it came through, so no source can fire,
    resolve or repeat another's alerts. Hashed: fingerprints may hold characters Table keys refuse (Azure
    Monitor's are resource paths)."""
    return "a-" + hashlib.sha256(f"{alert.source}\n{alert.fingerprint}".encode()).hexdigest()[:32]


def stored_alert(alert: Alert) -> str:
    """An alert's JSON as a row stores it; intake has bounded it to fit (`intake.MAX_STORED`)."""
    return json.dumps(alert.as_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class GroupReceipt:
    """What intake tells the caller about one group an alert went to: which routes chose which receiver,
    in which mode, and how it is mailed (`grouping`: `source` passes a pre-grouping source's notification
    through at once, `app` groups by group_by after group_wait, `digest` keeps it for the alert digest)."""

    key: str
    receiver: str
    mode: str
    grouping: str
    routes: tuple[tuple[str, tuple[str, ...]], ...]  # (path, matchers) of each route that chose the receiver
    labels: dict[str, str]
    alerts: int
    mail: str | None = None  # the mail's id, when one was submitted at once

    def answer(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "key": self.key,
            "receiver": self.receiver,
            "mode": self.mode,
            "grouping": self.grouping,
            "routes": [{"path": path, "matchers": list(matchers)} for path, matchers in self.routes],
            "labels": self.labels,
            "alerts": self.alerts,
        }
        if self.mail is not None:
            answer["mail"] = self.mail
        return answer


def _route_at(config: NotifyConfig, path: str) -> tuple[str, ...]:
    """The matchers of the route at `path` (`route.routes[1].routes[0]`)."""
    route = config.route
    for part in path.split(".")[1:]:
        route = route.routes[int(part.removeprefix("routes[").removesuffix("]"))]
    return tuple(route.matchers)


def receipts(groups: list[AlertGroup], config: NotifyConfig, mails: dict[str, str] | None = None) -> list[GroupReceipt]:
    answered = []
    for g in groups:
        mode = config.receiver(g.receiver).mode
        grouping = "digest" if mode == "digest" else "source" if g.notification is not None else "app"
        routes = tuple((path, _route_at(config, path)) for path in g.routes)
        answered.append(
            GroupReceipt(g.key, g.receiver, mode, grouping, routes, g.labels, len(g.alerts), (mails or {}).get(g.key))
        )
    return answered


def preview(group: AlertGroup, receiver: Receiver, settings: Settings, now: datetime) -> dict[str, Any]:
    """The mail a group would get if it were flushed now (a dry run): nothing is stored or sent."""
    mail = alert_mail(group, receiver, settings, "dry-run", now)
    fields = mail.model_dump(by_alias=True, include={"sender", "to", "cc", "subject", "html"})
    return {
        "group": group.key,
        "receiver": receiver.name,
        **fields,
        "to": [m["address"] for m in fields["to"]],
        "cc": [m["address"] for m in fields["cc"]],
    }


async def ingest(
    alerts: list[Alert], config: NotifyConfig, settings: Settings, store: Store, now: datetime
) -> list[GroupReceipt]:
    """Mail passed-through notifications at once; record the other alerts in their groups (or the digest
    buffer) and make sure each group has a flush pending."""
    groups = group_alerts(alerts, config)
    immediate = [g for g in groups if config.receiver(g.receiver).mode == "immediate" and g.notification is None]
    passing = [g for g in groups if config.receiver(g.receiver).mode == "immediate" and g.notification is not None]
    digest = [g for g in groups if config.receiver(g.receiver).mode == "digest"]
    await store.groups.write_alerts(
        [AlertRow(g.key, alert_row_key(a), stored_alert(a), a.status, now) for g in immediate for a in g.alerts]
    )
    await store.digest_buffer.keep(
        [
            BufferedAlert(receiver_key(g.receiver), alert_row_key(a), g.receiver, stored_alert(a), a.status, now)
            for g in digest
            for a in g.alerts
        ]
    )
    for group in immediate:  # sequential: a storm's many groups should not open hundreds of connections
        await schedule_flush(group.key, config.receiver(group.receiver), group.labels, store, now)
    mails = {}
    for group in passing:
        mail_id = await pass_through(group, config.receiver(group.receiver), settings, store, now)
        if mail_id is not None:
            mails[group.key] = mail_id
    return receipts(groups, config, mails)


PASS_THROUGH_RETRY_WINDOW = 120  # seconds in which the same notification again is the source's retry


async def pass_through(
    group: AlertGroup, receiver: Receiver, settings: Settings, store: Store, now: datetime
) -> str | None:
    """Mail a pre-grouping source's notification as it came, at once (within the receiver's mail cap); the
    mail's id, or None when nothing is mailed now (resolved without send_resolved, or held back by the cap).
    The id is made of the notification's content and a short window, so the source's retry of a request
    whose answer it missed is the same mail, which the outbox takes once."""
    if group.status == "resolved" and not receiver.send_resolved:
        return None
    window = int(now.timestamp() // PASS_THROUGH_RETRY_WINDOW)
    content = json.dumps([group.key, group.status, [a.as_dict() for a in group.alerts], window], sort_keys=True)
    mail_id = f"alert-{hashlib.sha256(content.encode()).hexdigest()[:40]}"
    if not await take_slot(store, receiver, now):
        held = HeldBack(group.key, subject_of(group), group.status, len(group.alerts), now.replace(microsecond=0))
        await hold_back(store, receiver, mail_id, held, now)
        return None
    try:
        await submit_mail(store, alert_mail(group, receiver, settings, mail_id, now))
    except AppError as error:
        if error.status != 409:
            raise
        # the same notification within the window, rendered at another second: the source's retry
    return mail_id


async def schedule_flush(key: str, receiver: Receiver, labels: dict[str, str], store: Store, now: datetime) -> None:
    """Make sure the group has one live flush: `group_wait` from now for a new or idle group, else the next
    `group_interval` tick. The message is sent before the row names it: a crash in between leaves a
    message that does nothing, never a group that waits for a message that was not sent."""
    for _ in range(_ATTEMPTS):
        row = await store.groups.get(key)
        if row is not None and row.scheduled_for is not None and row.scheduled_for > now - STALE_AFTER:
            return  # a flush is pending; it will see the alerts just written
        if row is None or row.last_flush is None or row.scheduled_for is None:
            due = _whole_second_after(now + timedelta(seconds=receiver.seconds("group_wait")))
        else:
            tick = row.last_flush + timedelta(seconds=receiver.seconds("group_interval"))
            due = max(_whole_second_after(now), tick)
        await send_flush(store, key, due, now)
        if row is None:
            if await store.groups.insert(GroupRow(key, receiver.name, labels, due, epoch=uuid.uuid4().hex[:12])):
                return
            continue
        try:
            row.scheduled_for = due
            await store.groups.replace(row)
            return
        except StatusChanged:
            continue
    raise unavailable(f"Alert group {key} is busy; try again.")


async def send_flush(store: Store, key: str, due: datetime, now: datetime) -> None:
    delay = max(0, math.ceil((due - now).total_seconds()))
    await store.alert_queues.send_flush({"group": key, "due": stamp(due)}, delay)


class FlushOutcome(StrEnum):
    """What a flush did: `stale` (not the live message), `quiet` (nothing to say), `notified`, `held_back`
    (over the receiver's mail cap: in the next summary), `dropped` (its receiver is no longer configured)."""

    STALE = "stale"
    QUIET = "quiet"
    NOTIFIED = "notified"
    HELD_BACK = "held_back"
    DROPPED = "dropped"


@dataclass(frozen=True)
class Flush:
    """What a flush did, to which group (or `summary:<receiver>`), with which mail and how many alerts."""

    group: str
    outcome: FlushOutcome
    mail_id: str | None = None
    alerts: int = 0


def parse_flush_message(text: str) -> tuple[str, datetime]:
    """(group key, due) of an `alerts-flush` message; ValueError when it is not one."""
    message = json.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("group"), str):
        raise ValueError("not an alerts-flush message")
    return message["group"], _moment(str(message.get("due", "")))


async def flush(text: str, config: NotifyConfig, settings: Settings, store: Store) -> Flush:
    """Handle one `alerts-flush` message: a group's flush (see the module's docstring) or a receiver's
    summary of the notices its mail cap held back (`overflow`)."""
    summary = parse_summary_message(text)
    if summary is not None:
        receiver = next((r for r in config.receivers if r.name == summary[0]), None)
        if receiver is None:
            return Flush(f"summary:{summary[0]}", FlushOutcome.DROPPED)
        outcome, mail_id, listed = await send_summary(receiver, summary[1], settings, store)
        return Flush(f"summary:{receiver.name}", FlushOutcome(outcome), mail_id, listed)
    key, at = parse_flush_message(text)
    row = await store.groups.get(key)
    if row is None or row.scheduled_for != at:
        return Flush(key, FlushOutcome.STALE)
    rows = await store.groups.alerts(key)
    receiver = next((r for r in config.receivers if r.name == row.receiver), None)
    if receiver is None or receiver.mode != "immediate":
        for stale in rows:
            await store.groups.delete_alert(stale, if_unchanged=False)
        await store.groups.delete(row)
        return Flush(key, FlushOutcome.DROPPED)

    members = [(r, _alert_at(r, at)) for r in rows]  # each stored alert as it stands at the due time
    seq = row.seq + 1
    notice_id = f"{row.epoch}-{seq}"
    notice_name = f"{key}/{notice_id}.json"
    # a notice already stored is one a flush that died had decided on: finish that one, do not decide again
    notice = await store.notices.get(notice_name)
    if notice is None:
        notice = _decide(row, members, receiver, settings, at, notice_id)
        if notice is not None:
            notice["held_back"] = not await take_slot(store, receiver, at)  # over the receiver's mail cap
            notice = await store.notices.put(notice_name, notice)
    announced: dict[str, str] = {}
    if notice is not None:
        if notice.get("held_back"):
            await hold_back(store, receiver, notice_id, held_back(key, notice, at), datetime.now(UTC))
        else:
            await submit_mail(store, MailRequest.model_validate(notice["mail"]))
        announced = notice["alerts"]
        await store.groups.mark_notified(
            key, {row_key: status for row_key, status in announced.items() if status == "firing"}
        )
    remaining = await _forget_resolved(store, members, receiver, announced)

    row.last_flush = at
    if notice is not None:
        row.seq, row.last_notice = seq, at
    if remaining:
        following = at + timedelta(seconds=receiver.seconds("group_interval"))
        await send_flush(store, key, following, datetime.now(UTC))
        row.scheduled_for = following
    else:
        row.scheduled_for = None
    try:
        await store.groups.replace(row)
    except StatusChanged:
        return Flush(key, FlushOutcome.STALE)  # another instance finished this flush first
    if notice is not None:
        await store.notices.delete(notice_name)
    if not remaining and await store.groups.alerts(key):
        # alerts written while this flush ran saw it pending and left the scheduling to it
        await schedule_flush(key, receiver, row.labels, store, datetime.now(UTC))
    if notice is None:
        return Flush(key, FlushOutcome.QUIET)
    if notice.get("held_back"):
        return Flush(key, FlushOutcome.HELD_BACK, None, len(announced))
    return Flush(key, FlushOutcome.NOTIFIED, notice["mail"]["id"], len(announced))


def _alert_at(alert_row: AlertRow, at: datetime) -> Alert:
    """A stored alert, its status as of `at` (an `endsAt` that has passed makes it resolved)."""
    alert = Alert.from_dict(json.loads(alert_row.alert))
    return replace(alert, status=alert.status_at(at))


def _decide(
    row: GroupRow,
    members: list[tuple[AlertRow, Alert]],
    receiver: Receiver,
    settings: Settings,
    at: datetime,
    notice_id: str,
) -> dict[str, Any] | None:
    """The notice this flush owes, or None: new firing alerts, announced ones resolved (send_resolved), or a
    repeat after repeat_interval. The notice lists every firing alert and the resolved ones it announces."""
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
    last = row.last_notice
    every = timedelta(seconds=receiver.seconds("repeat_interval"))
    repeat = bool(firing) and last is not None and at - last >= every
    if not (news or resolved or repeat):
        return None
    group = AlertGroup(receiver.name, row.key, row.labels, tuple(a for _, a in firing + resolved))
    mail_id = f"alert-{hashlib.sha256(row.key.encode()).hexdigest()[:20]}-{notice_id}"
    mail = alert_mail(group, receiver, settings, mail_id, at)
    return {"mail": mail.dump(), "alerts": {row_key: alert.status for row_key, alert in firing + resolved}}


async def _forget_resolved(
    store: Store,
    members: list[tuple[AlertRow, Alert]],
    receiver: Receiver,
    announced: dict[str, str],
) -> bool:
    """Delete resolved alerts that need no more notice; True when alerts remain in the group. A row written
    since it was read (ETag) stays for the next flush."""
    remaining = False
    for alert_row, alert in members:
        notified = announced.get(alert_row.row_key, alert_row.notified)
        owed = receiver.send_resolved and notified == "firing"  # its resolved notice is still to come
        if alert.status == "firing" or owed:
            remaining = True
            continue
        try:
            await store.groups.delete_alert(alert_row)
        except StatusChanged:
            remaining = True
    return remaining


@dataclass(frozen=True)
class InboxOutcome:
    """What became of one `alerts-inbox` message: `ingested` (with its groups) or `poisoned` (with why)."""

    outcome: str
    alerts: int = 0
    groups: tuple[GroupReceipt, ...] = ()
    reason: str = ""


async def ingest_message(
    text: str, message_id: str, config: NotifyConfig, settings: Settings, store: Store, now: datetime
) -> InboxOutcome:
    """One `alerts-inbox` message (any supported format, auto-detected). One that can never be read goes to
    `alerts-inbox-poison` at once, its reason in the log and the audit table; Storage trouble is raised for
    the host to redeliver."""
    if json_too_deep(text):
        return await _poison_inbox(text, message_id, settings, store, "not JSON: nested too deep")
    try:
        alerts = parse_alerts(json.loads(text))
    except ValueError as error:
        return await _poison_inbox(text, message_id, settings, store, f"not JSON: {error}"[:300])
    except AppError as error:
        return await _poison_inbox(text, message_id, settings, store, error.message[:300])
    written = await ingest(alerts, config, settings, store, now)
    return InboxOutcome("ingested", len(alerts), tuple(written))


async def _poison_inbox(text: str, message_id: str, settings: Settings, store: Store, reason: str) -> InboxOutcome:
    await store.alert_queues.poison_intake(text)
    log.warning("alerts-inbox message %s poisoned: %s", message_id, reason)
    await audit(
        store,
        settings,
        operation="alertIntake",
        mailbox="",
        outcome="poisoned",
        caller="alerts-inbox",
        correlation_id=message_id,
        detail=reason,
    )
    return InboxOutcome("poisoned", reason=reason)
