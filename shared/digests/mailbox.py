"""The mailbox digest: one mail about a shared mailbox's chosen folders, of one of two kinds:
- `report: new` (`changes.py`): what arrived since the last digest, read with delta queries; nothing tagged;
- `report: waiting`: what is unread now, however old: counts from the folders' `unreadItemCount` and the newest
  `max_items` per folder (`$top`); nothing tagged, so what is still unread tomorrow is reported tomorrow;
- a `waiting` digest with a `tag` (and a digest without `report`, as before) lists every unread message,
  leaves out those already tagged and tags the ones it reports, so each is reported once.

Reported messages can be tagged (`tag`) or marked read (`mark_read`) after the mail, by PATCH through `$batch`
(20 per request), throttled sub-requests tried again later. A run:
0. claims the digest (`shared.store.digest_status`): while another run (the timer's or a manual one, on any
   instance) holds it, this one does nothing and says so (`running`), so no two runs report the same message;
1. records itself (the mail, the messages to change, a `new` digest's next cursor) as a blob, before anything
   is sent;
2. submits the mail to the outbox under an id made of the digest and the run;
3. saves the cursor, changes the messages, notes the run in the digest's status row and drops the record.
A run that finds a record left by one that died finishes it first (the mail is not sent twice: same id; the
cursor saved, the messages changed), then reads what is new. A dry run reads and renders, and records, sends
and saves nothing, delta links included.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ..audit import audit
from ..config import Settings
from ..errors import GraphError
from ..mail import MailRequest, app_mail_id, compose_mail
from ..outbox import submit_mail
from ..routing_file import MailboxDigest
from ..store import Store
from ..store.digest_status import RunClaim
from .changes import read_changes
from .folders import DigestFailed, choose
from .render import DigestItem, FolderCount, render_mailbox_digest

if TYPE_CHECKING:
    from ..graph import GraphClient

log = logging.getLogger("notifier.digests")

PAGE_SIZE = 1000  # Graph's largest $top: the fewest requests per folder
BATCH_SIZE = 20  # Graph's JSON batch limit
SELECT = ["id", "subject", "from", "receivedDateTime", "bodyPreview", "webLink", "categories", "isRead"]
EPOCH = datetime(1900, 1, 1, tzinfo=UTC)  # `since` of a digest that reads everything
__all__ = ["DigestFailed", "DigestOutcome", "DigestRun", "check_digest", "run_mailbox_digest"]
TAG_ROUNDS = 6  # passes over throttled sub-requests before the rest is left for the next run
MAX_TAG_WAIT = 30.0  # seconds a pass may wait for Graph's Retry-After


class DigestOutcome(StrEnum):
    SENT = "sent"
    NOTHING_NEW = "nothing_new"
    FAILED = "failed"  # with Graph's code or ours
    DRY_RUN = "dry_run"
    RUNNING = "running"  # another run holds the digest: this one did nothing


@dataclass
class DigestRun:
    """What one run did."""

    name: str
    outcome: DigestOutcome
    messages: int = 0
    folders: list[FolderCount] = field(default_factory=list)
    mail_id: str | None = None
    tagged: int = 0
    untagged: int = 0
    tag_requests: int = 0
    resumed: bool = False
    report: str = "waiting"
    notes: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    preview: dict[str, Any] | None = None

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "report": self.report,
            "outcome": str(self.outcome),
            "messages": self.messages,
            "folders": [{"path": f.path, "count": f.count} for f in self.folders],
        }
        if self.notes:
            body["notes"] = self.notes
        if self.mail_id:
            body["mailId"] = self.mail_id
        if self.outcome != DigestOutcome.DRY_RUN:
            body.update(
                tagged=self.tagged,
                untagged=self.untagged,
                tagRequests=self.tag_requests,
                resumedEarlierRun=self.resumed,
            )
        if self.error:
            body["error"] = self.error
        if self.preview:
            body["mail"] = self.preview
        return body


@dataclass(frozen=True)
class Report:
    """What a digest found: counts per folder, the messages to list (newest first, each with its folder's
    path), how many in all, notes for the mail, and (`report: new`) the cursor to save after the mail."""

    folders: list[FolderCount]
    found: list[dict[str, Any]]
    total: int
    notes: list[str] = field(default_factory=list)
    cursor: dict[str, Any] | None = None


@dataclass(frozen=True)
class Tagging:
    """What changing the reported messages did: changed, left for the next run, `$batch` requests spent."""

    tagged: int = 0
    left: int = 0
    requests: int = 0


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record_name(digest: MailboxDigest) -> str:
    return f"mailbox/{digest.name}.json"


async def run_mailbox_digest(
    digest: MailboxDigest,
    settings: Settings,
    graph: GraphClient,
    store: Store,
    now: datetime,
    *,
    dry_run: bool = False,
) -> DigestRun:
    """Run one digest (see the module's docstring); Graph errors fail this digest only, recorded in its
    status row and the audit table. A run that finds the digest claimed by another run does nothing: its
    outcome is `running`."""
    run_id = f"{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"  # a rerun resumes the record instead
    if dry_run:
        return await _run(digest, settings, graph, store, now, run_id, None)
    claim = await store.digest_statuses.claim_run(digest.name, run_id)
    if claim is None:
        log.info("digest %s: another run of it is in progress; this one leaves it to that run", digest.name)
        return DigestRun(digest.name, DigestOutcome.RUNNING, report=digest.kind)
    try:
        return await _run(digest, settings, graph, store, now, run_id, claim)
    finally:
        await store.digest_statuses.release_run(claim)


async def _run(
    digest: MailboxDigest,
    settings: Settings,
    graph: GraphClient,
    store: Store,
    now: datetime,
    run_id: str,
    claim: RunClaim | None,
) -> DigestRun:
    """A run that holds the digest's claim (or a dry run, which needs none)."""
    dry_run = claim is None
    resumed = False
    try:
        if claim is not None:
            pending = await store.digest_runs.get(_record_name(digest))
            if pending is not None:
                await _finish(digest, pending, graph, store)
                resumed = True
        report = await _report(digest, graph, store, now)
    except (GraphError, DigestFailed) as error:
        return await _failed(digest, settings, store, error, now, dry_run)

    run = DigestRun(
        digest.name, DigestOutcome.NOTHING_NEW, report.total, report.folders, resumed=resumed, report=digest.kind
    )
    run.notes = report.notes
    mail = None
    if report.found:
        mail = _digest_mail(digest, settings, report, app_mail_id("digest", digest.name, run_id), now)
        if report.cursor is not None:
            report.cursor["notes"] = []  # told in this mail
    if claim is None:
        if mail is not None:
            run.outcome = DigestOutcome.DRY_RUN
            run.preview = {"from": mail.sender, "to": digest.to, "subject": mail.subject, "html": mail.html}
        return run
    if mail is None and report.cursor is None:
        await _note(store, digest, run, now)
        return run
    if not await store.digest_statuses.extend_run(claim):  # held too long: another run reads and reports now
        log.warning("digest %s: its run outlived its claim; it reports nothing", digest.name)
        return DigestRun(digest.name, DigestOutcome.RUNNING, report=digest.kind)
    record: dict[str, Any] = {
        "run": run_id,
        "started": _stamp(now),
        "mail": mail.dump() if mail is not None else None,
        "messages": {m["id"]: m.get("categories") or [] for m in report.found} if digest.patches else {},
        "cursor": report.cursor,
    }
    stored = await store.digest_runs.put(_record_name(digest), record)
    if stored is not record or not await _cursor_unmoved(digest, store, report):
        # another run of this digest got there first: finish its record (if still there), report nothing twice
        if stored is not record:
            await _finish(digest, stored, graph, store)
        else:
            await store.digest_runs.delete(_record_name(digest))
        run.resumed, run.messages, run.folders, run.notes = True, 0, [], []
        return run
    try:
        tagging = await _finish(digest, record, graph, store)
    except GraphError as error:  # the record stays: the next run finishes the tagging
        return await _failed(digest, settings, store, error, now, dry_run=False)
    run.tagged, run.untagged, run.tag_requests = tagging.tagged, tagging.left, tagging.requests
    if mail is not None:
        run.outcome, run.mail_id = DigestOutcome.SENT, str(record["mail"]["id"])
    await _note(store, digest, run, now)
    if mail is not None:
        await audit(
            store,
            settings,
            operation="mailboxDigest",
            mailbox=digest.mailbox,
            outcome="sent",
            caller=f"digest:{digest.name}",
            correlation_id=run.mail_id or "",
            recipients=digest.to,
            detail=f"{digest.kind}: {run.messages} messages in {len(report.folders)} folders; "
            f"{run.tagged} tagged, {run.untagged} left",
        )
    return run


async def _cursor_unmoved(digest: MailboxDigest, store: Store, report: Report) -> bool:
    """Whether the cursor this run read from is still the saved one: a run that recorded itself after another
    run of the digest saved a newer cursor must not report the same mail again."""
    if report.cursor is None:
        return True
    saved = await store.digest_cursors.get(digest.name)
    return int(saved.get("version") or 0) == int(report.cursor["version"]) - 1


async def _report(digest: MailboxDigest, graph: GraphClient, store: Store, now: datetime) -> Report:
    """What the digest's kind finds now."""
    if digest.kind == "new":
        changes = await read_changes(digest, graph, await store.digest_cursors.get(digest.name), now)
        return Report(changes.folders, changes.found, len(changes.found), changes.notes, changes.cursor)
    if digest.tagging is not None:
        status = await store.digest_statuses.get(digest.name)
        since = status.last_run if digest.since_last_run and status.last_run is not None else EPOCH
        folders, found = await _collect(digest, graph, _stamp(since))
        return Report(folders, found, len(found))
    return await _waiting(digest, graph)


async def _waiting(digest: MailboxDigest, graph: GraphClient) -> Report:
    """`report: waiting`: the chosen folders' unread counts from the folder listing, and the newest
    `max_items` unread messages of each folder that has any, one page each."""
    chosen, _ = choose(digest, await graph.list_folders(digest.mailbox))
    counts = [FolderCount(folder["path"], int(folder.get("unreadItemCount") or 0)) for folder in chosen]
    found: list[dict[str, Any]] = []
    for folder, count in zip(chosen, counts, strict=True):
        if not count.count:
            continue
        async for message in graph.list_messages(
            digest.mailbox,
            folder_id=folder["id"],
            select=SELECT,
            filter=f"receivedDateTime ge {_stamp(EPOCH)} and isRead eq false",
            orderby="receivedDateTime desc",
            top=min(digest.max_items, PAGE_SIZE),
            limit=digest.max_items,
            immutable=digest.patches,
        ):
            message["folder"] = folder["path"]
            found.append(message)
    found.sort(key=lambda m: str(m.get("receivedDateTime", "")), reverse=True)
    return Report(counts, found[: digest.max_items], sum(count.count for count in counts))


async def _finish(digest: MailboxDigest, record: dict[str, Any], graph: GraphClient, store: Store) -> Tagging:
    """Finish a recorded run: send its mail (once: the outbox knows its id), save its cursor, change its
    messages. Messages left by throttling stay in the record for the next run."""
    if record.get("mail"):
        await submit_mail(store, MailRequest.model_validate(record["mail"]))
    if record.get("cursor"):
        await store.digest_cursors.put(digest.name, record["cursor"])
    messages: dict[str, list[str]] = record.get("messages") or {}
    tagged, left, requests = await _tag(digest, messages, graph) if messages else (0, [], 0)
    if left:
        log.warning("digest %s: %d messages could not be tagged; the next run retries them", digest.name, len(left))
        record.update(mail=None, cursor=None, messages={message_id: messages[message_id] for message_id in left})
        await store.digest_runs.put(_record_name(digest), record, replace=True)
    else:
        await store.digest_runs.delete(_record_name(digest))
    return Tagging(tagged, len(left), requests)


async def _collect(
    digest: MailboxDigest, graph: GraphClient, since: str
) -> tuple[list[FolderCount], list[dict[str, Any]]]:
    """The tagging digest's listing: the chosen folders with their counts, and every unread message not yet
    tagged (newest first, immutable ids, so one moved before the tagging is still found), each with the
    folder path it is in. A folder's count is its unread mail (`unreadItemCount`), tagged or not, as for every
    `waiting` digest; only a digest of read mail too (`unread_only: false`) counts what it lists."""
    folders = await graph.list_folders(digest.mailbox)
    chosen, _ = choose(digest, folders)
    unread_filter = " and isRead eq false" if digest.unread_only else ""
    query = f"receivedDateTime ge {since}{unread_filter}"
    counts: list[FolderCount] = []
    found: list[dict[str, Any]] = []
    for folder in chosen:
        messages = [
            m
            async for m in graph.list_messages(
                digest.mailbox,
                folder_id=folder["id"],
                select=SELECT,
                filter=query,
                orderby="receivedDateTime desc",
                top=PAGE_SIZE,
                immutable=True,
            )
            if digest.tagging not in (m.get("categories") or [])
        ]
        for message in messages:
            message["folder"] = folder["path"]
        unread = int(folder.get("unreadItemCount") or 0) if digest.unread_only else len(messages)
        counts.append(FolderCount(folder["path"], unread))
        found += messages
    found.sort(key=lambda m: str(m.get("receivedDateTime", "")), reverse=True)
    return counts, found


async def check_digest(digest: MailboxDigest, graph: GraphClient) -> None:
    """The health check of a digest: its mailbox can be read and its folders exist. The reason given is
    short and names no mailbox or folder (health answers anonymous callers)."""
    try:
        choose(digest, await graph.list_folders(digest.mailbox))
    except GraphError as error:
        raise DigestFailed(f"Graph {error.status} {error.code}") from None
    except DigestFailed:
        raise DigestFailed("a configured folder does not exist") from None


async def _tag(digest: MailboxDigest, messages: dict[str, list[str]], graph: GraphClient) -> tuple[int, list[str], int]:
    """Add the digest's category (and isRead) to every message, 20 per `$batch`; throttled sub-requests are
    tried again after Graph's Retry-After. (tagged count, ids left untagged by throttling, requests spent)."""
    pending = list(messages)
    tagged = requests = 0
    for _ in range(TAG_ROUNDS):
        retry: list[str] = []
        wait = 0.0
        for start in range(0, len(pending), BATCH_SIZE):
            chunk = pending[start : start + BATCH_SIZE]
            updates = {message_id: _tagging(digest, messages[message_id]) for message_id in chunk}
            requests += 1
            try:
                outcome = await graph.batch_update(digest.mailbox, updates)
            except GraphError as error:
                if not error.transient:
                    raise
                retry += chunk
                wait = max(wait, error.retry_after or 1.0)
                continue
            for message_id in chunk:
                failure = outcome.get(message_id, GraphError(0, "no_answer", "missing from the batch answer"))
                if failure is None:
                    tagged += 1
                elif failure.transient:
                    retry.append(message_id)
                    wait = max(wait, failure.retry_after or 1.0)
                # a permanent failure (the message was deleted meanwhile) leaves nothing to tag
        pending = retry
        if not pending:
            break
        await asyncio.sleep(min(wait, MAX_TAG_WAIT))
    return tagged, pending, requests


def _tagging(digest: MailboxDigest, categories: list[str]) -> dict[str, Any]:
    """The PATCH body: categories replace the message's list, so the existing ones are kept."""
    changes: dict[str, Any] = {}
    if digest.tagging is not None:
        changes["categories"] = [*categories, digest.tagging]
    if digest.mark_read:
        changes["isRead"] = True
    return changes


def _digest_mail(digest: MailboxDigest, settings: Settings, report: Report, mail_id: str, now: datetime) -> MailRequest:
    items = [DigestItem.from_graph(m, now) for m in report.found[: digest.max_items]]
    rendered = render_mailbox_digest(digest, report.folders, items, report.total, now, report.notes)
    return compose_mail(
        mail_id,
        digest.sender,
        digest.to,
        rendered.subject,
        rendered.html,
        settings,
        priority="bulk",
        sender_pool=digest.sender_pool,
    )


async def _note(store: Store, digest: MailboxDigest, run: DigestRun, now: datetime) -> None:
    """The digest's status row: when it last ran (the next run's `since`), what came of it."""
    ran = now if run.outcome in {DigestOutcome.SENT, DigestOutcome.NOTHING_NEW} else None
    await store.digest_statuses.note_run(digest.name, run.outcome, run.messages, run.mail_id or "", ran)


async def _failed(
    digest: MailboxDigest, settings: Settings, store: Store, error: Exception, now: datetime, dry_run: bool
) -> DigestRun:
    code = error.code if isinstance(error, GraphError) else "digest_failed"
    message = error.message if isinstance(error, GraphError) else str(error)
    run = DigestRun(digest.name, DigestOutcome.FAILED, error={"code": code, "message": message[:300]})
    log.warning("digest %s failed: %s %s", digest.name, code, message[:300])
    if dry_run:
        return run
    await store.digest_statuses.note_failure(digest.name, f"{code}: {message}")
    await audit(
        store,
        settings,
        operation="mailboxDigest",
        mailbox=digest.mailbox,
        outcome="failed",
        caller=f"digest:{digest.name}",
        correlation_id=f"digest-{digest.name}-{now.strftime('%Y%m%dT%H%M%S')}",
        detail=f"{code}: {message}"[:500],
    )
    return run
