"""The raw Graph sendMail form (`{"message": {...}, "saveToSentItems": ...}`), read as Graph reads it.

Graph matches property names in any letter case and takes `"true"`/`"false"` strings for booleans (Microsoft's
own v1.0 example sends `"saveToSentItems": "false"`); so does `read_graph_form`. It maps the body onto the
app's mail fields and remembers where the caller wrote each one, so that every error names the field as the
caller wrote it (`message.ToRecipients[0].EmailAddress.address`), never the app's own name for it. What Graph
v1.0 declares for a message but the app does not send is refused by name; `mentions`, which Graph's v1.0
sendMail ignores, is ignored with a warning. `shared.mail.parse_mail` validates the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import Detail, InvalidRequest

# what the app sends of a Graph v1.0 message (graph.message, graph.outlookItem, graph.entity)
_MESSAGE = (
    "subject",
    "body",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "from",
    "importance",
    "attachments",
    "internetMessageHeaders",
    "@odata.type",
)
# what Graph v1.0 declares for a message besides: the app cannot honour these, so it refuses them by name
_MESSAGE_UNSUPPORTED = (
    "bodyPreview",
    "categories",
    "changeKey",
    "conversationId",
    "conversationIndex",
    "createdDateTime",
    "extensions",
    "flag",
    "hasAttachments",
    "id",
    "inferenceClassification",
    "internetMessageId",
    "isDeliveryReceiptRequested",
    "isDraft",
    "isRead",
    "isReadReceiptRequested",
    "lastModifiedDateTime",
    "multiValueExtendedProperties",
    "parentFolderId",
    "receivedDateTime",
    "sender",
    "sentDateTime",
    "singleValueExtendedProperties",
    "uniqueBody",
    "webLink",
)
# what Graph's v1.0 sendMail takes and ignores (a beta property of the message): the mail goes without it
_MESSAGE_IGNORED = ("mentions",)
_RECIPIENT = ("emailAddress",)
_EMAIL_ADDRESS = ("address", "name")
_ITEM_BODY = ("contentType", "content")
_HEADER = ("name", "value")
_ATTACHMENT = ("@odata.type", "name", "contentType", "contentBytes", "isInline", "contentId")
_ATTACHMENT_UNSUPPORTED = ("contentLocation", "id", "lastModifiedDateTime", "size")
_FILE_ATTACHMENT = "#microsoft.graph.fileattachment"
# the app's own fields for Graph's recipient lists
_RECIPIENT_LISTS = (("toRecipients", "to"), ("ccRecipients", "cc"), ("bccRecipients", "bcc"), ("replyTo", "replyTo"))
_INDEX = re.compile(r"^(.*)\[\d+\]$")


@dataclass
class GraphForm:
    """A Graph sendMail body as the app's mail fields (`mail`), where the caller wrote each of them (`written`,
    by the app's field path: `to[0].address` -> `message.toRecipients[0].emailAddress.address`), and the
    properties Graph would ignore too (`ignored`, as written)."""

    mail: dict[str, Any] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def is_graph_form(body: dict[str, Any]) -> bool:
    """Whether a mail body is Graph's sendMail form: it has a `message`, in any letter case."""
    return any(isinstance(key, str) and key.lower() == "message" for key in body)


def as_written(written: dict[str, str], path: str) -> str:
    """The caller's name for one of the app's field paths: the nearest field the caller wrote, followed by the
    rest of the path (`attachments[0].contentBase64` when only `attachments[0]` was mapped)."""
    rest = ""
    while path:
        if path in written:
            return written[path] + rest
        index = _INDEX.match(path)
        head, dot, tail = path.rpartition(".")
        if index and (not dot or len(index.group(1)) > len(head)):
            rest = path[len(index.group(1)) :] + rest
            path = index.group(1)
        elif dot:
            rest = f".{tail}{rest}"
            path = head
        else:
            break
    return f"{written.get('', 'message')}.{path}{rest}"


def _refuse(where: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {reason}", [Detail(where, reason)])


def _object(
    value: Any, where: str, known: tuple[str, ...], unsupported: tuple[str, ...] = ()
) -> dict[str, tuple[str, Any]]:
    """An object's properties by their Graph names, whatever letter case the caller wrote them in; each value
    comes with the path the caller wrote it at (`{name: (where, value)}`). Unknown properties are refused."""
    if not isinstance(value, dict):
        raise _refuse(where, "must be an object")
    names = {name.lower(): name for name in known}
    refused = {name.lower() for name in unsupported}
    found: dict[str, tuple[str, Any]] = {}
    for key, item in value.items():
        at = f"{where}.{key}" if where else str(key)
        name = names.get(str(key).lower())
        if str(key).lower() in refused:
            raise _refuse(at, "Graph's property is not supported by the app (see docs/api.md: the Graph form)")
        if name is None:
            raise _refuse(at, f"unknown property; known here: {', '.join(known)}")
        if name in found:
            raise _refuse(at, f"given twice ({found[name][0]})")
        found[name] = (at, item)
    return found


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _refuse(where, "must be an array")
    return value


def graph_bool(value: Any, where: str) -> bool:
    """A Graph boolean: true or false, also as the strings "true" and "false" in any letter case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise _refuse(where, "must be true or false")


def _enum(value: Any, where: str, members: tuple[str, ...]) -> str:
    """A Graph enum member, in any letter case (`Text`, `HTML`)."""
    if isinstance(value, str) and value.lower() in members:
        return value.lower()
    raise _refuse(where, f"must be {' or '.join(members)}")


def read_graph_form(body: dict[str, Any]) -> GraphForm:
    """Map a Graph sendMail body onto the app's mail fields, refusing what the app would otherwise drop."""
    form = GraphForm()
    top = _object(body, "", ("message", "saveToSentItems", "id"))
    where, message = top["message"]
    form.written[""] = where
    form.written["attachments"] = f"{where}.attachments"
    form.written["headers"] = f"{where}.internetMessageHeaders"
    if "saveToSentItems" in top:
        at, value = top["saveToSentItems"]
        form.written["saveToSentItems"] = at
        form.mail["saveToSentItems"] = graph_bool(value, at)
    if "id" in top:
        form.written["id"], form.mail["id"] = top["id"]
    unknown = (
        next((k for k in message if str(k).lower() == "savetosentitems"), None) if isinstance(message, dict) else None
    )
    if unknown is not None:
        raise _refuse(f"{where}.{unknown}", "belongs beside message, not in it")
    fields = _object(message, where, (*_MESSAGE, *_MESSAGE_IGNORED), _MESSAGE_UNSUPPORTED)
    for name in _MESSAGE_IGNORED:
        if name in fields:
            form.ignored.append(fields[name][0])
    for name, app in _RECIPIENT_LISTS:
        at, value = fields.get(name, (f"{where}.{name}", None))
        form.written[app] = at
        form.mail[app] = [
            _recipient(item, f"{at}[{i}]", f"{app}[{i}]", form) for i, item in enumerate(_list(value, at))
        ]
    if "from" in fields:
        at, value = fields["from"]
        if value is not None:
            form.mail["from"] = _recipient(value, at, "from", form).get("address")
            form.written["from"] = form.written.get("from.address", at)
    form.written["subject"], form.mail["subject"] = fields.get("subject", (f"{where}.subject", ""))
    if "importance" in fields:
        at, value = fields["importance"]
        form.written["importance"] = at
        form.mail["importance"] = _enum(value, at, ("low", "normal", "high"))
    form.written["text"] = form.written["html"] = f"{where}.body"
    if fields.get("body", (None, None))[1] is not None:
        _item_body(*fields["body"], form)
    else:
        form.mail["text"] = ""  # Graph sends a message without a body with an empty one
    if "internetMessageHeaders" in fields:
        _headers(*fields["internetMessageHeaders"], form)
    if "attachments" in fields:
        _attachments(*fields["attachments"], form)
    return form


def _recipient(value: Any, where: str, app: str, form: GraphForm) -> dict[str, Any]:
    """`{"emailAddress": {"address", "name"}}` as the app's `{"address", "name"}`."""
    form.written[app] = where
    outer = _object(value, where, _RECIPIENT)
    if "emailAddress" not in outer:
        raise _refuse(f"{where}.emailAddress", 'is required: {"emailAddress": {"address": ...}}')
    at, address = outer["emailAddress"]
    inner = _object(address, at, _EMAIL_ADDRESS)
    mailbox: dict[str, Any] = {}
    for name in _EMAIL_ADDRESS:
        form.written[f"{app}.{name}"], value_ = inner.get(name, (f"{at}.{name}", None))
        if value_ is not None:
            mailbox[name] = value_
    if "address" not in mailbox:
        raise _refuse(f"{at}.address", "is required")
    return mailbox


def _item_body(where: str, value: Any, form: GraphForm) -> None:
    fields = _object(value, where, _ITEM_BODY)
    kind = "text"
    if "contentType" in fields:
        kind = _enum(fields["contentType"][1], fields["contentType"][0], ("text", "html"))
    at, content = fields.get("content", (f"{where}.content", ""))
    form.written[kind] = at
    form.mail[kind] = content


def _headers(where: str, value: Any, form: GraphForm) -> None:
    form.written["headers"] = where
    headers: dict[Any, Any] = {}
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        fields = _object(item, at, _HEADER)
        name = fields.get("name", (None, None))[1]
        if not isinstance(name, str):
            raise _refuse(f"{at}.name", "is required: a header name like x-custom-header")
        if name in headers:
            raise _refuse(f"{at}.name", f"{name} is given twice")
        headers[name] = fields.get("value", (None, None))[1]
        form.written[f"headers.{name}"] = at
    form.mail["headers"] = headers


def _attachments(where: str, value: Any, form: GraphForm) -> None:
    form.written["attachments"] = where
    attachments = []
    for index, item in enumerate(_list(value, where)):
        at = f"{where}[{index}]"
        app = f"attachments[{index}]"
        form.written[app] = at
        fields = _object(item, at, _ATTACHMENT, _ATTACHMENT_UNSUPPORTED)
        if "@odata.type" in fields:
            kind_at, kind = fields["@odata.type"]
            if not isinstance(kind, str) or kind.lower() != _FILE_ATTACHMENT:
                raise _refuse(kind_at, "only #microsoft.graph.fileAttachment is supported")
        attachment: dict[str, Any] = {}
        for graph, mine in (
            ("name", "name"),
            ("contentType", "contentType"),
            ("contentBytes", "contentBase64"),
            ("isInline", "inline"),
            ("contentId", "contentId"),
        ):
            if graph in fields:
                form.written[f"{app}.{mine}"], attachment[mine] = fields[graph]
        if attachment.get("inline") is not None:
            attachment["inline"] = graph_bool(attachment["inline"], form.written[f"{app}.inline"])
        attachments.append({k: v for k, v in attachment.items() if v is not None})
        form.written.setdefault(f"{app}.contentBase64", f"{at}.contentBytes")
    form.mail["attachments"] = attachments
