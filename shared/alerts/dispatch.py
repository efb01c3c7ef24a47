"""Dispatch: group state, Alertmanager's aggregation groups in serverless form.

State lives in Table storage (`store.alert_groups`), one partition per group: a `group` row (receiver,
labels, the due time of its one live flush, the last notice) and a row per alert (`a-<hash of source and
fingerprint>`: the alert, its status, the status it was last announced with). The `Dispatcher` is given its
store and its notify stage (`notify.Notifier`), as Alertmanager's dispatcher is given its pipeline.

- `ingest` writes routed alerts to their groups (digest receivers: to the digest buffer instead) and makes
  sure each group has a flush pending: a message on `alerts-flush`, visible after `group_wait` for a new
  group, or at the next `group_interval` tick after the last flush. A pre-grouping source's notification
  (Alertmanager, Grafana) is not grouped again unless the receiver says `regroup`: the notify stage passes
  it through at once.
- `flush` handles such a message. Only the message whose due time is the group's `scheduled_for` acts, so
  redelivered and superseded messages do nothing. The notify stage decides what the group is owed; the
  notice is stored before it is handed over, under a name made of the group and the notice's number, so a
  flush that dies half-way is finished by its redelivery without a second mail. While alerts remain, the
  next flush is one `group_interval` later. A summary message (the mail cap's) goes to the notify stage.

Concurrent instances are kept apart by ETags on the group row; every write can be repeated safely.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from ..errors import InvalidMessage, Unavailable
from ..routing_file import NotifyConfig, Receiver
from ..store import StatusChanged, Store
from ..store.alert_digest import BufferedAlert
from ..store.alert_groups import AlertRow, GroupRow
from ..text import queue_json
from .grouping import group_alerts, receiver_key
from .model import Alert, AlertGroup, stamp
from .model import parse_stamp as _moment
from .notify import Notifier

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
class Ingested:
    """What `ingest` did with a request's alerts: their groups, and the mail each passed-through group got
    at once (by group key)."""

    groups: list[AlertGroup]
    mails: dict[str, str] = field(default_factory=dict)


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


def parse_flush_message(text: str) -> tuple[str, str, datetime]:
    """(kind, name, due) of an `alerts-flush` message: a group's flush (`{"group", "due"}`, the name is the
    group's key) or a receiver's summary of held-back notices (`{"summary", "due"}`, the name is the
    receiver's); InvalidMessage when it is neither."""
    message = queue_json(text, "an alerts-flush message")
    kind = "summary" if "summary" in message else "group"
    name = message.get(kind)
    if not isinstance(name, str):
        raise InvalidMessage(f"not an alerts-flush message: no {kind}")
    due = str(message.get("due", ""))
    try:
        return kind, name, _moment(due)
    except ValueError:
        raise InvalidMessage(f"not an alerts-flush message: due {due[:40]!r} is not a time") from None


class Dispatcher:
    """Group state for one routing configuration, kept in `store`; notices go to the `notify` stage."""

    def __init__(self, config: NotifyConfig, store: Store, notify: Notifier) -> None:
        self.config = config
        self.store = store
        self.notify = notify

    async def ingest(self, alerts: list[Alert], now: datetime) -> Ingested:
        """Pass pre-grouped notifications through at once; record the other alerts in their groups (or the
        digest buffer) and make sure each group has a flush pending."""
        config, store = self.config, self.store
        groups = group_alerts(alerts, config)
        modes = {g.key: config.receiver(g.receiver).mode for g in groups}
        immediate = [g for g in groups if modes[g.key] == "immediate" and g.notification is None]
        passing = [g for g in groups if modes[g.key] == "immediate" and g.notification is not None]
        digest = [g for g in groups if modes[g.key] == "digest"]
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
            await self.schedule_flush(group.key, config.receiver(group.receiver), group.labels, now)
        mails = {}
        for group in passing:
            mail_id = await self.notify.pass_through(group, config.receiver(group.receiver), now)
            if mail_id is not None:
                mails[group.key] = mail_id
        return Ingested(groups, mails)

    async def schedule_flush(self, key: str, receiver: Receiver, labels: dict[str, str], now: datetime) -> None:
        """Make sure the group has one live flush: `group_wait` from now for a new or idle group, else the
        next `group_interval` tick. The message is sent before the row names it: a crash in between leaves a
        message that does nothing, never a group that waits for a message that was not sent."""
        for _ in range(_ATTEMPTS):
            row = await self.store.groups.get(key)
            if row is not None and row.scheduled_for is not None and row.scheduled_for > now - STALE_AFTER:
                return  # a flush is pending; it will see the alerts just written
            if row is None or row.last_flush is None or row.scheduled_for is None:
                due = _whole_second_after(now + timedelta(seconds=receiver.seconds("group_wait")))
            else:
                tick = row.last_flush + timedelta(seconds=receiver.seconds("group_interval"))
                due = max(_whole_second_after(now), tick)
            await self._send_flush(key, due, now)
            if row is None:
                created = GroupRow(key, receiver.name, labels, due, epoch=uuid.uuid4().hex[:12])
                if await self.store.groups.insert(created):
                    return
                continue
            try:
                row.scheduled_for = due
                await self.store.groups.replace(row)
                return
            except StatusChanged:
                continue
        raise Unavailable(f"Alert group {key} is busy; try again.")

    async def _send_flush(self, key: str, due: datetime, now: datetime) -> None:
        delay = max(0, math.ceil((due - now).total_seconds()))
        await self.store.alert_queues.send_flush({"group": key, "due": stamp(due)}, delay)

    async def flush(self, text: str) -> Flush:
        """Handle one `alerts-flush` message: a group's flush (see the module's docstring) or a receiver's
        summary of the notices its mail cap held back (`overflow`)."""
        store = self.store
        kind, key, at = parse_flush_message(text)
        if kind == "summary":
            receiver = next((r for r in self.config.receivers if r.name == key), None)
            if receiver is None:
                return Flush(f"summary:{key}", FlushOutcome.DROPPED)
            outcome, mail_id, listed = await self.notify.summary(receiver, at)
            return Flush(f"summary:{receiver.name}", FlushOutcome(outcome), mail_id, listed)
        row = await store.groups.get(key)
        if row is None or row.scheduled_for != at:
            return Flush(key, FlushOutcome.STALE)
        rows = await store.groups.alerts(key)
        receiver = next((r for r in self.config.receivers if r.name == row.receiver), None)
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
            notice = self.notify.decide(row, members, receiver, at, notice_id)
            if notice is not None:
                source = members[0][1].source  # a group's alerts are all of one source (its key says so)
                notice["held_back"] = not await self.notify.within_cap(receiver, source, at)
                notice = await store.notices.put(notice_name, notice)
        announced: dict[str, str] = {}
        if notice is not None:
            await self.notify.send(key, notice, notice_id, receiver, at)
            announced = notice["alerts"]
            await store.groups.mark_notified(
                key, {row_key: status for row_key, status in announced.items() if status == "firing"}
            )
        remaining = await self._forget_resolved(members, receiver, announced)

        row.last_flush = at
        if notice is not None:
            row.seq, row.last_notice = seq, at
        if remaining:
            following = at + timedelta(seconds=receiver.seconds("group_interval"))
            await self._send_flush(key, following, datetime.now(UTC))
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
            await self.schedule_flush(key, receiver, row.labels, datetime.now(UTC))
        if notice is None:
            return Flush(key, FlushOutcome.QUIET)
        if notice.get("held_back"):
            return Flush(key, FlushOutcome.HELD_BACK, None, len(announced))
        return Flush(key, FlushOutcome.NOTIFIED, notice["mail"]["id"], len(announced))

    async def _forget_resolved(
        self, members: list[tuple[AlertRow, Alert]], receiver: Receiver, announced: dict[str, str]
    ) -> bool:
        """Delete resolved alerts that need no more notice; True when alerts remain in the group. A row
        written since it was read (ETag) stays for the next flush."""
        remaining = False
        for alert_row, alert in members:
            notified = announced.get(alert_row.row_key, alert_row.notified)
            owed = receiver.send_resolved and notified == "firing"  # its resolved notice is still to come
            if alert.status == "firing" or owed:
                remaining = True
                continue
            try:
                await self.store.groups.delete_alert(alert_row)
            except StatusChanged:
                remaining = True
        return remaining


def _alert_at(alert_row: AlertRow, at: datetime) -> Alert:
    """A stored alert, its status as of `at` (an `endsAt` that has passed makes it resolved)."""
    alert = Alert.from_dict(json.loads(alert_row.alert))
    return replace(alert, status=alert.status_at(at))
