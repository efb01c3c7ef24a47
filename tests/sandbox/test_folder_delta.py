"""The folder tree's delta, rename and delete: a first round lists every folder flat, the next ones what was
created, renamed, moved or deleted, and distinguished folders stay put."""

from __future__ import annotations

from typing import Any

from sandbox.launcher import SandboxProcess

from ..helpers import SUPPORT, bearer


def _round(sandbox: SandboxProcess, link: str | None, page: int = 2) -> tuple[list[dict[str, Any]], str, int]:
    """One folder delta round over plain HTTP: its items, its delta link, and how many pages it took."""
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": f"odata.maxpagesize={page}"}
    url = link or f"/v1.0/users/{SUPPORT}/mailFolders/delta?$select=displayName,parentFolderId"
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        answer = sandbox.control.get(url, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages += 1
        items += body["value"]
        if "@odata.nextLink" in body:
            url = body["@odata.nextLink"]
            continue
        return items, body["@odata.deltaLink"], pages


def test_the_first_round_is_the_whole_tree_flat_and_later_rounds_only_what_changed(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = bearer(sandbox)
    sandbox.deliver(SUPPORT, [{"subject": "deep", "from": "a@fabrikam.test", "folder": "Orders/Returns/Damaged"}])
    first, link, pages = _round(sandbox, None)
    names = {f["displayName"]: f for f in first}
    assert {"Inbox", "Escalations", "Orders", "Returns", "Damaged", "Deleted Items"} <= set(names)
    assert names["Damaged"]["parentFolderId"] == names["Returns"]["id"]
    assert "unreadItemCount" not in names["Inbox"]  # $select kept
    assert pages == -(-len(first) // 2)

    assert _round(sandbox, link)[0] == []  # nothing changed

    folders = f"/v1.0/users/{SUPPORT}/mailFolders"
    renamed = sandbox.control.patch(
        f"{folders}/{names['Returns']['id']}", json={"displayName": "Refunds"}, headers=headers
    )
    assert renamed.status_code == 200 and renamed.json()["displayName"] == "Refunds"
    assert sandbox.control.delete(f"{folders}/{names['Escalations']['id']}", headers=headers).status_code == 204
    sandbox.deliver(SUPPORT, [{"subject": "new", "from": "a@fabrikam.test", "folder": "Projects"}])
    changes, link, _ = _round(sandbox, link)
    by_id = {c["id"]: c for c in changes}
    assert by_id[names["Returns"]["id"]]["displayName"] == "Refunds"
    assert by_id[names["Escalations"]["id"]]["parentFolderId"] == names["Deleted Items"]["id"]  # moved, not gone
    known = {f["id"] for f in first}
    assert [c["displayName"] for c in changes if c["id"] not in known] == ["Projects"]
    assert len(changes) == 3

    assert sandbox.control.delete(f"{folders}/deleteditems", headers=headers).status_code == 400
    assert sandbox.control.patch(f"{folders}/inbox", json={"displayName": "X"}, headers=headers).status_code == 403
    assert _round(sandbox, link)[0] == []


def test_a_tampered_folder_token_or_a_message_delta_token_is_refused(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = bearer(sandbox)
    _, link, _ = _round(sandbox, None, page=100)
    assert (
        sandbox.control.get(link[:-3] + "abc", headers=headers).json()["error"]["code"] == "ErrorInvalidSyncStateData"
    )
    messages = sandbox.control.get(f"/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta", headers=headers).json()
    token = messages["@odata.deltaLink"].split("$deltatoken=")[1]
    answer = sandbox.control.get(f"/v1.0/users/{SUPPORT}/mailFolders/delta?$deltatoken={token}", headers=headers)
    assert answer.status_code == 400
