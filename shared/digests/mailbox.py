"""The mailbox digest: what waits (unread, or received since the last run) in a shared mailbox's folders, in
one mail; the messages it reports are tagged with a category (and optionally marked read) so no later digest
reports them again.

A run: list the folders (paged, children too), list each chosen folder's messages with `$select` of what the
mail shows and a `$filter` that obeys Graph's InefficientFilter rule (`receivedDateTime` first, as the
`$orderby` has it), drop those already tagged, render, then:
1. record the run (the mail and the message set) as a blob, before anything is sent;
2. submit the mail to the outbox under an id made of the digest and the run;
3. tag the messages by PATCH through `$batch` (20 per request), throttled sub-requests tried again later;
4. note the run in the digest's status row and drop the record.
A run that finds a record left by one that died finishes it first (the mail is not sent twice: same id; the
messages are tagged), then looks for new messages. Messages that arrive during a run are not in its set and
come in the next one.
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
from .render import DigestItem, FolderCount, render_mailbox_digest

if TYPE_CHECKING:
    from ..graph import GraphClient

log = logging.getLogger("notifier.digests")

PAGE_SIZE = 1000  # Graph's largest $top: the fewest requests per folder
BATCH_SIZE = 20  # Graph's JSON batch limit
SELECT = ["id", "subject", "from", "receivedDateTime", "bodyPreview", "webLink", "categories", "isRead"]
EPOCH = datetime(1900, 1, 1, tzinfo=UTC)  # `since` of a digest that reads everything
TAG_ROUNDS = 6  # passes over throttled sub-requests before the rest is left for the next run
MAX_TAG_WAIT = 30.0  # seconds a pass may wait for Graph's Retry-After


class DigestFailed(Exception):
    """A digest cannot run (a folder it names is missing); the message says which and why."""


class DigestOutcome(StrEnum):
    SENT = "sent"
    NOTHING_NEW = "nothing_new"
    FAILED = "failed"  # with Graph's code or ours
    DRY_RUN = "dry_run"


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
    resumed: bool = False
    error: dict[str, str] | None = None
    preview: dict[str, Any] | None = None

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "outcome": str(self.outcome),
            "messages": self.messages,
            "folders": [{"path": f.path, "count": f.count} for f in self.folders],
        }
        if self.mail_id:
            body["mailId"] = self.mail_id
        if self.outcome != DigestOutcome.DRY_RUN:
            body.update(tagged=self.tagged, untagged=self.untagged, resumedEarlierRun=self.resumed)
        if self.error:
            body["error"] = self.error
        if self.preview:
            body["mail"] = self.preview
        return body


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
    status row and the audit table."""
    resumed = False
    try:
        if not dry_run:
            pending = await store.digest_runs.get(_record_name(digest))
            if pending is not None:
                await _finish(digest, pending, graph, store)
                resumed = True
        status = await store.digest_statuses.get(digest.name)
        since = status.last_run if digest.since_last_run and status.last_run is not None else EPOCH
        folders, found = await _collect(digest, graph, _stamp(since))
    except (GraphError, DigestFailed) as error:
        return await _failed(digest, settings, store, error, now, dry_run)

    run = DigestRun(digest.name, DigestOutcome.NOTHING_NEW, len(found), folders, resumed=resumed)
    if not found:
        if not dry_run:
            await _note(store, digest, run, now)
        return run
    run_id = f"{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"  # a rerun resumes the record instead
    mail = _digest_mail(digest, settings, folders, found, app_mail_id("digest", digest.name, run_id), now)
    if dry_run:
        run.outcome = DigestOutcome.DRY_RUN
        run.preview = {
            "from": mail.sender,
            "to": digest.to,
            "subject": mail.subject,
            "html": mail.html,
        }
        return run
    record: dict[str, Any] = {
        "run": run_id,
        "started": _stamp(now),
        "mail": mail.dump(),
        "messages": {m["id"]: m.get("categories") or [] for m in found},
    }
    record = await store.digest_runs.put(_record_name(digest), record)
    try:
        run.tagged, run.untagged = await _finish(digest, record, graph, store)
    except GraphError as error:  # the record stays: the next run finishes the tagging
        return await _failed(digest, settings, store, error, now, dry_run=False)
    run.outcome, run.mail_id = DigestOutcome.SENT, record["mail"]["id"]
    await _note(store, digest, run, now)
    await audit(
        store,
        settings,
        operation="mailboxDigest",
        mailbox=digest.mailbox,
        outcome="sent",
        caller=f"digest:{digest.name}",
        correlation_id=run.mail_id or "",
        recipients=digest.to,
        detail=f"{run.messages} messages in {len(folders)} folders; {run.tagged} tagged, {run.untagged} left",
    )
    return run


async def _finish(digest: MailboxDigest, record: dict[str, Any], graph: GraphClient, store: Store) -> tuple[int, int]:
    """Send a recorded run's mail (once: the outbox knows its id) and tag its messages; (tagged, left)."""
    await submit_mail(store, MailRequest.model_validate(record["mail"]))
    tagged, left = await _tag(digest, record["messages"], graph)
    if left:
        log.warning("digest %s: %d messages could not be tagged; the next run retries them", digest.name, len(left))
        record["messages"] = {message_id: record["messages"][message_id] for message_id in left}
        await store.digest_runs.put(_record_name(digest), record, replace=True)
    else:
        await store.digest_runs.delete(_record_name(digest))
    return tagged, len(left)


async def _collect(
    digest: MailboxDigest, graph: GraphClient, since: str
) -> tuple[list[FolderCount], list[dict[str, Any]]]:
    """The chosen folders with their counts, and every message to report (newest first), each with the
    folder path it is in."""
    folders = await graph.list_folders(digest.mailbox)
    chosen = _choose(digest, folders)
    unread = " and isRead eq false" if digest.unread_only else ""
    query = f"receivedDateTime ge {since}{unread}"
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
            )
            if digest.category not in (m.get("categories") or [])
        ]
        for message in messages:
            message["folder"] = folder["path"]
        counts.append(FolderCount(folder["path"], len(messages)))
        found += messages
    found.sort(key=lambda m: str(m.get("receivedDateTime", "")), reverse=True)
    return counts, found


async def check_digest(digest: MailboxDigest, graph: GraphClient) -> None:
    """The health check of a digest: its mailbox can be read and its folders exist. The reason given is
    short and names no mailbox or folder (health answers anonymous callers)."""
    try:
        _choose(digest, await graph.list_folders(digest.mailbox))
    except GraphError as error:
        raise DigestFailed(f"Graph {error.status} {error.code}") from None
    except DigestFailed:
        raise DigestFailed("a configured folder does not exist") from None


def _choose(digest: MailboxDigest, folders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The folders a digest names (case-insensitive paths), with their children when it asks; `*` is all."""
    if "*" in digest.folders:
        return [f for f in folders if not f.get("isHidden")]
    by_path = {f["path"].lower(): f for f in folders}
    chosen: dict[str, dict[str, Any]] = {}
    for wanted in digest.folders:
        folder = by_path.get(wanted.lower())
        if folder is None:
            raise DigestFailed(f"digest {digest.name}: no folder {wanted!r} in {digest.mailbox}")
        chosen[folder["id"]] = folder
        if digest.include_child_folders:
            prefix = folder["path"].lower() + "/"
            for other in folders:
                if other["path"].lower().startswith(prefix):
                    chosen[other["id"]] = other
    return list(chosen.values())


async def _tag(digest: MailboxDigest, messages: dict[str, list[str]], graph: GraphClient) -> tuple[int, list[str]]:
    """Add the digest's category (and isRead) to every message, 20 per `$batch`; throttled sub-requests are
    tried again after Graph's Retry-After. (tagged count, ids left untagged by throttling)."""
    pending = list(messages)
    tagged = 0
    for _ in range(TAG_ROUNDS):
        retry: list[str] = []
        wait = 0.0
        for start in range(0, len(pending), BATCH_SIZE):
            chunk = pending[start : start + BATCH_SIZE]
            updates = {message_id: _tagging(digest, messages[message_id]) for message_id in chunk}
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
                # a permanent failure (the message was deleted or moved away) leaves nothing to tag
        pending = retry
        if not pending:
            break
        await asyncio.sleep(min(wait, MAX_TAG_WAIT))
    return tagged, pending


def _tagging(digest: MailboxDigest, categories: list[str]) -> dict[str, Any]:
    """The PATCH body: categories replace the message's list, so the existing ones are kept."""
    changes: dict[str, Any] = {"categories": [*categories, digest.category]}
    if digest.mark_read:
        changes["isRead"] = True
    return changes


def _digest_mail(
    digest: MailboxDigest,
    settings: Settings,
    folders: list[FolderCount],
    found: list[dict[str, Any]],
    mail_id: str,
    now: datetime,
) -> MailRequest:
    items = [DigestItem.from_graph(m, now) for m in found[: digest.max_items]]
    rendered = render_mailbox_digest(digest, folders, items, len(found), now)
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
