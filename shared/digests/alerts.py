"""The alert digest: the alerts kept for each `mode: digest` receiver, in one mail per receiver per run.

A run reads the receiver's rows of `alertdigest`, records the mail and the rows it covers (with their ETags)
as a blob, submits the mail to the outbox under an id made of the receiver and the run, then deletes exactly
those rows, each only if unchanged since it was read: an alert seen again meanwhile stays for the next
digest. A run that finds a record left by one that died finishes that record first, so every buffered alert
is mailed once. A run first claims the receiver's digest (`shared.store.digest_status`, as mailbox digests do):
while another run holds it (the timer's, or one asked for through the API, on any instance), a run does nothing
and says so (`running`), so no two runs mail the same alerts.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..alerts.grouping import receiver_key
from ..alerts.model import Alert
from ..alerts.render import fits, for_display, receiver_mail
from ..config import Settings
from ..mail import MailRequest, app_mail_id
from ..outbox import submit_mail
from ..routing_file import NotifyConfig, Receiver
from ..store import StatusChanged, Store
from ..store.digest_status import RunClaim
from ..templating import RenderedMail
from .render import AlertDigestLine, alert_digest_lines, render_alert_digest

log = logging.getLogger("notifier.digests")

DIGEST_CAP = 200  # kinds of alert listed in one digest; the rest are counted


class AlertDigestOutcome(StrEnum):
    SENT = "sent"
    NOTHING_NEW = "nothing_new"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    RUNNING = "running"  # another run holds the receiver's digest: this one did nothing


@dataclass(frozen=True)
class AlertDigestRun:
    receiver: str
    outcome: AlertDigestOutcome
    alerts: int = 0
    mail_id: str | None = None
    resumed: bool = False
    error: str | None = None  # the error's type when failed (the log has the rest)
    preview: dict[str, Any] | None = None  # a dry run's mail: from, to, cc, subject, html

    def answer(self) -> dict[str, Any]:
        """The API's answer (`POST /api/alert-digests/{receiver}/run`)."""
        body: dict[str, Any] = {"receiver": self.receiver, "outcome": str(self.outcome), "alerts": self.alerts}
        if self.mail_id:
            body["mailId"] = self.mail_id
        if self.outcome != AlertDigestOutcome.DRY_RUN:
            body["resumedEarlierRun"] = self.resumed
        if self.preview:
            body["mail"] = self.preview
        return body


def _record_name(receiver: Receiver) -> str:
    return f"alerts/{receiver_key(receiver.name)}.json"


async def run_alert_digests(
    config: NotifyConfig, settings: Settings, store: Store, now: datetime
) -> list[AlertDigestRun]:
    """One digest per digest-mode receiver that has alerts waiting; a receiver whose digest fails is logged
    and answered `failed`, and the others still get theirs."""
    runs = []
    for receiver in config.receivers:
        if receiver.mode != "digest":
            continue
        try:
            runs.append(await run_alert_digest(receiver, settings, store, now))
        except Exception as error:
            log.exception("the alert digest of receiver %s failed; the others go on", receiver.name)
            runs.append(AlertDigestRun(receiver.name, AlertDigestOutcome.FAILED, error=type(error).__name__))
    return runs


def _claim_name(receiver: Receiver) -> str:
    return f"alerts:{receiver_key(receiver.name)}"  # `:` is in no mailbox digest's name: never theirs


async def run_alert_digest(receiver: Receiver, settings: Settings, store: Store, now: datetime) -> AlertDigestRun:
    """Mail the receiver's waiting alerts in one digest (see the module's docstring); `running` while another
    run holds the receiver's digest."""
    claim = await store.digest_statuses.claim_run(_claim_name(receiver), uuid.uuid4().hex)
    if claim is None:
        log.info("the alert digest of %s is being run by another run; this one leaves it to that run", receiver.name)
        return AlertDigestRun(receiver.name, AlertDigestOutcome.RUNNING)
    try:
        return await _run(receiver, settings, store, now, claim)
    finally:
        await store.digest_statuses.release_run(claim)


async def _run(receiver: Receiver, settings: Settings, store: Store, now: datetime, claim: RunClaim) -> AlertDigestRun:
    """A run that holds the receiver's digest claim."""
    resumed = False
    pending = await store.digest_runs.get(_record_name(receiver))
    if pending is not None:
        await _finish(receiver, pending, store)
        resumed = True
    rows = await store.digest_buffer.waiting(receiver_key(receiver.name))
    if not rows:
        return AlertDigestRun(receiver.name, AlertDigestOutcome.NOTHING_NEW, resumed=resumed)
    entries = [(for_display(Alert.from_dict(json.loads(row.alert))), row.last_seen) for row in rows]
    rendered = _bounded_digest(receiver, alert_digest_lines(entries, receiver.zone), now)
    # unique per run; a rerun finds the record (and this id in it) rather than making the id again
    mail_id = app_mail_id("alertdigest", receiver.name, now.strftime("%Y%m%dT%H%M%S"), uuid.uuid4().hex[:6])
    mail = receiver_mail(receiver, mail_id, rendered, settings, priority="bulk")
    if not await store.digest_statuses.extend_run(claim):  # held too long: another run reads and mails now
        log.warning("the alert digest run of %s outlived its claim; it mails nothing", receiver.name)
        return AlertDigestRun(receiver.name, AlertDigestOutcome.RUNNING, resumed=resumed)
    record: dict[str, Any] = {
        "mail": mail.dump(),
        "rows": [[row.row_key, row.etag] for row in rows],
    }
    record = await store.digest_runs.put(_record_name(receiver), record)
    await _finish(receiver, record, store)
    return AlertDigestRun(receiver.name, AlertDigestOutcome.SENT, len(record["rows"]), record["mail"]["id"], resumed)


async def preview_alert_digest(receiver: Receiver, settings: Settings, store: Store, now: datetime) -> AlertDigestRun:
    """The digest a run would send now, checked as it would be sent; nothing is recorded, sent or released."""
    rows = await store.digest_buffer.waiting(receiver_key(receiver.name))
    if not rows:
        return AlertDigestRun(receiver.name, AlertDigestOutcome.NOTHING_NEW)
    entries = [(for_display(Alert.from_dict(json.loads(row.alert))), row.last_seen) for row in rows]
    rendered = _bounded_digest(receiver, alert_digest_lines(entries, receiver.zone), now)
    mail_id = app_mail_id("alertdigest", receiver.name, "dry-run")
    mail = receiver_mail(receiver, mail_id, rendered, settings, priority="bulk")
    preview = {"from": mail.sender, "to": receiver.to, "cc": receiver.cc, "subject": mail.subject, "html": mail.html}
    return AlertDigestRun(receiver.name, AlertDigestOutcome.DRY_RUN, len(rows), preview=preview)


def _bounded_digest(receiver: Receiver, lines: list[AlertDigestLine], now: datetime) -> RenderedMail:
    """The digest listing at most DIGEST_CAP kinds, and fewer when the body would pass the mail budget."""
    shown = min(len(lines), DIGEST_CAP)
    while True:
        rendered = render_alert_digest(receiver.name, lines, now, shown, receiver.zone)
        if fits(rendered) or shown <= 1:
            return rendered
        shown //= 2


async def _finish(receiver: Receiver, record: dict[str, Any], store: Store) -> None:
    """Submit a recorded digest (once: the outbox knows its id) and delete the rows it covers."""
    await submit_mail(store, MailRequest.model_validate(record["mail"]))
    partition = receiver_key(receiver.name)
    for row_key, etag in record["rows"]:
        try:
            await store.digest_buffer.release(partition, row_key, etag)
        except StatusChanged:
            log.info("alert %s was seen again during the digest; it stays for the next one", row_key)
    await store.digest_runs.delete(_record_name(receiver))
