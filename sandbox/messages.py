"""Graph message documents: built from sendMail bodies and seeded mail, and projected for answers."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr
from typing import Any

from .clock import CLOCK
from .extended import extended_property_key
from .odata import format_datetime, parse_datetime

MESSAGE_PROPERTIES = {
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "uniqueBody",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
    "internetMessageHeaders",
    "attachments",
}
# Stored with a message but not among its default properties: navigation properties and the immutable id
HIDDEN_PROPERTIES = frozenset(
    {"attachments", "internetMessageHeaders", "singleValueExtendedProperties", "multiValueExtendedProperties",
     "immutableId"}
)  # fmt: skip
_NOT_DEFAULT = HIDDEN_PROPERTIES | {"id"}
EXTENDED = "singleValueExtendedProperties"
ORGANIZATION_HEADERS = "x-ms-exchange-organization-"  # Exchange's own: no sender sets them (the header firewall)
AUTH_AS_HEADER = "X-MS-Exchange-Organization-AuthAs"
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
MIME_LINE_CHARS = 76  # RFC 2045: base64 in lines of at most 76 characters, each ended by CRLF
TRANSPORT_HEADER_BYTES = 8 * 1024  # Received, ARC, Authentication-Results, X-MS-Exchange-* added in transport
ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


def new_id() -> str:
    """An opaque id in the style of Exchange's: long, URL-safe base64 with padding."""
    return "AAMkAG" + base64.urlsafe_b64encode(os.urandom(40)).decode()


def new_immutable_id() -> str:
    """An immutable id in the style of Exchange's (another prefix than the default ids)."""
    return "AAkALg" + base64.urlsafe_b64encode(os.urandom(40)).decode()


def message_size(document: dict[str, Any]) -> int:
    """The size Exchange measures a message by against its maximum message size: the MIME message transport
    writes (the email package's, with CRLF), its body encoded as the package chooses, each attachment in base64
    lines of 76 characters, and the headers transport adds on its way."""
    message = EmailMessage(policy=SMTP)
    message["Subject"] = str(document.get("subject") or "")
    for header, key in (("From", "from"), ("To", "toRecipients"), ("Cc", "ccRecipients"), ("Reply-To", "replyTo")):
        value = document.get(key)
        mailboxes = value if isinstance(value, list) else [value] if value else []
        addresses = [recipient(m)["emailAddress"] for m in mailboxes]
        if addresses:
            message[header] = ", ".join(formataddr((a["name"], a["address"])) for a in addresses)
    for header in document.get("internetMessageHeaders") or []:
        message[str(header.get("name"))] = str(header.get("value"))
    message["Message-ID"] = str(document.get("internetMessageId") or "<sandbox@sandbox.test>")
    body = document.get("body") or {}
    subtype = "html" if str(body.get("contentType", "text")).lower() == "html" else "plain"
    message.set_content(str(body.get("content", "")), subtype=subtype)
    encoded = 0
    for attachment in document.get("attachments") or []:
        # the part's headers as written, its content counted rather than encoded again
        message.add_attachment(b"", maintype="application", subtype="octet-stream", filename=attachment.get("name"))
        characters = len(str(attachment.get("contentBytes") or "")) or 4 * -(-int(attachment.get("size") or 0) // 3)
        encoded += characters + 2 * -(-characters // MIME_LINE_CHARS)
    return len(message.as_bytes()) + encoded + TRANSPORT_HEADER_BYTES


def now() -> str:
    return format_datetime(CLOCK.now())


def preview(body: dict[str, Any]) -> str:
    content = str(body.get("content", ""))
    if str(body.get("contentType", "text")).lower() == "html":
        content = html.unescape(_TAGS.sub(" ", content))
    return _SPACE.sub(" ", content).strip()[:255]


def recipient(value: Any) -> dict[str, Any]:
    """A Graph recipient from either `{"emailAddress": {...}}` or a bare address string."""
    if isinstance(value, str):
        return {"emailAddress": {"name": value, "address": value}}
    address = value.get("emailAddress", {}) if isinstance(value, dict) else {}
    return {
        "emailAddress": {
            "name": address.get("name") or address.get("address", ""),
            "address": address.get("address", ""),
        }
    }


def address_of(value: dict[str, Any] | None) -> str:
    return str(((value or {}).get("emailAddress") or {}).get("address", "")).lower()


def build_message(
    source: dict[str, Any], *, folder_id: str, is_read: bool, received: str | None = None
) -> dict[str, Any]:
    """A stored message document with every property Graph returns by default."""
    stamp = received or now()
    body = source.get("body") or {"contentType": "text", "content": ""}
    if isinstance(body, str):
        body = {"contentType": source.get("contentType", "text"), "content": body}
    body = {"contentType": str(body.get("contentType", "text")).lower(), "content": body.get("content", "")}
    sender = recipient(source["from"]) if source.get("from") else None
    attachments = list(source.get("attachments") or [])
    return {
        "id": new_id(),
        "immutableId": new_immutable_id(),
        "createdDateTime": stamp,
        "lastModifiedDateTime": stamp,
        "changeKey": uuid.uuid4().hex,
        "categories": list(source.get("categories") or []),
        "receivedDateTime": stamp,
        "sentDateTime": source.get("sentDateTime") or stamp,
        "hasAttachments": bool(attachments),
        "internetMessageId": source.get("internetMessageId") or f"<{uuid.uuid4().hex}@sandbox.test>",
        "subject": str(source.get("subject") or ""),
        "bodyPreview": preview(body),
        "importance": str(source.get("importance") or "normal").lower(),
        "parentFolderId": folder_id,
        "conversationId": source.get("conversationId") or new_id(),
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": is_read,
        "isDraft": False,
        "webLink": "",
        "inferenceClassification": "focused",
        "body": body,
        "sender": sender,
        "from": sender,
        "toRecipients": [recipient(r) for r in source.get("toRecipients") or []],
        "ccRecipients": [recipient(r) for r in source.get("ccRecipients") or []],
        "bccRecipients": [recipient(r) for r in source.get("bccRecipients") or []],
        "replyTo": [recipient(r) for r in source.get("replyTo") or []],
        "flag": {"flagStatus": "notFlagged"},
        "internetMessageHeaders": list(source.get("internetMessageHeaders") or []),
        "attachments": attachments,
        **({"singleValueExtendedProperties": list(extended)} if (extended := source.get(EXTENDED)) else {}),
    }


_AGO = re.compile(r"^-(\d+)([mhd])$")
_AGO_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def received_stamp(value: str) -> str:
    """A seed's `receivedDateTime`: an ISO 8601 date-time, or `-<n>m|h|d`, that long before the sandbox's now (so
    the default seed's mail stays recent for `report: new` digests)."""
    ago = _AGO.match(value)
    if ago is None:
        return parse_datetime(value)
    return format_datetime(datetime.fromtimestamp(CLOCK.time() - int(ago[1]) * _AGO_SECONDS[ago[2]], UTC))


def stamp_origin(headers: list[dict[str, Any]], auth_as: str) -> list[dict[str, Any]]:
    """A message's headers as Exchange's header firewall leaves them on delivery: every
    X-MS-Exchange-Organization-* header the sender wrote removed, and Exchange's own `AuthAs` stamped
    (`Internal` for mail submitted in the tenant, `Anonymous` for mail from outside)."""
    kept = [h for h in headers if not str(h.get("name", "")).lower().startswith(ORGANIZATION_HEADERS)]
    return [*kept, {"name": AUTH_AS_HEADER, "value": auth_as}]


def seeded_message(source: dict[str, Any], folder_id: str) -> dict[str, Any]:
    """A message delivered through the control API: mail from outside the tenant, in Graph's shape, plus
    isRead/receivedDateTime/categories; its headers are what Exchange's header firewall leaves of them."""
    received = source.get("receivedDateTime")
    stamp = received_stamp(received) if isinstance(received, str) else None
    document = build_message(source, folder_id=folder_id, is_read=bool(source.get("isRead", False)), received=stamp)
    document["internetMessageHeaders"] = stamp_origin(document["internetMessageHeaders"], "Anonymous")
    return document


def columns_of(document: dict[str, Any]) -> dict[str, Any]:
    """The indexed columns a message's `$filter` and `$orderby` run on."""
    return {
        "folder_id": document["parentFolderId"],
        "received": document["receivedDateTime"],
        "sent": document["sentDateTime"],
        "is_read": int(bool(document["isRead"])),
        "from_address": address_of(document.get("from")),
        "subject": document.get("subject", ""),
        "importance": document.get("importance", "normal"),
        "has_attachments": int(bool(document.get("hasAttachments"))),
        "categories": json.dumps(document.get("categories") or []),
        "flag_status": (document.get("flag") or {}).get("flagStatus", "notFlagged"),
        "inference": document.get("inferenceClassification", "focused"),
        "conversation_id": document.get("conversationId", ""),
        "immutable_id": document.get("immutableId") or document["id"],
        "ext_props": json.dumps(
            [
                {"id": extended_property_key(p["id"]), "value": p.get("value")}
                for p in document.get("singleValueExtendedProperties") or []
            ]
        ),
    }


def project(
    document: dict[str, Any],
    select: list[str] | None,
    *,
    expand_attachments: bool = False,
    expand_properties: list[str] | None = None,
    immutable: bool = False,
) -> dict[str, Any]:
    """The message as Graph returns it: `@odata.etag`, id, then the selected (or default) properties.

    `expand_properties` lists the (compared-form) ids of the extended properties to include; `immutable`
    answers with the immutable id (`Prefer: IdType="ImmutableId"`).
    """
    message_id = document.get("immutableId", document["id"]) if immutable else document["id"]
    answer: dict[str, Any] = {"@odata.etag": f'W/"{document["changeKey"]}"', "id": message_id}
    if select is None:  # the default properties: one pass, this is the hot path of every listing
        answer.update((k, v) for k, v in document.items() if k not in _NOT_DEFAULT)
    else:
        for name in select:
            if name in document and name not in {"id", "attachments"}:
                answer[name] = document[name]
    if expand_attachments:
        answer["attachments"] = [
            {k: v for k, v in a.items() if not k.startswith("_")} for a in document.get("attachments", [])
        ]
    if expand_properties is not None:
        wanted = set(expand_properties)
        found = [
            p for p in document.get("singleValueExtendedProperties") or [] if extended_property_key(p["id"]) in wanted
        ]
        if found:
            answer["singleValueExtendedProperties"] = found
    return answer
