"""The per-receiver mail cap: at most `max_groups_per_interval` group notices per receiver in each
`group_interval` window; the notices beyond it go out together, as one summary mail listing their groups.

Exchange lets a mailbox send about 30 messages a minute and 10,000 recipients a day, so one request with
hundreds of alert names must not become hundreds of mails. Every kind of notice counts (new groups, repeats,
resolutions), so a storm of resolutions is capped the same way as the storm that fired.

State, in the `alertgroups` Table: a `cap` row per receiver (partition `cap-<receiver>`: the current window,
the notices mailed in it, the due time of the pending summary) and a row per held-back notice (partition
`overflow-<receiver>`). A summary is a message on `alerts-flush` (`{"summary": receiver, "due": ...}`), due
at the end of the window its first held-back notice fell in. Like a group's flush, only the message the
`cap` row names acts, the summary is recorded before it is submitted under an id made of the receiver and
its due time, and notices held back while it ran are left for the next summary.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import Settings
from ..errors import Unavailable
from ..mail import MailRequest, app_mail_id
from ..outbox import submit_mail
from ..routing_file import Receiver
from ..store import StatusChanged, Store
from ..store.mail_caps import CapRow, HeldBack
from ..templating import one_line, render_mail
from .grouping import receiver_key
from .model import stamp
from .render import fits, receiver_mail

SUMMARY_CAP = 500  # groups listed in one summary mail; the rest are counted
STALE_AFTER = timedelta(minutes=10)  # a summary this overdue was lost; the next held-back notice sends one
_ATTEMPTS = 8


def _window(receiver: Receiver, at: datetime) -> tuple[datetime, datetime]:
    """The `group_interval` window `at` falls in (aligned on the Unix epoch): its start and its end."""
    length = receiver.seconds("group_interval")
    start = math.floor(at.timestamp() / length) * length
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + length, UTC)


async def take_slot(store: Store, receiver: Receiver, source: str, at: datetime) -> bool:
    """Count a notice due at `at` against its receiver's window for its source: True when it may be mailed,
    False when the window's cap is reached (the notice goes into the summary). Each source has a cap of its own,
    so a flood through one source (say, `generic`) cannot hold back a signed source's critical alert."""
    window = _window(receiver, at)[0]
    key = receiver_key(f"{receiver.name}\n{source}")
    for _ in range(_ATTEMPTS):
        cap = await store.caps.get(key)
        if cap is None:
            if await store.caps.insert(CapRow(key, window, mailed=1)):
                return True
            continue
        current = max(window, cap.window or window)  # a late flush counts against the newer window
        mailed = cap.mailed if current == cap.window else 0
        if mailed >= receiver.max_groups_per_interval:
            return False
        try:
            cap.window, cap.mailed = current, mailed + 1
            await store.caps.replace(cap)
            return True
        except StatusChanged:
            continue
    raise Unavailable(f"The mail cap of receiver {receiver.name} is busy; try again.")


async def hold_back(store: Store, receiver: Receiver, notice_id: str, held: HeldBack, now: datetime) -> None:
    """Keep a notice for the receiver's summary and make sure a summary is pending (repeatable)."""
    await store.caps.hold(receiver_key(receiver.name), notice_id, held)
    await schedule_summary(store, receiver, _window(receiver, held.at)[1], now)


async def schedule_summary(store: Store, receiver: Receiver, due: datetime, now: datetime) -> None:
    """One live summary message per receiver: sent before the `cap` row names it, as a group's flush is."""
    due = max(due, now.replace(microsecond=0) + timedelta(seconds=1))
    key = receiver_key(receiver.name)
    for _ in range(_ATTEMPTS):
        cap = await store.caps.get(key)
        if cap is not None and cap.summary_due is not None and cap.summary_due > now - STALE_AFTER:
            return
        delay = max(0, math.ceil((due - now).total_seconds()))
        await store.alert_queues.send_flush({"summary": receiver.name, "due": stamp(due)}, delay)
        if cap is None:
            if await store.caps.insert(CapRow(key, summary_due=due)):
                return
            continue
        try:
            cap.summary_due = due
            await store.caps.replace(cap)
            return
        except StatusChanged:
            continue
    raise Unavailable(f"The mail cap of receiver {receiver.name} is busy; try again.")


def summary_mail(receiver: Receiver, held: list[HeldBack], settings: Settings, mail_id: str) -> MailRequest:
    """One mail listing the held-back notices (oldest first), at most SUMMARY_CAP and within the mail budget."""
    held = sorted(held, key=lambda h: (h.at, h.subject))
    subject = one_line(
        f"[SUMMARY] {len(held)} more alert group notices for {receiver.name} "
        f"(over {receiver.max_groups_per_interval} per {receiver.group_interval})"
    )
    shown = min(len(held), SUMMARY_CAP)
    while True:
        rendered = render_mail(
            "alert_summary",
            subject,
            receiver=receiver,
            held=held[:shown],
            more=len(held) - shown,
            total=len(held),
            zone=receiver.zone,
        )
        if fits(rendered) or shown <= 1:
            break
        shown //= 2
    return receiver_mail(receiver, mail_id, rendered, settings, priority="alert")


async def send_summary(
    receiver: Receiver, due: datetime, settings: Settings, store: Store
) -> tuple[str, str | None, int]:
    """Handle a summary message: (outcome, mail id, notices listed); outcome `stale`, `quiet` or `notified`."""
    key = receiver_key(receiver.name)
    cap = await store.caps.get(key)
    if cap is None or cap.summary_due != due:
        return "stale", None, 0
    record_name = f"summaries/{key}/{stamp(due).replace(':', '')}.json"
    record = await store.notices.get(record_name)
    if record is None:
        held = await store.caps.held(key)
        if held:
            covered = sorted(h.notice for h in held)  # two summaries may share a due time, never their rows
            digest = hashlib.sha256(json.dumps([receiver.name, stamp(due), covered]).encode()).hexdigest()[:24]
            mail = summary_mail(receiver, held, settings, app_mail_id("alertsummary", digest))
            record = {"mail": mail.dump(), "rows": [h.notice for h in held]}
            record = await store.notices.put(record_name, record)
    if record is not None:
        await submit_mail(store, MailRequest.model_validate(record["mail"]))
        for notice in record["rows"]:
            await store.caps.release(key, notice)
    while cap is not None and cap.summary_due == due:  # the window count may change meanwhile
        try:
            cap.summary_due = None
            await store.caps.replace(cap)
            break
        except StatusChanged:
            cap = await store.caps.get(key)
    else:
        return "stale", None, 0  # another instance finished this summary first
    if record is not None:
        await store.notices.delete(record_name)
    now = datetime.now(UTC)
    if await store.caps.held(key):
        # notices held back while this summary ran saw it pending and left the next one to it
        await schedule_summary(store, receiver, now, now)
    if record is None:
        return "quiet", None, 0
    return "notified", str(record["mail"]["id"]), len(record["rows"])


def held_back(key: str, notice: dict[str, Any], at: datetime) -> HeldBack:
    """What the summary says of a group's notice."""
    statuses = list(notice["alerts"].values())
    status = "firing" if "firing" in statuses else "resolved"
    return HeldBack(key, str(notice["mail"]["subject"]), status, len(statuses), at)
