"""Delta queries for a folder's messages: `GET /users/{id}/mailFolders/{id}/messages/delta`.

A round starts without a token (or with the `$deltatoken` of the last round), pages with `$skiptoken`, and
ends with an `@odata.deltaLink`. Tokens are signed state, not server-side sessions: the change watermarks of
the round (the store numbers every insert, change, move and delete), its times on the sandbox clock (a delayed
delivery counts when it shows), the cursor within the round, and the options of the first request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import quote

from .clock import CLOCK
from .errors import GraphError
from .graph import READ_ROLES, GraphCall, GraphResult, GraphService, _folder, _route, parse_expand
from .messages import MESSAGE_PROPERTIES, project
from .odata import parse_datetime, parse_int, parse_select
from .store import User

DEFAULT_PAGE = 10
TOKEN_LIFETIME_SECONDS = 7 * 86400  # the sandbox's choice; Graph documents no fixed lifetime for mail
OPTIONS = {"$select", "$filter", "$orderby", "$top", "$expand", "$skiptoken", "$deltatoken"}
_RECEIVED = re.compile(r"^\s*receivedDateTime\s+(?P<op>ge|gt)\s+(?P<value>\S+)\s*$", re.IGNORECASE)


def _sign(key: bytes, state: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
    return payload + "." + hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:32]


def _invalid() -> GraphError:
    return GraphError(400, "ErrorInvalidSyncStateData", "The sync state data is corrupt or otherwise invalid.")


def _read(key: bytes, token: str, folder_id: str) -> dict[str, Any]:
    payload, _, signature = token.partition(".")
    expected = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(signature, expected):
        raise _invalid()
    try:
        state: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise _invalid() from None
    if state.get("f") != folder_id:
        raise _invalid()
    if CLOCK.time() - state["ut"] > TOKEN_LIFETIME_SECONDS:
        raise GraphError(410, "SyncStateNotFound", "The sync state has expired; start a new round without a token.")
    return state


def _first_round(service: GraphService, call: GraphCall, folder_id: str) -> dict[str, Any]:
    select_text, filter_text, order_text = call.option("$select"), call.option("$filter"), call.option("$orderby")
    select = parse_select(select_text, MESSAGE_PROPERTIES) if select_text is not None else None
    received = None
    if filter_text is not None:
        found = _RECEIVED.match(filter_text)
        if found is None:
            raise GraphError(
                400, "BadRequest", "Delta queries on messages filter only on receivedDateTime ge|gt a date-time."
            )
        try:
            received = [found["op"].lower(), parse_datetime(found["value"].strip("'"))]
        except ValueError:
            raise GraphError(400, "BadRequest", f"'{found['value']}' is not a valid date-time.") from None
    if order_text is not None and " ".join(order_text.split()).lower() != "receiveddatetime desc":
        raise GraphError(400, "BadRequest", "Delta queries on messages order only by receivedDateTime desc.")
    top = call.option("$top")
    expand = call.option("$expand")
    return {
        "f": folder_id,
        "s": 0,
        "u": service.store.change_mark(),
        "st": 0.0,
        "ut": CLOCK.time(),
        "a": 0,
        "sel": select,
        "r": received,
        "top": parse_int(top, "$top", 1, 1000) if top is not None else None,
        "x": expand,
    }


def _page_size(call: GraphCall, state: dict[str, Any]) -> tuple[int, bool]:
    """`Prefer: odata.maxpagesize=N` (applied, so said in Preference-Applied), else `$top`, else 10."""
    preferred = call.preferences.get("odata.maxpagesize")
    if preferred is not None:
        return parse_int(preferred, "odata.maxpagesize", 1, 1000), True
    return int(state.get("top") or DEFAULT_PAGE), False


@_route("GET", "/users/{user}/mailFolders/{folder}/messages/delta", READ_ROLES, first=True)
@_route("GET", "/users/{user}/mailFolders/{folder}/messages/delta()", READ_ROLES, first=True)
@_route("GET", "/users/{user}/mailFolders/{folder}/messages/microsoft.graph.delta()", READ_ROLES, first=True)
def message_delta(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    folder = _folder(service, user, params["folder"])
    unknown = [k for k, _ in call.query if k.lower() not in OPTIONS]
    if unknown:
        raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported on delta.")
    key = service.store.signing_key()
    skip_token, delta_token = call.option("$skiptoken"), call.option("$deltatoken")
    if skip_token is not None or delta_token is not None:
        if call.option("$filter") is not None:
            raise GraphError(400, "BadRequest", "$filter is allowed only in the first request of a delta round.")
        state = _read(key, skip_token if skip_token is not None else str(delta_token), folder.id)
        if skip_token is None:  # a new round: changes since the last one ended
            state.update(s=state["u"], st=state["ut"], u=service.store.change_mark(), ut=CLOCK.time(), a=0)
    else:
        state = _first_round(service, call, folder.id)
    size, applied = _page_size(call, state)
    window = (state["s"], state["u"], state["st"], state["ut"])
    received = (str(state["r"][0]), str(state["r"][1])) if state.get("r") else None
    changes: list[tuple[int, dict[str, Any]]] = [
        (changed, {"doc": doc})
        for changed, doc in service.store.delta_messages(
            user,
            folder.id,
            window,
            state["a"],
            size + 1,
            received,
        )
    ]
    if state["s"]:
        changes += [
            (row["changed"], {"removed": row["immutable_id"] if call.immutable else row["id"]})
            for row in service.store.delta_removals(user, folder.id, state["s"], state["u"], state["a"], size + 1)
        ]
    changes.sort(key=lambda change: change[0])
    page, more = changes[:size], len(changes) > size
    call.query = [(k, v) for k, v in call.query if k.lower() != "$expand"] + (
        [("$expand", state["x"])] if state.get("x") else []
    )
    attachments, properties = parse_expand(call)
    value = []
    for _, change in page:
        if "removed" in change:
            value.append(
                {"@odata.type": "#microsoft.graph.message", "id": change["removed"], "@removed": {"reason": "deleted"}}
            )
        else:
            item = project(
                change["doc"],
                state.get("sel"),
                expand_attachments=attachments,
                expand_properties=properties,
                immutable=call.immutable,
            )
            value.append({"@odata.type": "#microsoft.graph.message", **item})
    link = f"{call.base_url}/users/{quote(user.upn)}/mailFolders/{quote(folder.id, safe='')}/messages/delta"
    body: dict[str, Any] = {"@odata.context": f"{call.base_url}/$metadata#Collection(message)", "value": value}
    if more:
        body["@odata.nextLink"] = f"{link}?$skiptoken={_sign(key, dict(state, a=page[-1][0]))}"
    else:
        body["@odata.deltaLink"] = f"{link}?$deltatoken={_sign(key, dict(state, a=0))}"
    headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if applied else {}
    return GraphResult(200, body, headers)
