"""Which of a mailbox's folders a digest reads: the paths it names (display names, case-insensitive), with
their children when it asks, or every visible folder for `*`."""

from __future__ import annotations

from typing import Any

from ..routing_file import MailboxDigest


class DigestFailed(Exception):
    """A digest cannot run (a folder it names is missing); the message says which and why."""


def choose(
    digest: MailboxDigest, folders: list[dict[str, Any]], *, strict: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """The chosen folders (each a folder with its `path`), and the named paths that are not there: with
    `strict` a missing one fails the digest instead."""
    if "*" in digest.folders:
        return [f for f in folders if not f.get("isHidden")], []
    by_path = {f["path"].lower(): f for f in folders}
    chosen: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for wanted in digest.folders:
        folder = by_path.get(wanted.lower())
        if folder is None:
            if strict:
                raise DigestFailed(f"digest {digest.name}: no folder {wanted!r} in {digest.mailbox}")
            missing.append(wanted)
            continue
        chosen[folder["id"]] = folder
        if digest.include_child_folders:
            prefix = folder["path"].lower() + "/"
            for other in folders:
                if other["path"].lower().startswith(prefix):
                    chosen[other["id"]] = other
    return list(chosen.values()), missing
