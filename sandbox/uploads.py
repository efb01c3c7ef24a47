"""The upload URL of an attachment upload session (Outlook's `AttachmentSessions`): PUT byte ranges in order.

Rules as Microsoft documents them: no Authorization header (the URL carries its own token), `Content-Range:
bytes {start}-{end}/{total}`, at most 4 MB a chunk and a multiple of 320 KiB except the last, 200 with the
next expected range, 201 with a `Location` on the last chunk; a wrong start gets 416 and the range expected,
so an interrupted upload resumes. Uploads count against 150 MB per 5 minutes per app and mailbox (429).
"""

from __future__ import annotations

import base64
import hmac
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .clock import CLOCK, stamp
from .drafts import session_document, upload_token
from .errors import GraphError
from .messages import now
from .store import Store

CHUNK_LIMIT = 4 * 1024 * 1024
CHUNK_UNIT = 320 * 1024
UPLOAD_WINDOW_SECONDS = 300
_PATH = re.compile(
    r"^Users\('(?P<user>[^']+)'\)/Messages\('(?P<message>[^']+)'\)/AttachmentSessions\('(?P<session>[^']+)'\)$"
)
_RANGE = re.compile(r"^bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+)$")


@dataclass
class UploadAnswer:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


def _status(origin: str, session_path: str, expires: float, received: int) -> dict[str, Any]:
    return {
        "@odata.context": f"{origin}/api/v2.0/$metadata#{session_path}/$entity",
        "expirationDateTime": stamp(expires),
        "nextExpectedRanges": [str(received)],
    }


def handle(
    store: Store, origin: str, method: str, path: str, token: str, headers: dict[str, str], body: bytes
) -> UploadAnswer:
    """One request to an upload URL; raises GraphError for what Outlook refuses."""
    found = _PATH.match(path)
    if found is None:
        raise GraphError(404, "ErrorItemNotFound", "No such upload session.")
    if "authorization" in headers:
        raise GraphError(
            401, "InvalidAuthenticationToken", "Upload URLs are pre-authenticated: send no Authorization header."
        )
    session_id = found["session"]
    if not hmac.compare_digest(token, upload_token(store.signing_key(), session_id)):
        raise GraphError(401, "InvalidAuthenticationToken", "The upload URL's authtoken is not valid.")
    try:
        session = store.upload(session_id)
    except KeyError:
        raise GraphError(404, "ErrorItemNotFound", "The upload session does not exist or is finished.") from None
    doc = session_document(session["doc"])
    if CLOCK.time() > session["expires"]:
        raise GraphError(404, "ErrorItemNotFound", "The upload session has expired.")
    session_path = path.split("/AttachmentSessions", 1)[0] + "/AttachmentSessions"
    received = store.upload_received(session_id)
    if method == "GET":
        return UploadAnswer(200, _status(origin, session_path, doc["expires"], received), {})
    if method == "DELETE":
        store.finish_upload(session_id)
        return UploadAnswer(204, None, {})
    return _put(store, origin, session, doc, session_path, received, headers, body)


def _put(
    store: Store,
    origin: str,
    session: Any,
    doc: dict[str, Any],
    session_path: str,
    received: int,
    headers: dict[str, str],
    body: bytes,
) -> UploadAnswer:
    content_range = _RANGE.match(headers.get("content-range", "").strip())
    if content_range is None:
        raise GraphError(400, "InvalidContentRange", "Content-Range must be 'bytes {start}-{end}/{total}'.")
    start, end, total = (int(content_range[k]) for k in ("start", "end", "total"))
    if total != doc["size"]:
        raise GraphError(400, "InvalidContentRange", f"The total size must be the session's {doc['size']} bytes.")
    if end < start or end - start + 1 != len(body):
        raise GraphError(400, "InvalidContentRange", "The range does not match the number of bytes sent.")
    if len(body) > CHUNK_LIMIT:
        raise GraphError(413, "RequestEntityTooLarge", "A chunk may carry at most 4 MB.")
    last = end + 1 == total
    if not last and len(body) % CHUNK_UNIT:
        raise GraphError(400, "InvalidContentRange", "Chunks other than the last must be multiples of 320 KiB.")
    if start != received:
        raise GraphError(416, "RequestedRangeNotSatisfiable", f"The next expected range starts at {received}.")
    mailbox, app = session["mailbox"], session["app"]
    window_mb = store.exchange_limits(store.user(mailbox)).upload_mb_per_5_minutes
    used, oldest = store.uploaded_bytes(app, mailbox, CLOCK.time() - UPLOAD_WINDOW_SECONDS)
    if window_mb is not None and used + len(body) > window_mb * 1024 * 1024:
        wait = max(1, math.ceil((oldest or CLOCK.time()) + UPLOAD_WINDOW_SECONDS - CLOCK.time()))
        raise GraphError(
            429,
            "ApplicationThrottled",
            f"Application is over its upload limit of {window_mb:g} MB per 5 minutes for this mailbox.",
            {"Retry-After": str(wait)},
        )
    store.add_chunk(session["id"], start, body, app, mailbox)
    if not last:
        return UploadAnswer(200, _status(origin, session_path, doc["expires"], end + 1), {})
    return _attach(store, origin, session, doc, session_path)


def _attach(store: Store, origin: str, session: Any, doc: dict[str, Any], session_path: str) -> UploadAnswer:
    """The last chunk: the file becomes an attachment of the message; 201 with its URL in `Location`."""
    user = next(u for u in store.users() if u.id == session["mailbox"])
    content = store.upload_content(session["id"])
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": "AAMkAG" + uuid.uuid4().hex,
        "name": doc["name"],
        "contentType": doc["contentType"],
        "size": len(content),
        "isInline": doc["isInline"],
        "contentId": doc["contentId"],
        "lastModifiedDateTime": now(),
        "contentBytes": base64.b64encode(content).decode(),
    }
    with store.transaction():
        message = store.message(user, session["message"])
        message["attachments"] = [*message.get("attachments", []), attachment]
        message.update(hasAttachments=True, lastModifiedDateTime=now(), changeKey=uuid.uuid4().hex)
        store.replace_message(user, message)
        store.finish_upload(session["id"])
    location = session_path.rsplit("/AttachmentSessions", 1)[0] + f"/Attachments('{attachment['id']}')"
    return UploadAnswer(201, None, {"Location": f"{origin}/api/v2.0/{location}"})
