"""The mailbox's folder tree as Graph serves it for change tracking and editing: `GET /users/{id}/mailFolders/delta`
(every folder of the mailbox, flat, with `parentFolderId`; the next round only those created, renamed or moved
since, and `@removed` for those gone), `PATCH /users/{id}/mailFolders/{id}` (rename) and `DELETE` (the folder,
with its messages and children, moves into Deleted Items, as Outlook does).

A round's state is a snapshot of the tree (each folder's name, parent and hidden flag) kept in the store under
a random key; the signed token names the snapshot, the cursor within the round and its time on the sandbox
clock (a token older than 7 days gets 410, as message delta tokens do).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from .clock import CLOCK
from .delta import _read, _sign
from .errors import GraphError
from .graph import (
    FOLDER_PROPERTIES,
    READ_ROLES,
    GraphCall,
    GraphResult,
    GraphService,
    _context,
    _folder,
    _json_object,
    _project_folder,
    _route,
)
from .odata import parse_int, parse_select
from .store import User

DEFAULT_PAGE = 10
OPTIONS = {"$select", "$skiptoken", "$deltatoken"}
_DISTINGUISHED = "ErrorDeleteDistinguishedFolder"


def _tree(user: User) -> str:
    """What a folder delta token tracks (checked like a message delta token's folder)."""
    return f"folders:{user.id}"


def _snapshot(service: GraphService, user: User) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """The tree now: per folder id its (name, parent, hidden), and its full document."""
    documents, _ = service.store.query_folders(user)
    root = service.store.folder(user, "msgfolderroot").id
    documents = [d for d in documents if d["id"] != root]
    marks = {d["id"]: [d["displayName"], d["parentFolderId"], d["isHidden"]] for d in documents}
    return marks, {d["id"]: d for d in documents}


@_route("GET", "/users/{user}/mailFolders/delta", READ_ROLES, first=True)
@_route("GET", "/users/{user}/mailFolders/delta()", READ_ROLES, first=True)
@_route("GET", "/users/{user}/mailFolders/microsoft.graph.delta()", READ_ROLES, first=True)
def folder_delta(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    unknown = [k for k, _ in call.query if k.lower() not in OPTIONS]
    if unknown:
        raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported on delta.")
    skip_token, delta_token = call.option("$skiptoken"), call.option("$deltatoken")
    marks, documents = _snapshot(service, user)
    if skip_token is not None or delta_token is not None:
        if call.option("$select") is not None:
            raise GraphError(400, "BadRequest", "$select is allowed only in the first request of a delta round.")
        token = skip_token if skip_token is not None else str(delta_token)
        state = _read(service.store.signing_key(), token, _tree(user))
        if skip_token is None:  # a new round: changes since the snapshot the last one ended with
            state.update(base=state["end"], end=None, a=0, ut=CLOCK.time())
    else:
        select_text = call.option("$select")
        select = parse_select(select_text, FOLDER_PROPERTIES) if select_text is not None else None
        state = {"f": _tree(user), "base": None, "end": None, "a": 0, "ut": CLOCK.time(), "sel": select}
    if state["end"] is None:  # the round's own snapshot, taken at its first page
        state["end"] = uuid.uuid4().hex
        service.store.set_meta(f"folderdelta:{state['end']}", json.dumps(marks))
    ended: dict[str, list[Any]] = json.loads(service.store.meta(f"folderdelta:{state['end']}") or "{}")
    before: dict[str, list[Any]] = json.loads(service.store.meta(f"folderdelta:{state['base']}") or "{}")
    changes: list[dict[str, Any]] = [
        _project_folder(documents[folder_id], state.get("sel")) if folder_id in documents else {"id": folder_id}
        for folder_id, mark in ended.items()
        if before.get(folder_id) != mark
    ]
    changes += [{"id": folder_id, "@removed": {"reason": "deleted"}} for folder_id in before if folder_id not in ended]
    preferred = call.preferences.get("odata.maxpagesize")
    size = parse_int(preferred, "odata.maxpagesize", 1, 1000) if preferred is not None else DEFAULT_PAGE
    page = changes[state["a"] : state["a"] + size]
    more = state["a"] + size < len(changes)
    key = service.store.signing_key()
    link = f"{call.base_url}/users/{quote(user.upn)}/mailFolders/delta"
    body: dict[str, Any] = {
        "@odata.context": _context(call, user, "/mailFolders", state.get("sel")),
        "value": [{"@odata.type": "#microsoft.graph.mailFolder", **item} for item in page],
    }
    if more:
        body["@odata.nextLink"] = f"{link}?$skiptoken={_sign(key, dict(state, a=state['a'] + size))}"
    else:
        body["@odata.deltaLink"] = f"{link}?$deltatoken={_sign(key, dict(state, a=0))}"
    headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if preferred is not None else {}
    return GraphResult(200, body, headers)


@_route("PATCH", "/users/{user}/mailFolders/{folder}", {"Mail.ReadWrite"})
def update_folder(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """Rename a folder (`displayName`, the one property Graph lets a client change)."""
    changes = _json_object(call.body)
    folder = _folder(service, user, params["folder"])
    name = next((v for k, v in changes.items() if k.lower() == "displayname"), None)
    if not isinstance(name, str) or not name.strip() or set(changes) - {"displayName", "@odata.type"}:
        raise GraphError(400, "ErrorInvalidRequest", "Only displayName, a non-empty string, can be changed.")
    if folder.well_known:
        raise GraphError(403, "ErrorAccessDenied", "A distinguished folder cannot be renamed.")
    service.store.update_folder(user, folder.id, display_name=name.strip())
    documents, _ = service.store.query_folders(user, folder_id=folder.id)
    return GraphResult(200, {"@odata.context": _context(call, user, "/mailFolders", None) + "/$entity", **documents[0]})


@_route("DELETE", "/users/{user}/mailFolders/{folder}", {"Mail.ReadWrite"})
def delete_folder(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """204: the folder moves into Deleted Items (its id stays); distinguished folders cannot be deleted."""
    folder = _folder(service, user, params["folder"])
    if folder.well_known:
        raise GraphError(400, _DISTINGUISHED, "Distinguished folders cannot be deleted.")
    service.store.update_folder(user, folder.id, parent_id=service.store.folder(user, "deleteditems").id)
    return GraphResult(204, None, {})
