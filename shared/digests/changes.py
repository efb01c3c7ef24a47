"""`report: new`: what arrived in a mailbox's chosen folders since the last digest, read with delta queries.

Per run: one delta round over the mailbox's folder tree (the tree is kept in the cursor, so a folder created,
renamed, moved or deleted since the last run is seen), then one delta round per chosen folder from the
folder's own delta link, messages with immutable ids. A folder met for the first time starts its delta with
`receivedDateTime ge` the horizon (first run: `horizon` before now; later: the last run's time less a margin);
a folder no longer among the chosen ones is dropped with a note in the mail.

A delta round returns new messages and changed ones alike (read, tagged, moved between folders): a message is
new when it was received since the last run (less the margin) and was not seen by an earlier run, whose ids of
the margin's span are kept in the cursor. So a message is reported once, whatever happens to it afterwards.
Nothing is PATCHed. The new cursor is returned, not saved: the run saves it with its record, after the mail.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import GraphError
from ..routing_file import MailboxDigest, parse_duration
from .folders import DigestFailed, choose
from .render import FolderCount

if TYPE_CHECKING:
    from ..graph import GraphClient

MARGIN = timedelta(minutes=10)  # a message indexed a little after its receivedDateTime is still caught
SELECT = ["id", "subject", "from", "receivedDateTime", "bodyPreview", "webLink", "categories", "isRead"]
_EXPIRED = {404, 410}  # a delta link Graph no longer knows (SyncStateNotFound) or a folder gone meanwhile


@dataclass(frozen=True)
class Changes:
    """What one run found: counts per chosen folder, the new messages (each with its folder's `path`),
    notes for the mail, and the cursor to save once the run is done (it keeps the notes about folders until a
    mail has told them)."""

    folders: list[FolderCount]
    found: list[dict[str, Any]]
    notes: list[str]
    cursor: dict[str, Any]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _received(message: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(message.get("receivedDateTime")).replace("Z", "+00:00"))
    except ValueError:
        return None


def folder_paths(tree: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The folders of a tree (`{id: [name, parent id, hidden]}`), each with its `path` from the top
    (`Inbox/Escalations`); a folder whose parents are not all known is left out."""
    paths: dict[str, str | None] = {}

    def path(folder_id: str, depth: int = 0) -> str | None:
        if folder_id not in paths:
            name, parent, _ = tree[folder_id]
            if parent not in tree:  # the parent is the mailbox's root
                paths[folder_id] = name
            elif depth > 64:  # a cycle cannot come from Graph; stop rather than recurse forever
                paths[folder_id] = None
            else:
                above = path(parent, depth + 1)
                paths[folder_id] = f"{above}/{name}" if above is not None else None
        return paths[folder_id]

    folders = []
    for folder_id, (_, _, hidden) in tree.items():
        found = path(folder_id)
        if found is not None:
            folders.append({"id": folder_id, "path": found, "isHidden": bool(hidden)})
    return folders


async def _tree(graph: GraphClient, mailbox: str, cursor: dict[str, Any]) -> tuple[dict[str, list[Any]], str]:
    """The folder tree after this run's folder delta round, and the next round's link."""
    tree: dict[str, list[Any]] = {key: list(value) for key, value in (cursor.get("tree") or {}).items()}
    try:
        items, link = await graph.folder_changes(mailbox, cursor.get("treeLink"))
    except GraphError as error:
        if error.status not in _EXPIRED or not cursor.get("treeLink"):
            raise
        tree = {}
        items, link = await graph.folder_changes(mailbox, None)
    for item in items:
        if "@removed" in item:
            tree.pop(item["id"], None)
        else:
            tree[item["id"]] = [item.get("displayName", ""), item.get("parentFolderId"), bool(item.get("isHidden"))]
    return tree, link


async def read_changes(digest: MailboxDigest, graph: GraphClient, cursor: dict[str, Any], now: datetime) -> Changes:
    """The new messages of a `report: new` digest since its cursor (see the module's docstring)."""
    tree, tree_link = await _tree(graph, digest.mailbox, cursor)
    chosen, missing = choose(digest, folder_paths(tree), strict=False)
    known: dict[str, dict[str, str]] = cursor.get("folders") or {}
    told: list[str] = list(cursor.get("notes") or [])  # changes to the folders not yet told in a mail
    now_chosen = {folder["id"]: folder["path"] for folder in chosen}
    for folder_id, folder in known.items():
        if folder_id not in now_chosen:
            told.append(f"{folder['path']} was deleted, moved or renamed away since the last digest; no longer read.")
        elif now_chosen[folder_id] != folder["path"]:
            told.append(f"{folder['path']} is now {now_chosen[folder_id]}.")
    notes = told + [f"No folder {path} in {digest.mailbox}: nothing read there." for path in missing]
    if not chosen:
        raise DigestFailed(f"digest {digest.name}: none of its folders {digest.folders} is in {digest.mailbox}")

    last = cursor.get("cut")
    start = (
        now - timedelta(seconds=parse_duration(digest.horizon))
        if last is None
        else datetime.fromisoformat(str(last).replace("Z", "+00:00")) - MARGIN
    )
    seen: dict[str, str] = dict(cursor.get("seen") or {})

    async def folder_round(folder: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        link = (known.get(folder["id"]) or {}).get("link")
        try:
            return await graph.message_changes(
                digest.mailbox, folder["id"], link, select=SELECT, received_since=None if link else start
            )
        except GraphError as error:
            if error.status not in _EXPIRED or not link:
                raise
            return await graph.message_changes(digest.mailbox, folder["id"], None, select=SELECT, received_since=start)

    rounds = await asyncio.gather(*(folder_round(folder) for folder in chosen))
    counts: list[FolderCount] = []
    found: list[dict[str, Any]] = []
    links: dict[str, dict[str, str]] = {}
    keep_after = now - MARGIN
    fresh_seen: dict[str, str] = {k: v for k, v in seen.items() if _after(v, keep_after)}
    for folder, (items, link) in zip(chosen, rounds, strict=True):
        links[folder["id"]] = {"path": folder["path"], "link": link}
        new = []
        for message in items:
            received = _received(message)
            if "@removed" in message or received is None:
                continue
            if received >= keep_after:
                fresh_seen[message["id"]] = _stamp(received)
            if received < start or message["id"] in seen:
                continue
            if digest.unread_only and message.get("isRead"):
                continue
            if digest.tagging and digest.tagging in (message.get("categories") or []):
                continue
            seen[message["id"]] = _stamp(received)
            message["folder"] = folder["path"]
            new.append(message)
        counts.append(FolderCount(folder["path"], len(new)))
        found += new
    found.sort(key=lambda m: str(m.get("receivedDateTime", "")), reverse=True)
    next_cursor = {
        "version": int(cursor.get("version") or 0) + 1,
        "treeLink": tree_link,
        "tree": tree,
        "folders": links,
        "cut": _stamp(now),
        "seen": fresh_seen,
        "notes": told,
    }
    return Changes(counts, found, notes, next_cursor)


def _after(stamp: str, moment: datetime) -> bool:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= moment
    except ValueError:
        return False
