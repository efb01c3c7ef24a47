"""Graph v1.0 mail endpoints: sendMail, messages, mailFolders, PATCH, `$batch`.

Plain HTTP requests and `$batch` sub-requests go through one dispatcher (`GraphService.call`), so both
meet the same role and mailbox-scope checks, faults, throttling and request log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .clock import CLOCK
from .errors import GraphError
from .exchange import Transport
from .extended import extended_property_key
from .faults import FaultState, RequestLog
from .messages import (
    ADDRESS,
    MESSAGE_PROPERTIES,
    build_message,
    now,
    preview,
    project,
    recipient,
)
from .odata import Column, ODataError, check_efficient, compile_filter, compile_orderby, parse_int, parse_select
from .store import FOLDER_COLUMNS, Store, User
from .tokens import Caller

MAX_RECIPIENTS = 500
MAX_BATCH = 20
BATCH_PARALLELISM = 4  # Outlook runs up to 4 sub-requests of a batch at once
READ_ROLES = {"Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic"}

MESSAGE_COLUMNS = {
    "isread": Column("is_read", "bool"),
    "receiveddatetime": Column("received", "datetime"),
    "sentdatetime": Column("sent", "datetime"),
    "subject": Column("subject", "str"),
    "importance": Column("importance", "str"),
    "hasattachments": Column("has_attachments", "bool"),
    "from/emailaddress/address": Column("from_address", "str"),
    "sender/emailaddress/address": Column("from_address", "str"),
    "categories": Column("categories", "collection"),
    "flag/flagstatus": Column("flag_status", "str"),
    "parentfolderid": Column("folder_id", "str"),
    "inferenceclassification": Column("inference", "str"),
    "conversationid": Column("conversation_id", "str"),
    "singlevalueextendedproperties": Column("ext_props", "properties"),
}
FOLDER_FILTER_COLUMNS = {
    "displayname": Column(FOLDER_COLUMNS["displayname"], "str"),
    "parentfolderid": Column(FOLDER_COLUMNS["parentfolderid"], "str"),
    "ishidden": Column(FOLDER_COLUMNS["ishidden"], "bool"),
    "totalitemcount": Column(FOLDER_COLUMNS["totalitemcount"], "number"),
    "unreaditemcount": Column(FOLDER_COLUMNS["unreaditemcount"], "number"),
    "childfoldercount": Column(FOLDER_COLUMNS["childfoldercount"], "number"),
}
FOLDER_PROPERTIES = {
    "id",
    "displayName",
    "parentFolderId",
    "childFolderCount",
    "unreadItemCount",
    "totalItemCount",
    "sizeInBytes",
    "isHidden",
}
PATCHABLE = {
    "categories",
    "isRead",
    "flag",
    "importance",
    "inferenceClassification",
    "singleValueExtendedProperties",
    "multiValueExtendedProperties",
}
DRAFT_ONLY = {"subject", "body", "toRecipients", "ccRecipients", "bccRecipients", "replyTo", "from", "sender"}
FLAG_STATUSES = {"notFlagged", "flagged", "complete"}
IMPORTANCE = {"low", "normal", "high"}
LIST_OPTIONS = {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$expand"}
EXTENDED = "singleValueExtendedProperties"


@dataclass
class GraphCall:
    method: str
    path: str  # decoded, relative to the version root: "/users/x/messages"
    query: list[tuple[str, str]]
    body: bytes
    caller: Caller
    base_url: str  # "https://127.0.0.1:8790/v1.0"
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def option(self, name: str) -> str | None:
        for key, value in self.query:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def preferences(self) -> dict[str, str]:
        """The `Prefer` header's preferences, names in lower case: `{"idtype": "ImmutableId"}`."""
        found: dict[str, str] = {}
        for part in self.headers.get("prefer", "").split(","):
            name, _, value = part.strip().partition("=")
            if name.strip():
                found[name.strip().lower()] = value.strip().strip('"')
        return found

    @property
    def immutable(self) -> bool:
        """`Prefer: IdType="ImmutableId"`: ids in this request's answer are immutable ids."""
        return self.preferences.get("idtype", "").lower() == "immutableid"


@dataclass
class GraphResult:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    mailbox: str | None = None
    ambiguous: str | None = None  # carried out, answer lost: "timeout" (504) or "drop" (connection closed)


Handler = Callable[["GraphService", GraphCall, User, dict[str, str]], GraphResult]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    roles: frozenset[str]
    handler: Handler


def _route(method: str, template: str, roles: set[str], *, first: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler; `first` puts it before the routes whose `{message}` would swallow its last segment."""
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace("\\{", "{").replace("\\}", "}"))
    regex += "/?$"

    def register(handler: Handler) -> Handler:
        route = Route(method, re.compile(regex, re.IGNORECASE), frozenset(roles), handler)
        if first:
            ROUTES.insert(0, route)
        else:
            ROUTES.append(route)
        return handler

    return register


ROUTES: list[Route] = []


class GraphService:
    """Serves Graph calls against the store, under the current faults."""

    def __init__(self, store: Store, faults: FaultState, log: RequestLog, transport: Transport) -> None:
        self.store = store
        self.faults = faults
        self.log = log
        self.transport = transport

    async def call(self, call: GraphCall) -> GraphResult:
        """Route, authorise, throttle and run one Graph call."""
        result = await self._call(call)
        result.headers.setdefault("Content-Type", "application/json")
        if call.immutable and result.status < 400:
            applied = result.headers.get("Preference-Applied")
            result.headers["Preference-Applied"] = ", ".join(filter(None, [applied, 'IdType="ImmutableId"']))
        return result

    async def _call(self, call: GraphCall) -> GraphResult:
        mailbox: str | None = None
        try:
            route, params = self._match(call)
            user = self._mailbox_user(params["user"])
            mailbox = user.upn
            if not route.roles & set(call.caller.roles):
                raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            self._check_scope(call.caller, user)
            injected = self.faults.injected_error()
            if injected:
                raise injected
            self.faults.admit(call.caller.client_id, user.upn)
        except GraphError as error:
            return _error_result(error, mailbox)
        try:
            latency = self.faults.faults.latency_ms
            if latency:
                await asyncio.sleep(latency / 1000)
            result = route.handler(self, call, user, params)
        except GraphError as error:
            result = _error_result(error, mailbox)
        except ODataError as error:
            result = _error_result(GraphError(400, error.code, str(error)), mailbox)
        finally:
            self.faults.release(call.caller.client_id, user.upn)
        if result.status < 400:
            outcome = self.faults.ambiguous_outcome(call.method)
            if outcome:  # done in full; the client never learns it
                result = _error_result(GraphError(504, "GatewayTimeout", "The operation has timed out."), mailbox)
                result.ambiguous = outcome
        result.mailbox = mailbox
        return result

    def _match(self, call: GraphCall) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in ROUTES:
            found = route.pattern.match(call.path)
            if found:
                if route.method == call.method:
                    return route, {k: unquote(v) for k, v in found.groupdict().items()}
                allowed = True
        if allowed:
            raise GraphError(405, "Request_BadRequest", f"The HTTP method '{call.method}' is not allowed.")
        segment = call.path.strip("/").split("/")[-1] if call.path.strip("/") else ""
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")

    def _mailbox_user(self, key: str) -> User:
        try:
            return self.store.user(key)
        except KeyError:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.") from None

    def _check_scope(self, caller: Caller, user: User) -> None:
        """Exchange RBAC for Applications: a scoped app reaches only the mailboxes in its scope."""
        try:
            _, principal = self.store.principal(caller.client_id)
        except KeyError:
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.") from None
        scope = principal.get("mailboxScope")
        if scope is not None and user.upn.lower() not in {s.lower() for s in scope}:
            raise GraphError(
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: the mailbox is outside the application's management scope.",
            )

    async def batch(
        self, body: bytes, caller: Caller, base_url: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """Run a JSON batch; returns the answer, the sub-request log entries, and whether a sub-request's
        ambiguous fault drops the whole answer's connection."""
        requests = _batch_requests(body)
        results: dict[str, GraphResult] = {}
        entries: list[dict[str, Any]] = []
        pending = list(requests)
        while pending:
            ready = [r for r in pending if all(d in results for d in r["dependsOn"])]
            if not ready:
                raise GraphError(400, "BadRequest", "The dependsOn graph of the batch has a cycle.")
            wave = ready[:BATCH_PARALLELISM]
            outcomes = await asyncio.gather(*(self._batch_one(r, results, caller, base_url) for r in wave))
            for request, (result, entry) in zip(wave, outcomes, strict=True):
                results[request["id"]] = result
                entries.append(entry)
                pending.remove(request)
        responses = []
        for request in reversed(requests):  # Graph may answer in any order; clients must match by id
            result = results[request["id"]]
            answer: dict[str, Any] = {"id": request["id"], "status": result.status, "headers": result.headers}
            if result.body is not None:
                answer["body"] = result.body
            responses.append(answer)
        dropped = any(r.ambiguous == "drop" for r in results.values())
        return {"responses": responses}, entries, dropped

    async def _batch_one(
        self, request: dict[str, Any], results: dict[str, GraphResult], caller: Caller, base_url: str
    ) -> tuple[GraphResult, dict[str, Any]]:
        started = time.perf_counter()
        failed = [d for d in request["dependsOn"] if not 200 <= results[d].status < 300]
        path, query = request["path"], request["query"]
        if failed:
            result = GraphResult(424, _error_body("FailedDependency", "A request this one depends on failed."))
        else:
            call = GraphCall(request["method"], path, query, request["body"], caller, base_url, request["headers"])
            result = await self.call(call)
        entry = {
            "id": request["id"],
            "method": request["method"],
            "path": path,
            "status": result.status,
            "mailbox": result.mailbox,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if result.ambiguous:
            entry["ambiguous"] = True
        return result, entry


def _error_body(code: str, message: str) -> dict[str, Any]:
    stamp = now()
    request_id = str(uuid.uuid4())
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"date": stamp, "request-id": request_id, "client-request-id": request_id},
        }
    }


def _error_result(error: GraphError, mailbox: str | None) -> GraphResult:
    return GraphResult(error.status, _error_body(error.code, error.message), dict(error.headers), mailbox)


def _json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (sendMail, PATCH, a new draft)."""
    document = _json_body(body)
    if not isinstance(document, dict):
        raise _type_error("body", "an object")
    return document


def _json_body(body: bytes) -> Any:
    if not body.strip():
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise GraphError(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type "
            "header is set and payload is of valid JSON format.",
        ) from None


def _type_error(name: str, expected: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", f"Cannot read the value of '{name}': expected {expected}.")


def _batch_requests(body: bytes) -> list[dict[str, Any]]:
    """Validate a `$batch` body into normalised sub-requests."""
    document = _json_body(body)
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list) or not requests:
        raise GraphError(400, "BadRequest", "Invalid batch payload format: 'requests' must be a non-empty array.")
    if len(requests) > MAX_BATCH:
        raise GraphError(400, "BadRequest", f"Limit of {MAX_BATCH} requests per batch exceeded.")
    normalised: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, request in enumerate(requests):
        where = f"requests[{index}]"
        if not isinstance(request, dict):
            raise GraphError(400, "BadRequest", f"Invalid batch payload format: {where} is not an object.")
        request_id, method, url = request.get("id"), request.get("method"), request.get("url")
        if not isinstance(request_id, str) or not request_id or request_id in seen:
            raise GraphError(400, "BadRequest", f"{where}.id must be a unique, non-empty string.")
        if not isinstance(method, str) or method.upper() not in {"GET", "POST", "PATCH", "PUT", "DELETE"}:
            raise GraphError(400, "BadRequest", f"{where}.method is not a valid HTTP method.")
        if not isinstance(url, str) or not url:
            raise GraphError(400, "BadRequest", f"{where}.url must be a relative URL.")
        if urlsplit(url).scheme:
            raise GraphError(400, "BadRequest", f"{where}.url must be relative to the version root, not absolute.")
        depends = request.get("dependsOn") or []
        if not isinstance(depends, list) or any(d not in seen for d in depends):
            raise GraphError(400, "BadRequest", f"{where}.dependsOn must name earlier requests of the batch.")
        sub_body = request.get("body")
        encoded = (
            b""
            if sub_body is None
            else (sub_body.encode() if isinstance(sub_body, str) else json.dumps(sub_body).encode())
        )
        parts = urlsplit(url if url.startswith("/") else "/" + url)
        headers = request.get("headers") or {}
        if not isinstance(headers, dict):
            raise GraphError(400, "BadRequest", f"{where}.headers must be an object.")
        normalised.append(
            {
                "id": request_id,
                "method": method.upper(),
                "path": unquote(parts.path),
                "query": parse_qsl(parts.query, keep_blank_values=True),
                "body": encoded,
                "headers": {str(k).lower(): str(v) for k, v in headers.items()},
                "dependsOn": depends,
            }
        )
        seen.add(request_id)
    return normalised


def _page_options(call: GraphCall, default_top: int) -> tuple[int, int, bool]:
    unknown = [k for k, _ in call.query if k.startswith("$") and k.lower() not in LIST_OPTIONS]
    if unknown:
        raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported on this resource.")
    top = parse_int(call.option("$top") or str(default_top), "$top", 1, 1000)
    skip = parse_int(call.option("$skip") or "0", "$skip", 0, 2**31)
    count_text = (call.option("$count") or "false").lower()
    if count_text not in {"true", "false"}:
        raise GraphError(400, "BadRequest", f"Invalid value '{count_text}' for $count.")
    return top, skip, count_text == "true"


def _next_link(call: GraphCall, skip: int) -> str:
    query = [(k, v) for k, v in call.query if k.lower() != "$skip"] + [("$skip", str(skip))]
    return f"{call.base_url}{quote(call.path, safe='/@')}?{urlencode(query, quote_via=quote, safe='$,()/:@')}"


def _collection(
    call: GraphCall, context: str, items: list[dict[str, Any]], top: int, skip: int, more: bool, total: int | None
) -> GraphResult:
    body: dict[str, Any] = {"@odata.context": context}
    if total is not None:
        body["@odata.count"] = total
    body["value"] = items
    if more:
        body["@odata.nextLink"] = _next_link(call, skip + top)
    return GraphResult(200, body)


def _context(call: GraphCall, user: User, tail: str, select: list[str] | None) -> str:
    root = call.base_url
    selected = f"({','.join(select)})" if select else ""
    return f"{root}/$metadata#users('{quote(user.upn)}'){tail}{selected}"


# -- users ------------------------------------------------------------------------------------------------
@_route("GET", "/users/{user}", {"User.Read.All"})
def get_user(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    return GraphResult(
        200,
        {
            "@odata.context": f"{call.base_url}/$metadata#users/$entity",
            "id": user.id,
            "userPrincipalName": user.upn,
            "displayName": user.display_name,
            "mail": user.upn,
        },
    )


# -- sendMail ---------------------------------------------------------------------------------------------
@_route("POST", "/users/{user}/sendMail", {"Mail.Send"})
@_route("POST", "/users/{user}/microsoft.graph.sendMail", {"Mail.Send"})
def send_mail(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    document = _json_object(call.body)
    fields = {key.lower(): value for key, value in document.items()}
    message = fields.get("message")
    if not isinstance(message, dict):
        raise GraphError(400, "ErrorInvalidRequest", "The 'message' parameter is missing or not an object.")
    save = fields.get("savetosentitems", True)
    if not isinstance(save, bool):
        raise _type_error("saveToSentItems", "a boolean")
    message = _validated_message(message, user)
    stored = build_message(dict(message, **{"from": _mailbox_address(user)}), folder_id="", is_read=True)
    with service.store.transaction():
        service.transport.submit(user, stored, recipients_of(stored), saved=save)
        if save:
            sent_items = service.store.folder(user, "sentitems").id
            service.store.insert_message(
                user, dict(stored, parentFolderId=sent_items), visible=_sent_items_visible(service)
            )
    return GraphResult(202, None, {})


def _mailbox_address(user: User) -> dict[str, Any]:
    return {"emailAddress": {"name": user.display_name, "address": user.upn}}


def _sent_items_visible(service: GraphService) -> float:
    """When a sent message's Sent Items copy shows: after the `sentItemsDelayMs` fault (0 by default)."""
    return CLOCK.time() + service.faults.faults.sent_items_delay_ms / 1000


def recipients_of(document: dict[str, Any]) -> list[str]:
    """Every to, cc and bcc address of a message, lower case."""
    return [
        str(r["emailAddress"]["address"]).lower()
        for key in ("toRecipients", "ccRecipients", "bccRecipients")
        for r in document.get(key) or []
    ]


def _validated_message(message: dict[str, Any], user: User, *, draft: bool = False) -> dict[str, Any]:
    """Check a sendMail message (or a new draft) the way Exchange does; raises GraphError naming the problem."""
    known = {name.lower(): name for name in MESSAGE_PROPERTIES | {"@odata.type", EXTENDED}}
    fields: dict[str, Any] = {}
    for key, value in message.items():
        name = known.get(key.lower())
        if name is None:
            raise GraphError(
                400, "RequestBodyRead", f"The property '{key}' does not exist on type 'microsoft.graph.message'."
            )
        fields[name] = value
    subject = fields.get("subject") or ""
    if not isinstance(subject, str):
        raise _type_error("subject", "a string")
    body = fields.get("body") or {"contentType": "text", "content": ""}
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("content", ""), str)
        or str(body.get("contentType", "text")).lower() not in {"text", "html"}
    ):
        raise _type_error("body", "an itemBody with contentType text or html")
    importance = str(fields.get("importance") or "normal")
    if importance.lower() not in IMPORTANCE:
        raise _type_error("importance", "low, normal or high")
    recipients: dict[str, list[dict[str, Any]]] = {}
    for key in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo"):
        values = fields.get(key) or []
        if not isinstance(values, list):
            raise _type_error(key, "an array of recipients")
        recipients[key] = [_validated_recipient(value, key) for value in values]
    total = sum(len(recipients[k]) for k in ("toRecipients", "ccRecipients", "bccRecipients"))
    if total == 0 and not draft:
        raise GraphError(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        )
    if total > MAX_RECIPIENTS:
        raise GraphError(
            400, "ErrorTooManyRecipients", f"The message has {total} recipients; at most {MAX_RECIPIENTS} are allowed."
        )
    sender = fields.get("from")
    if sender is not None:
        address = _validated_recipient(sender, "from")["emailAddress"]["address"]
        if address.lower() != user.upn.lower():
            raise GraphError(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request "
                "does not have the right to send mail on behalf of the specified sending account.",
            )
    headers = fields.get("internetMessageHeaders") or []
    if not isinstance(headers, list) or len(headers) > 5:
        raise GraphError(
            400,
            "InvalidInternetMessageHeaderCollection",
            "Maximum number of headers in one message should be less than or equal to 5.",
        )
    for header in headers:
        if (
            not isinstance(header, dict)
            or not isinstance(header.get("name"), str)
            or not isinstance(header.get("value"), str)
        ):
            raise _type_error("internetMessageHeaders", "name/value pairs of strings")
        if not header["name"].lower().startswith("x-"):
            raise GraphError(
                400,
                "InvalidInternetMessageHeader",
                f"The internet message header name '{header['name']}' should start with 'x-' or 'X-'.",
            )
    attachments = fields.get("attachments") or []
    if not isinstance(attachments, list):
        raise _type_error("attachments", "an array")
    message_id = fields.get("internetMessageId")  # the client may set it on a new message (RFC 5322 msg-id)
    if message_id is not None and (not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id)):
        raise GraphError(400, "ErrorInvalidInternetMessageId", "internetMessageId must look like <left@right>.")
    return {
        **({"internetMessageId": message_id} if message_id else {}),
        "subject": subject,
        "body": body,
        "importance": importance.lower(),
        **recipients,
        "internetMessageHeaders": headers,
        "attachments": [_validated_attachment(a, i) for i, a in enumerate(attachments)],
        EXTENDED: validated_extended_properties(fields.get(EXTENDED) or []),
    }


_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>\Z")


def validated_extended_properties(value: Any) -> list[dict[str, str]]:
    """`singleValueExtendedProperties`: a list of `{id, value}` with ids in one of Exchange's forms."""
    if not isinstance(value, list):
        raise _type_error(EXTENDED, "an array")
    properties = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("value"), str):
            raise _type_error(EXTENDED, "objects with a string id and value")
        try:
            extended_property_key(item["id"])
        except ValueError:
            raise GraphError(
                400, "ErrorInvalidExtendedPropertyValue", f"The extended property id '{item['id']}' is not valid."
            ) from None
        properties.append({"id": item["id"], "value": item["value"]})
    return properties


def merged_extended_properties(current: list[dict[str, str]], changes: list[dict[str, str]]) -> list[dict[str, str]]:
    """A PATCH adds properties and replaces those with the same id (compared as Exchange compares them)."""
    merged = {extended_property_key(p["id"]): p for p in current}
    for change in changes:
        merged[extended_property_key(change["id"])] = change
    return list(merged.values())


def _validated_recipient(value: Any, field_name: str) -> dict[str, Any]:
    address = value.get("emailAddress") if isinstance(value, dict) else None
    if not isinstance(address, dict) or not isinstance(address.get("address"), str):
        raise _type_error(field_name, "recipients of the form {emailAddress: {address}}")
    if not ADDRESS.match(address["address"]):
        raise GraphError(
            400,
            "ErrorInvalidRecipients",
            f"At least one recipient isn't valid., Recipient '{address['address']}' is not resolved.",
        )
    name = address.get("name")
    if name is not None and not isinstance(name, str):
        raise _type_error(f"{field_name}.emailAddress.name", "a string")
    return recipient(value)


def _validated_attachment(value: Any, index: int) -> dict[str, Any]:
    where = f"attachments[{index}]"
    if not isinstance(value, dict):
        raise _type_error(where, "an object")
    kind = value.get("@odata.type", "#microsoft.graph.fileAttachment")
    if str(kind).lower() != "#microsoft.graph.fileattachment":
        raise GraphError(400, "ErrorInvalidRequest", f"{where}: only file attachments can be sent inline.")
    name, content = value.get("name"), value.get("contentBytes")
    if not isinstance(name, str) or not name or not isinstance(content, str):
        raise _type_error(where, "a file attachment with name and contentBytes")
    try:
        size = len(base64.b64decode(content, validate=True))
    except (binascii.Error, ValueError):
        raise GraphError(400, "ErrorInvalidRequest", f"{where}.contentBytes is not valid base64.") from None
    return {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": str(uuid.uuid4()),
        "name": name,
        "contentType": str(value.get("contentType") or "application/octet-stream"),
        "size": size,
        "isInline": bool(value.get("isInline", False)),
        "contentId": value.get("contentId"),
        "contentBytes": content,
    }


# -- messages ---------------------------------------------------------------------------------------------
@_route("GET", "/users/{user}/messages", READ_ROLES)
def list_messages(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    return _list_messages(service, call, user, None, "/messages")


@_route("GET", "/users/{user}/mailFolders/{folder}/messages", READ_ROLES)
def list_folder_messages(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    folder = _folder(service, user, params["folder"])
    return _list_messages(service, call, user, folder.id, f"/mailFolders('{folder.id}')/messages")


def _list_messages(service: GraphService, call: GraphCall, user: User, folder_id: str | None, tail: str) -> GraphResult:
    top, skip, count = _page_options(call, 10)
    select_text, filter_text, order_text = call.option("$select"), call.option("$filter"), call.option("$orderby")
    select = parse_select(select_text, MESSAGE_PROPERTIES) if select_text is not None else None
    where = compile_filter(filter_text, MESSAGE_COLUMNS) if filter_text is not None else None
    order, order_names = compile_orderby(order_text, MESSAGE_COLUMNS) if order_text else (["received DESC"], [])
    check_efficient(order_names, where.properties if where else [])
    attachments, properties = parse_expand(call)
    documents, total = service.store.query_messages(user, folder_id, where, order, top + 1, skip, count)
    more = len(documents) > top
    items = [
        _web_link(
            project(
                d,
                select,
                expand_attachments=attachments,
                expand_properties=properties,
                immutable=call.immutable,
            ),
            call,
            user,
        )
        for d in documents[:top]
    ]
    return _collection(call, _context(call, user, tail, select), items, top, skip, more, total)


def _web_link(item: dict[str, Any], call: GraphCall, user: User) -> dict[str, Any]:
    """Graph's webLink opens a message in Outlook on the web; the sandbox's opens its own mailbox page."""
    if "webLink" in item and not item["webLink"]:
        origin = call.base_url.rsplit("/v1.0", 1)[0]
        item["webLink"] = f"{origin}/mailboxes/{quote(user.upn, safe='@')}/messages/{quote(item['id'], safe='')}"
    return item


_EXPAND_PROPERTIES = re.compile(r"^singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<filter>.*)\))?$", re.I)
_PROPERTY_ID_EQ = re.compile(r"^\s*id\s+eq\s+'(?P<id>(?:[^']|'')*)'\s*$", re.IGNORECASE)


def parse_expand(call: GraphCall) -> tuple[bool, list[str] | None]:
    """`$expand`: attachments, and/or `singleValueExtendedProperties($filter=id eq '...' [or id eq '...'])`.

    Returns whether attachments are expanded and the (compared-form) ids of the extended properties asked for.
    """
    expand = call.option("$expand")
    if expand is None:
        return False, None
    attachments, properties = False, None
    depth, start, items = 0, 0, []
    for index, char in enumerate(expand + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(expand[start:index].strip())
            start = index + 1
    for item in items:
        match = _EXPAND_PROPERTIES.match(item)
        if item.lower() == "attachments":
            attachments = True
        elif match and match["filter"]:
            properties = []
            for clause in re.split(r"\s+or\s+", match["filter"], flags=re.IGNORECASE):
                found = _PROPERTY_ID_EQ.match(clause)
                try:
                    properties.append(extended_property_key(found["id"].replace("''", "'")) if found else "")
                except ValueError:
                    found = None
                if not found:
                    raise GraphError(400, "BadRequest", f"Invalid filter clause in $expand: '{match['filter']}'.")
        else:
            raise GraphError(400, "BadRequest", f"Could not find a navigation property named '{item}'.")
    return attachments, properties


def _message(service: GraphService, user: User, message_id: str) -> dict[str, Any]:
    try:
        return service.store.message(user, message_id)
    except KeyError:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.") from None


@_route("GET", "/users/{user}/messages/{message}", READ_ROLES)
@_route("GET", "/users/{user}/mailFolders/{folder}/messages/{message}", READ_ROLES)
def get_message(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    unknown = [k for k, _ in call.query if k.startswith("$") and k.lower() not in {"$select", "$expand"}]
    if unknown:
        raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported on this resource.")
    document = _message(service, user, params["message"])
    if "folder" in params and _folder(service, user, params["folder"]).id != document["parentFolderId"]:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    select_text = call.option("$select")
    select = parse_select(select_text, MESSAGE_PROPERTIES) if select_text is not None else None
    attachments, properties = parse_expand(call)
    answer = project(
        document, select, expand_attachments=attachments, expand_properties=properties, immutable=call.immutable
    )
    context = _context(call, user, "/messages", select) + "/$entity"
    return GraphResult(200, {"@odata.context": context, **_web_link(answer, call, user)})


@_route("PATCH", "/users/{user}/messages/{message}", {"Mail.ReadWrite"})
@_route("PATCH", "/users/{user}/mailFolders/{folder}/messages/{message}", {"Mail.ReadWrite"})
def update_message(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    changes = _json_object(call.body)
    document = _message(service, user, params["message"])
    known = {name.lower(): name for name in PATCHABLE | DRAFT_ONLY}
    for key, value in changes.items():
        if key.startswith("@odata."):
            continue  # annotations such as @odata.type carry no change
        name = known.get(key.lower())
        if name is None:
            if key.lower() in {n.lower() for n in MESSAGE_PROPERTIES}:
                raise GraphError(400, "ErrorInvalidPropertyRequest", f"The property '{key}' is read-only.")
            raise GraphError(
                400, "RequestBodyRead", f"The property '{key}' does not exist on type 'microsoft.graph.message'."
            )
        if name in DRAFT_ONLY and not document.get("isDraft"):
            raise GraphError(
                400, "ErrorInvalidPropertyUpdateSentMessage", f"'{name}' can be updated only on a draft message."
            )
        if name == EXTENDED:
            document[name] = merged_extended_properties(document.get(name) or [], validated_extended_properties(value))
        else:
            document[name] = _patched_value(name, value)
    if "body" in document:
        document["bodyPreview"] = preview(document["body"])
    document["lastModifiedDateTime"] = now()
    document["changeKey"] = uuid.uuid4().hex
    service.store.replace_message(user, document)
    answer = project(document, None, immutable=call.immutable)
    return GraphResult(200, {"@odata.context": _context(call, user, "/messages", None) + "/$entity", **answer})


def _patched_value(name: str, value: Any) -> Any:
    if name == "categories":
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise _type_error(name, "an array of strings")
        return list(dict.fromkeys(value))
    if name == "isRead":
        if not isinstance(value, bool):
            raise _type_error(name, "a boolean")
        return value
    if name == "flag":
        if not isinstance(value, dict) or value.get("flagStatus", "notFlagged") not in FLAG_STATUSES:
            raise _type_error(name, "a followupFlag with flagStatus notFlagged, flagged or complete")
        return {"flagStatus": "notFlagged", **value}
    if name == "importance":
        if not isinstance(value, str) or value.lower() not in IMPORTANCE:
            raise _type_error(name, "low, normal or high")
        return value.lower()
    if name == "inferenceClassification":
        if value not in {"focused", "other"}:
            raise _type_error(name, "focused or other")
        return value
    if name.endswith("ExtendedProperties"):
        if not isinstance(value, list):
            raise _type_error(name, "an array")
        return value
    if name in {"toRecipients", "ccRecipients", "bccRecipients", "replyTo"}:
        if not isinstance(value, list):
            raise _type_error(name, "an array of recipients")
        return [_validated_recipient(v, name) for v in value]
    if name in {"from", "sender"}:
        return _validated_recipient(value, name) if value is not None else None
    if name == "subject":
        if not isinstance(value, str):
            raise _type_error(name, "a string")
        return value
    if name == "body":
        if not isinstance(value, dict) or str(value.get("contentType", "text")).lower() not in {"text", "html"}:
            raise _type_error(name, "an itemBody with contentType text or html")
        return {"contentType": str(value.get("contentType", "text")).lower(), "content": str(value.get("content", ""))}
    return value


# -- folders ----------------------------------------------------------------------------------------------
def _folder(service: GraphService, user: User, key: str) -> Any:
    try:
        return service.store.folder(user, key)
    except KeyError:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.") from None


def _list_folders(service: GraphService, call: GraphCall, user: User, parent_id: str, tail: str) -> GraphResult:
    top, skip, count = _page_options(call, 10)
    hidden = (call.option("includeHiddenFolders") or "false").lower()
    if hidden not in {"true", "false"}:
        raise GraphError(400, "BadRequest", f"Invalid value '{hidden}' for includeHiddenFolders.")
    if call.option("$orderby") is not None:
        raise GraphError(400, "BadRequest", "$orderby is not supported on mailFolders.")
    select_text, filter_text = call.option("$select"), call.option("$filter")
    select = parse_select(select_text, FOLDER_PROPERTIES) if select_text is not None else None
    where = compile_filter(filter_text, FOLDER_FILTER_COLUMNS) if filter_text is not None else None
    folders, total = service.store.query_folders(
        user, parent_id=parent_id, include_hidden=hidden == "true", where=where, top=top, skip=skip
    )
    items = [_project_folder(f, select) for f in folders]
    return _collection(
        call, _context(call, user, tail, select), items, top, skip, skip + top < total, total if count else None
    )


def _project_folder(folder: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return folder
    return {"id": folder["id"], **{name: folder[name] for name in select if name in folder}}


@_route("GET", "/users/{user}/mailFolders", READ_ROLES)
def list_folders(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    root = _folder(service, user, "msgfolderroot")
    return _list_folders(service, call, user, root.id, "/mailFolders")


@_route("GET", "/users/{user}/mailFolders/{folder}/childFolders", READ_ROLES)
def list_child_folders(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    parent = _folder(service, user, params["folder"])
    return _list_folders(service, call, user, parent.id, f"/mailFolders('{parent.id}')/childFolders")


@_route("GET", "/users/{user}/mailFolders/{folder}", READ_ROLES)
def get_folder(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    folder = _folder(service, user, params["folder"])
    select_text = call.option("$select")
    select = parse_select(select_text, FOLDER_PROPERTIES) if select_text is not None else None
    documents, _ = service.store.query_folders(user, folder_id=folder.id)
    context = _context(call, user, "/mailFolders", select) + "/$entity"
    return GraphResult(200, {"@odata.context": context, **_project_folder(documents[0], select)})


from . import delta, drafts, folder_delta  # noqa: E402, F401  (their routes register with this dispatcher)
