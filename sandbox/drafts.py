"""Graph's draft lifecycle: create a draft, edit it, attach files (inline or through an upload session), send
it; and moving and deleting messages, which give a message a new default id (its immutable id stays)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any
from urllib.parse import quote

from .clock import CLOCK, stamp
from .errors import GraphError
from .graph import (
    GraphCall,
    GraphResult,
    GraphService,
    _context,
    _folder,
    _json_body,
    _json_object,
    _mailbox_address,
    _message,
    _route,
    _sent_items_visible,
    _type_error,
    _validated_attachment,
    _validated_message,
    recipients_of,
)
from .messages import build_message, now, project
from .store import User

INLINE_ATTACHMENT_LIMIT = 3 * 1024 * 1024  # larger files need an upload session
UPLOAD_SESSION_LIMIT = 150 * 1024 * 1024
UPLOAD_SESSION_SECONDS = 15 * 60  # sandbox's choice: Graph only says the URL expires at expirationDateTime


def _answer(call: GraphCall, user: User, document: dict[str, Any], status: int = 200) -> GraphResult:
    context = _context(call, user, "/messages", None) + "/$entity"
    return GraphResult(status, {"@odata.context": context, **project(document, None, immutable=call.immutable)})


def _draft(service: GraphService, user: User, message_id: str) -> dict[str, Any]:
    document = _message(service, user, message_id)
    if not document.get("isDraft"):
        raise GraphError(400, "ErrorInvalidOperation", "The operation is valid only on a draft message.")
    return document


@_route("POST", "/users/{user}/messages", {"Mail.ReadWrite"})
@_route("POST", "/users/{user}/mailFolders/{folder}/messages", {"Mail.ReadWrite"})
def create_draft(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """A new draft (in Drafts, or in the folder posted to): 201 with the message."""
    source = _json_object(call.body)
    message = _validated_message(source, user, draft=True)
    folder = _folder(service, user, params.get("folder", "drafts"))
    document = build_message(message, folder_id=folder.id, is_read=True)
    document["isDraft"] = True
    service.store.insert_message(user, document)
    return _answer(call, user, document, 201)


@_route("POST", "/users/{user}/messages/{message}/send", {"Mail.Send"})
@_route("POST", "/users/{user}/messages/{message}/microsoft.graph.send", {"Mail.Send"})
def send_draft(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """202; the draft leaves Drafts for Sent Items (a new default id, the same immutable id) and is delivered."""
    draft = _draft(service, user, params["message"])
    recipients = recipients_of(draft)
    if not recipients:
        raise GraphError(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        )
    stamp_now = now()
    sent = dict(
        draft,
        isDraft=False,
        isRead=True,
        sender=_mailbox_address(user),
        sentDateTime=stamp_now,
        receivedDateTime=stamp_now,
        lastModifiedDateTime=stamp_now,
        changeKey=uuid.uuid4().hex,
        **{"from": _mailbox_address(user)},
    )
    with service.store.transaction():
        service.transport.submit(user, sent, recipients, saved=True)
        sent_items = service.store.folder(user, "sentitems").id
        service.store.move_message(user, sent, sent_items, visible=_sent_items_visible(service))
    return GraphResult(202, None, {})


@_route("POST", "/users/{user}/messages/{message}/move", {"Mail.ReadWrite"})
@_route("POST", "/users/{user}/messages/{message}/microsoft.graph.move", {"Mail.ReadWrite"})
def move_message(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    body = _json_body(call.body)
    destination = {k.lower(): v for k, v in body.items()}.get("destinationid") if isinstance(body, dict) else None
    if not isinstance(destination, str) or not destination:
        raise GraphError(400, "ErrorInvalidRequest", "The 'destinationId' parameter is missing.")
    document = _message(service, user, params["message"])
    folder = _folder(service, user, destination)
    moved = (
        service.store.move_message(user, document, folder.id) if folder.id != document["parentFolderId"] else document
    )
    return _answer(call, user, moved, 201)


@_route("DELETE", "/users/{user}/messages/{message}", {"Mail.ReadWrite"})
@_route("DELETE", "/users/{user}/mailFolders/{folder}/messages/{message}", {"Mail.ReadWrite"})
def delete_message(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """204: the message moves to Deleted Items; deleted from there, it is gone."""
    document = _message(service, user, params["message"])
    deleted_items = service.store.folder(user, "deleteditems").id
    if document["parentFolderId"] == deleted_items:
        service.store.delete_message(user, document)
    else:
        service.store.move_message(user, document, deleted_items)
    return GraphResult(204, None, {})


# -- attachments ------------------------------------------------------------------------------------------
def _attachment_answer(call: GraphCall, user: User, message: dict[str, Any], attachment: dict[str, Any]) -> Any:
    message_id = message["immutableId"] if call.immutable else message["id"]
    context = _context(call, user, f"/messages('{message_id}')/attachments", None) + "/$entity"
    return {"@odata.context": context, **attachment}


@_route("POST", "/users/{user}/messages/{message}/attachments", {"Mail.ReadWrite"})
def add_attachment(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """A file attachment of at most 3 MB, inline in the request: 201 with the attachment."""
    document = _message(service, user, params["message"])
    attachment = _validated_attachment(_json_body(call.body), 0)
    if attachment["size"] > INLINE_ATTACHMENT_LIMIT:
        raise GraphError(
            413, "RequestEntityTooLarge", "Attachments over 3 MB need an upload session (createUploadSession)."
        )
    document["attachments"] = [*document.get("attachments", []), attachment]
    document.update(hasAttachments=True, lastModifiedDateTime=now(), changeKey=uuid.uuid4().hex)
    service.store.replace_message(user, document)
    return GraphResult(201, _attachment_answer(call, user, document, attachment))


@_route("GET", "/users/{user}/messages/{message}/attachments", {"Mail.Read", "Mail.ReadWrite"})
def list_attachments(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    document = _message(service, user, params["message"])
    message_id = document["immutableId"] if call.immutable else document["id"]
    context = _context(call, user, f"/messages('{message_id}')/attachments", None)
    return GraphResult(200, {"@odata.context": context, "value": document.get("attachments", [])})


@_route("GET", "/users/{user}/messages/{message}/attachments/{attachment}", {"Mail.Read", "Mail.ReadWrite"})
def get_attachment(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    document = _message(service, user, params["message"])
    for attachment in document.get("attachments", []):
        if attachment["id"] == params["attachment"]:
            return GraphResult(200, _attachment_answer(call, user, document, attachment))
    raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


@_route("POST", "/users/{user}/messages/{message}/attachments/createUploadSession", {"Mail.ReadWrite"}, first=True)
@_route(
    "POST",
    "/users/{user}/messages/{message}/attachments/microsoft.graph.createUploadSession",
    {"Mail.ReadWrite"},
    first=True,
)
def create_upload_session(service: GraphService, call: GraphCall, user: User, params: dict[str, str]) -> GraphResult:
    """201 with `uploadUrl` (pre-authenticated: PUT chunks there without a token), `expirationDateTime` and
    `nextExpectedRanges`."""
    document = _draft(service, user, params["message"])
    body = _json_body(call.body)
    item = {k.lower(): v for k, v in body.items()}.get("attachmentitem") if isinstance(body, dict) else None
    if not isinstance(item, dict):
        raise GraphError(400, "ErrorInvalidRequest", "The 'AttachmentItem' parameter is missing.")
    item = {k[0].lower() + k[1:]: v for k, v in item.items()}
    name, size = item.get("name"), item.get("size")
    if str(item.get("attachmentType", "file")).lower() != "file":
        raise GraphError(400, "ErrorInvalidRequest", "Only file attachments can be uploaded in a session.")
    if not isinstance(name, str) or not name:
        raise _type_error("AttachmentItem.name", "a non-empty string")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= UPLOAD_SESSION_LIMIT:
        raise GraphError(
            400, "ErrorAttachmentSizeLimitExceeded", f"AttachmentItem.size must be 1 to {UPLOAD_SESSION_LIMIT} bytes."
        )
    session_id = "AAMkAG" + uuid.uuid4().hex
    expires = CLOCK.time() + UPLOAD_SESSION_SECONDS
    session = {
        "name": name,
        "size": size,
        "contentType": str(item.get("contentType") or "application/octet-stream"),
        "isInline": bool(item.get("isInline", False)),
        "contentId": item.get("contentId"),
        "expires": expires,
    }
    service.store.create_upload(session_id, user, document["immutableId"], call.caller.client_id, session)
    origin = call.base_url.rsplit("/v1.0", 1)[0]
    tenant = service.store.tenant().get("id", "")
    url = (
        f"{origin}/api/v2.0/Users('{quote(user.id + '@' + tenant)}')/Messages('{quote(document['immutableId'])}')"
        f"/AttachmentSessions('{session_id}')?authtoken={upload_token(service.store.signing_key(), session_id)}"
    )
    answer = {
        "@odata.context": f"{call.base_url}/$metadata#microsoft.graph.uploadSession",
        "uploadUrl": url,
        "expirationDateTime": stamp(expires),
        "nextExpectedRanges": ["0-"],
    }
    return GraphResult(201, answer)


def upload_token(key: bytes, session_id: str) -> str:
    """The upload URL's pre-authentication: only the sandbox that made the session can have signed it."""
    return hmac.new(key, f"upload:{session_id}".encode(), hashlib.sha256).hexdigest()


def session_document(raw: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(raw)
    return document
