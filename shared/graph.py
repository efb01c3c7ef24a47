"""The Graph client: the one module that imports msgraph, and only when a Graph call is first made.

One client per worker process (per event loop): msgraph-sdk's middleware (auth, redirects, retries),
with in-process retries kept to short waits; a longer `Retry-After` comes back as a `GraphError` so the
caller can re-enqueue with that delay instead of sleeping. At most `MAILBOX_CONCURRENCY` requests per
mailbox are in flight at once, Outlook's own limit. Bodies are sent and read as JSON, so what Graph gets
is exactly what `shared.mail` rendered.

The delivery engine's steps live here too: a draft marked with the mail's id (immutable ids), its large
attachments through upload sessions, its send, and the non-delivery reports that come back. Requests whose
replay could duplicate something (creating a draft or an upload session, sending) are retried in process
only after a 429, which Graph answers before doing anything; after a 5xx or no answer the outcome is
unknown and the caller finds out (`find_marked`, `get_message`, `upload_position`) before going on.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .config import Settings
from .credentials import graph_credential, graph_scope
from .errors import GraphError
from .loop_cache import LoopCache

if TYPE_CHECKING:
    from kiota_abstractions.request_information import RequestInformation
    from msgraph.graph_service_client import GraphServiceClient

MAILBOX_CONCURRENCY = 4  # Outlook: 4 concurrent requests per app per mailbox
MAX_IN_PROCESS_WAIT = 10.0  # seconds the SDK may sleep for a Retry-After before we hand it back
BATCH_LIMIT = 20  # requests per JSON batch
DELTA_PAGE = 1000  # items per delta page asked for (Prefer: odata.maxpagesize): the fewest requests
FOLDER_FIELDS = "displayName,parentFolderId,isHidden,unreadItemCount,totalItemCount,childFolderCount"
_THROTTLED_ONLY = "notifier_throttled_only"  # marks a RetryHandlerOption: retry after a 429 only

# The marker on every draft the delivery engine creates: a named string property in the app's own property
# set, holding the mail's id. The GUID is fixed for good (finding a mail that was sent depends on it), and
# Exchange compares the `Name` part case-sensitively.
DELIVERY_ID_PROPERTY = "String {AEA3EF54-363C-4873-B482-B8133A83FEEB} Name NotifierDeliveryId"
IMMUTABLE_IDS = 'IdType="ImmutableId"'  # the Prefer header's value; Graph honours it per request
INLINE_ATTACHMENT_LIMIT = 3 * 1024 * 1024  # larger files need an upload session
UPLOAD_CHUNK_UNIT = 320 * 1024  # every chunk but the last is a multiple of this
UPLOAD_CHUNK_LIMIT = 4 * 1024 * 1024
UPLOAD_CHUNK = 12 * UPLOAD_CHUNK_UNIT  # 3.75 MiB: the largest multiple under 4 MiB
UPLOAD_STALLS = 3  # consecutive failed chunks (no progress in between) before an upload gives up
MESSAGE_STATE = "id,isDraft,internetMessageId,parentFolderId,sentDateTime"
NDR_FIELDS = "id,receivedDateTime,subject,from,internetMessageHeaders,body"

# bytes of an attachment: `read(start, length)` (a blob's ranged download, say), or an async stream of pieces
ByteSource = Callable[[int, int], Awaitable[bytes]] | AsyncIterable[bytes]


@dataclass(frozen=True)
class Draft:
    """A draft as Graph created it: its immutable id, and the internetMessageId when Graph gave one."""

    id: str
    internet_message_id: str | None


@dataclass(frozen=True)
class MessageState:
    """Where a message stands: a draft still, or sent (not a draft any more, usually in Sent Items)."""

    id: str
    is_draft: bool
    internet_message_id: str | None
    parent_folder_id: str | None
    sent_at: str | None  # sentDateTime as Graph gives it


@dataclass(frozen=True)
class MessageGone:
    """Graph answered 404 for the id: deleted, moved out of the mailbox, or not there yet: right after a send
    the Sent Items copy may lag (Microsoft warns of it), so gone then does not mean "never sent"."""

    id: str


@dataclass(frozen=True)
class UploadSession:
    """An attachment upload session: the pre-authenticated URL and the first byte Graph expects."""

    url: str
    expires: str | None
    next_offset: int


@dataclass(frozen=True)
class Bounce:
    """A non-delivery report in the sending mailbox's Inbox, tied to the mail it reports on."""

    ndr_id: str
    received_at: str | None
    internet_message_id: str | None  # the bounced mail's, to match it with what was sent
    dsn_code: str | None  # the enhanced status code, e.g. "5.1.10"
    diagnostic: str | None  # the SMTP reply Exchange quotes, e.g. "550 5.1.10 RESOLVER.ADR.RecipientNotFound; ..."
    recipients: list[str] = field(default_factory=list)


class MailboxSlots:
    """How many requests to one mailbox this process may have in flight; the number can change at run time
    (when other instances start or stop sending, they split Outlook's 4 between them)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._busy = 0
        self._freed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self._busy < self.capacity)
            self._busy += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._freed:
            self._busy -= 1
            self._freed.notify_all()

    async def resize(self, capacity: int) -> None:
        async with self._freed:
            self.capacity = capacity
            self._freed.notify_all()


class GraphClient:
    """Graph mail operations for the app: send, list messages, list folders, update, batch updates."""

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self._settings = settings
        self._credential = credential or graph_credential(settings)
        self._service: GraphServiceClient | None = None
        self._http: Any = None
        self._uploads: Any = None  # the plain HTTP client for upload URLs
        self._slots: dict[str, MailboxSlots] = {}
        self._share = MAILBOX_CONCURRENCY

    # -- plumbing -------------------------------------------------------------------------------------
    def _client(self) -> GraphServiceClient:
        if self._service is None:
            self._service, self._http = _build_service(self._settings, self._credential)
        return self._service

    def _slot(self, mailbox: str) -> MailboxSlots:
        return self._slots.setdefault(mailbox.lower(), MailboxSlots(self._share))

    async def share_mailboxes(self, position: int, instances: int) -> None:
        """Take this instance's share of Outlook's per-mailbox limit: with n instances sending, each gets
        4 // n slots per mailbox (the first 4 % n one more), at least one."""
        instances = max(1, instances)
        share = MAILBOX_CONCURRENCY // instances + (1 if position < MAILBOX_CONCURRENCY % instances else 0)
        self._share = max(1, share)
        for slots in self._slots.values():
            if slots.capacity != self._share:
                await slots.resize(self._share)

    async def _send(self, mailbox: str, info: RequestInformation, *, expect_body: bool = True) -> Any:
        from httpx import HTTPError
        from kiota_abstractions.api_error import APIError
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        adapter = self._client().request_adapter
        async with self._slot(mailbox):
            try:
                if expect_body:
                    # kiota's abstract RequestAdapter annotates this as returning None; it returns the bytes
                    raw = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})  # type: ignore[func-returns-value]
                else:
                    await adapter.send_no_response_content_async(info, {"XXX": ODataError})
                    raw = None
            except APIError as error:
                raise _graph_error(error) from None
            except HTTPError as error:
                raise GraphError(0, "network_error", f"{type(error).__name__}: no answer from Graph") from None
        return json.loads(raw) if raw else None

    def _request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        immutable: bool = False,
        replayable: bool = True,
        page_size: int | None = None,
    ) -> RequestInformation:
        """A request; `immutable` asks for immutable ids, `page_size` for pages of that many items (`Prefer:
        odata.maxpagesize`), `replayable=False` retries it in process after a 429 only (a lost answer to it must
        be looked into, not resent)."""
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation
        from kiota_http.middleware.options import RetryHandlerOption

        info = RequestInformation(Method[method])
        info.url = url
        info.headers.try_add("Accept", "application/json")
        preferences = ([IMMUTABLE_IDS] if immutable else []) + ([f"odata.maxpagesize={page_size}"] if page_size else [])
        if preferences:
            info.headers.try_add("Prefer", ", ".join(preferences))
        if body is not None:
            info.set_stream_content(json.dumps(body).encode(), "application/json")
        if not replayable:
            option = RetryHandlerOption()
            setattr(option, _THROTTLED_ONLY, True)  # read by BoundedRetryHandler.should_retry
            info.add_request_options([option])
        return info

    def _url(self, path: str) -> str:
        from urllib.parse import quote

        return self._settings.graph_base_url + quote(path, safe="/@$=&?,'():")

    # -- operations -----------------------------------------------------------------------------------
    async def send_mail(self, mailbox: str, body: dict[str, Any]) -> None:
        """POST /users/{mailbox}/sendMail with a rendered sendMail body; 202 means accepted. Retried in process
        after a 429 only: after a 5xx or no answer Graph may have sent it, and the caller decides (and marks)."""
        info = self._request("POST", self._url(f"/users/{mailbox}/sendMail"), body, replayable=False)
        await self._send(mailbox, info, expect_body=False)

    async def list_messages(
        self,
        mailbox: str,
        *,
        folder_id: str | None = None,
        select: list[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int = 100,
        immutable: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching message (the first `limit` when given, asking for no page beyond them), following
        @odata.nextLink as Graph gives it; immutable ids if asked."""
        from urllib.parse import urlencode

        path = f"/users/{mailbox}" + (f"/mailFolders/{folder_id}" if folder_id else "") + "/messages"
        query = {"$top": str(top)}
        if select:
            query["$select"] = ",".join(select)
        if filter:
            query["$filter"] = filter
        if orderby:
            query["$orderby"] = orderby
        url: str | None = self._url(path) + "?" + urlencode(query, safe="$,'():/")
        given = 0
        while url:
            page = await self._send(mailbox, self._request("GET", url, immutable=immutable))
            for message in page.get("value", []):
                if limit is not None and given >= limit:
                    return
                given += 1
                yield message
            url = page.get("@odata.nextLink") if limit is None or given < limit else None

    async def list_folders(self, mailbox: str, *, include_hidden: bool = False) -> list[dict[str, Any]]:
        """Every folder of a mailbox, children after their parent, each with a `path` like `Inbox/Escalations`."""
        hidden = "&includeHiddenFolders=true" if include_hidden else ""
        folders: list[dict[str, Any]] = []
        pending: list[tuple[str, str]] = [(self._url(f"/users/{mailbox}/mailFolders?$top=100{hidden}"), "")]
        while pending:
            url, parent_path = pending.pop(0)
            next_url: str | None = url
            while next_url:
                page = await self._send(mailbox, self._request("GET", next_url))
                for folder in page.get("value", []):
                    folder["path"] = f"{parent_path}/{folder['displayName']}" if parent_path else folder["displayName"]
                    folders.append(folder)
                    if folder.get("childFolderCount"):
                        child_url = self._url(
                            f"/users/{mailbox}/mailFolders/{folder['id']}/childFolders?$top=100{hidden}"
                        )
                        pending.append((child_url, folder["path"]))
                next_url = page.get("@odata.nextLink")
        return folders

    async def folder_changes(
        self, mailbox: str, link: str | None, *, page_size: int = DELTA_PAGE
    ) -> tuple[list[dict[str, Any]], str]:
        """One delta round over the mailbox's folder tree (every folder, flat, with `parentFolderId`): from the
        start when `link` is None, else the changes since the round that gave `link` (`@removed` for a folder
        gone). The items, and the delta link of the next round. One request per page."""
        url = link or self._url(f"/users/{mailbox}/mailFolders/delta?$select={FOLDER_FIELDS}")
        return await self._delta_round(mailbox, url, page_size)

    async def message_changes(
        self,
        mailbox: str,
        folder_id: str,
        link: str | None,
        *,
        select: list[str],
        received_since: datetime | None = None,
        page_size: int = DELTA_PAGE,
    ) -> tuple[list[dict[str, Any]], str]:
        """One delta round over a folder's messages, with immutable ids: from the start (messages received at or
        after `received_since`, when given) when `link` is None, else what was created, changed or removed
        (`@removed`) since the round that gave `link`. The items, and the next round's delta link. One request
        per page of `page_size`."""
        if link is None:
            from urllib.parse import urlencode

            query = {"$select": ",".join(select)}
            if received_since is not None:
                query["$filter"] = f"receivedDateTime ge {received_since.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
            path = f"/users/{mailbox}/mailFolders/{folder_id}/messages/delta"
            link = self._url(path) + "?" + urlencode(query, safe="$,'():/")
        return await self._delta_round(mailbox, link, page_size, immutable=True)

    async def _delta_round(
        self, mailbox: str, url: str, page_size: int, *, immutable: bool = False
    ) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        while True:
            page = await self._send(mailbox, self._request("GET", url, immutable=immutable, page_size=page_size))
            items += page.get("value", [])
            if page.get("@odata.nextLink"):
                url = page["@odata.nextLink"]
                continue
            return items, str(page["@odata.deltaLink"])

    async def batch_update(self, mailbox: str, updates: dict[str, dict[str, Any]]) -> dict[str, GraphError | None]:
        """PATCH up to 20 messages in one JSON batch; per message id, None on success or the GraphError."""
        if len(updates) > BATCH_LIMIT:
            raise ValueError(f"a batch holds at most {BATCH_LIMIT} requests")
        ids = list(updates)
        body = {
            "requests": [
                {
                    "id": str(n),
                    "method": "PATCH",
                    "url": f"/users/{mailbox}/messages/{message_id}",
                    "headers": {"Content-Type": "application/json"},
                    "body": updates[message_id],
                }
                for n, message_id in enumerate(ids)
            ]
        }
        answer = await self._send(mailbox, self._request("POST", self._url("/$batch"), body))
        outcome: dict[str, GraphError | None] = {}
        for response in answer.get("responses", []):
            message_id = ids[int(response["id"])]
            status = int(response.get("status", 0))
            if 200 <= status < 300:
                outcome[message_id] = None
            else:
                error = (response.get("body") or {}).get("error") or {}
                retry = (response.get("headers") or {}).get("Retry-After")
                outcome[message_id] = GraphError(
                    status, error.get("code", "unknown"), error.get("message", ""), _seconds(retry)
                )
        return outcome

    # -- the delivery engine's steps ------------------------------------------------------------------
    async def create_draft(self, mailbox: str, message: dict[str, Any], delivery_id: str) -> Draft:
        """POST /users/{mailbox}/messages: a draft of `message` (Graph's message JSON, inline attachments of
        at most 3 MB each included) marked with `delivery_id`, answered with immutable ids. Not resent after a
        lost answer: look for the draft with `find_marked` first. One request."""
        draft = dict(message)
        for index, attachment in enumerate(draft.get("attachments") or []):
            size = _decoded_size(str(attachment.get("contentBytes") or ""))
            if size > INLINE_ATTACHMENT_LIMIT:
                raise ValueError(
                    f"attachments[{index}] has {size} bytes; over {INLINE_ATTACHMENT_LIMIT} it needs an upload session"
                )
        properties = [
            p for p in draft.get("singleValueExtendedProperties") or [] if p.get("id") != DELIVERY_ID_PROPERTY
        ]
        draft["singleValueExtendedProperties"] = [*properties, {"id": DELIVERY_ID_PROPERTY, "value": delivery_id}]
        url = self._url(f"/users/{mailbox}/messages")
        info = self._request("POST", url, draft, immutable=True, replayable=False)
        answer = await self._send(mailbox, info)
        return Draft(str(answer["id"]), answer.get("internetMessageId"))

    async def find_marked(self, mailbox: str, delivery_id: str) -> list[MessageState]:
        """Every message of the mailbox (any folder) marked with `delivery_id`, with immutable ids: none when
        the draft was never created, one normally. One request."""
        value = delivery_id.replace("'", "''")
        marker = f"singleValueExtendedProperties/Any(ep: ep/id eq '{DELIVERY_ID_PROPERTY}' and ep/value eq '{value}')"
        found = self.list_messages(mailbox, select=MESSAGE_STATE.split(","), filter=marker, top=10, immutable=True)
        return [_message_state(m) async for m in found]

    async def get_message(self, mailbox: str, message_id: str) -> MessageState | MessageGone:
        """Where a message stands, by its immutable id; `MessageGone` for Graph's 404. One request."""
        url = self._url(f"/users/{mailbox}/messages/{message_id}?$select={MESSAGE_STATE}")
        try:
            answer = await self._send(mailbox, self._request("GET", url, immutable=True))
        except GraphError as error:
            if error.status == 404:
                return MessageGone(message_id)
            raise
        return _message_state(answer)

    async def create_upload_session(
        self,
        mailbox: str,
        message_id: str,
        name: str,
        size: int,
        *,
        content_type: str | None = None,
        is_inline: bool = False,
        content_id: str | None = None,
    ) -> UploadSession:
        """POST .../messages/{id}/attachments/createUploadSession for a file of `size` bytes (3-150 MB); a
        second session after a lost answer only leaves an unused one to expire. One request."""
        item: dict[str, Any] = {"attachmentType": "file", "name": name, "size": size, "isInline": is_inline}
        if content_type:
            item["contentType"] = content_type
        if content_id:
            item["contentId"] = content_id
        url = self._url(f"/users/{mailbox}/messages/{message_id}/attachments/createUploadSession")
        answer = await self._send(mailbox, self._request("POST", url, {"AttachmentItem": item}, immutable=True))
        return UploadSession(
            str(answer["uploadUrl"]),
            answer.get("expirationDateTime"),
            _next_offset(answer.get("nextExpectedRanges")) or 0,
        )

    async def upload_position(self, mailbox: str, upload_url: str) -> int | None:
        """The byte an upload session expects next (GET on its URL); None when the session is gone: finished,
        expired or cancelled. One request."""
        try:
            answer = await self._upload_call(mailbox, "GET", upload_url)
        except GraphError as error:
            if error.status == 404:
                return None
            raise
        return _next_offset(answer.json().get("nextExpectedRanges"))

    async def upload_attachment(
        self,
        mailbox: str,
        upload_url: str,
        size: int,
        source: ByteSource,
        *,
        start: int | None = None,
        chunk_size: int = UPLOAD_CHUNK,
    ) -> str | None:
        """Upload `size` bytes from `source` to an upload session in chunks, from `start` (asked of the session
        when not given, as after a crash); an interrupted or refused chunk is resumed from where the session
        stands. Returns the attachment's URL (Graph's `Location`), or None when the last chunk's answer was lost
        and the session is gone, i.e. finished. Only one chunk is held in memory. A 429 comes back as a
        GraphError with its Retry-After (the 150 MB per 5 minutes limit), as does a session gone before the
        end. Requests: one per chunk, plus one for the position when `start` is not given or after each
        interruption."""
        if chunk_size <= 0 or chunk_size % UPLOAD_CHUNK_UNIT or chunk_size > UPLOAD_CHUNK_LIMIT:
            raise ValueError(
                f"chunk_size must be a multiple of 320 KiB ({UPLOAD_CHUNK_UNIT} bytes), at most 4 MiB, not {chunk_size}"
            )
        read = source if callable(source) else _StreamReader(source)
        offset = await self.upload_position(mailbox, upload_url) if start is None else start
        stalls, last_sent = 0, False
        while True:
            if offset is None:
                if last_sent:
                    return None
                raise GraphError(404, "ErrorItemNotFound", "The upload session is gone before the file was complete.")
            length = min(chunk_size, size - offset)
            data = await read(offset, length)
            if len(data) != length:
                raise ValueError(f"the source gave {len(data)} bytes at offset {offset}; {length} were expected")
            last_sent = last_sent or offset + length == size
            content_range = f"bytes {offset}-{offset + length - 1}/{size}"
            try:
                answer = await self._upload_call(
                    mailbox,
                    "PUT",
                    upload_url,
                    data,
                    {"Content-Range": content_range, "Content-Type": "application/octet-stream"},
                )
            except GraphError as error:
                stalls += 1
                if error.status == 429 or not (error.transient or error.status == 416) or stalls > UPLOAD_STALLS:
                    raise
                offset = await self.upload_position(mailbox, upload_url)
                continue
            stalls = 0
            if answer.status_code == 201:
                location = answer.headers.get("Location")
                return str(location) if location else None
            offset = _next_offset(answer.json().get("nextExpectedRanges"))

    async def send_draft(self, mailbox: str, message_id: str) -> None:
        """POST /users/{mailbox}/messages/{id}/send (202): the draft goes out and moves to Sent Items. Not resent
        after a lost answer: `get_message` tells whether it is still a draft. One request."""
        url = self._url(f"/users/{mailbox}/messages/{message_id}/send")
        await self._send(mailbox, self._request("POST", url, immutable=True, replayable=False), expect_body=False)

    async def add_attachment(self, mailbox: str, message_id: str, attachment: dict[str, Any]) -> None:
        """POST .../messages/{id}/attachments: one file attachment of at most 3 MB (Graph's fileAttachment JSON)
        added to a draft. Not resent after a lost answer: `list_attachments` tells whether it is there. One
        request."""
        url = self._url(f"/users/{mailbox}/messages/{message_id}/attachments")
        await self._send(mailbox, self._request("POST", url, attachment, immutable=True, replayable=False))

    async def list_attachments(self, mailbox: str, message_id: str) -> list[str]:
        """The names of a message's attachments, one entry per attachment. One request."""
        url = self._url(f"/users/{mailbox}/messages/{message_id}/attachments?$select=id,name")
        answer = await self._send(mailbox, self._request("GET", url, immutable=True))
        return [str(a.get("name", "")) for a in answer.get("value", [])]

    async def delete_message(self, mailbox: str, message_id: str) -> None:
        """DELETE a message (a draft the app gave up on); gone already is fine. One request."""
        url = self._url(f"/users/{mailbox}/messages/{message_id}")
        try:
            await self._send(mailbox, self._request("DELETE", url, immutable=True), expect_body=False)
        except GraphError as error:
            if error.status != 404:
                raise

    async def list_bounces(self, mailbox: str, *, since: datetime | None = None) -> list[Bounce]:
        """The non-delivery reports Exchange wrote to the mailbox's Inbox (received at or after `since`), each with
        the bounced mail's internetMessageId, the DSN code and the recipients that bounced; anything else that
        looks like one (sent by a mailbox, or from outside) is left out. One request per 50 Inbox messages."""
        received = f"receivedDateTime ge {since.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if since else None
        inbox = self.list_messages(
            mailbox, folder_id="inbox", select=NDR_FIELDS.split(","), filter=received, top=50, immutable=True
        )
        return [_bounce(message, mailbox) async for message in inbox if _is_ndr(message, mailbox)]

    async def _upload_call(
        self, mailbox: str, method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """One request to a pre-authenticated upload URL: a plain client, so no Authorization header goes."""
        from httpx import HTTPError

        if self._uploads is None:
            from kiota_http.kiota_client_factory import KiotaClientFactory

            self._uploads = KiotaClientFactory.get_default_client()
        async with self._slot(mailbox):
            try:
                answer = await self._uploads.request(method, url, content=data, headers=headers)
            except HTTPError as error:
                raise GraphError(0, "network_error", f"{type(error).__name__}: no answer from the upload URL") from None
        if answer.status_code >= 400:
            try:
                problem = answer.json().get("error") or {}
            except ValueError:
                problem = {}
            raise GraphError(
                answer.status_code,
                str(problem.get("code") or "unknown"),
                str(problem.get("message") or answer.reason_phrase),
                _seconds(answer.headers.get("Retry-After")),
            )
        return answer

    async def read_credential(self) -> None:
        """Read the Graph credential from Key Vault (the health check); the value is dropped at once, and the
        credential in use is left alone (replacing it would close it under a send that is using it)."""
        read = getattr(self._credential, "read_secret", None)
        if read is not None:
            await read()

    async def token_check(self) -> None:
        """Get a Graph token (the health check): proves the credential chain end to end."""
        await self._credential.get_token(graph_scope(self._settings))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._uploads is not None:
            await self._uploads.aclose()
        await self._credential.close()


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _decoded_size(base64_text: str) -> int:
    """Bytes a base64 text decodes to, without decoding it."""
    text = base64_text.strip()
    return len(text) * 3 // 4 - text[-2:].count("=")


def _next_offset(ranges: Any) -> int | None:
    """The start of Outlook's `nextExpectedRanges` (a single "{start}", or OneDrive's "{start}-")."""
    if not ranges:
        return None
    return int(str(ranges[0]).split("-", 1)[0])


def _message_state(message: dict[str, Any]) -> MessageState:
    return MessageState(
        id=str(message["id"]),
        is_draft=bool(message.get("isDraft")),
        internet_message_id=message.get("internetMessageId"),
        parent_folder_id=message.get("parentFolderId"),
        sent_at=message.get("sentDateTime"),
    )


class _StreamReader:
    """`read(start, length)` over an async stream of pieces: forward only, keeping the last chunk read so a
    chunk cut off mid-way can be sent again."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._pieces = aiter(stream)
        self._kept = bytearray()
        self._kept_start = 0  # stream offset of self._kept[0]

    async def __call__(self, start: int, length: int) -> bytes:
        if start < self._kept_start:
            raise ValueError(f"a stream cannot go back to byte {start}; it is at {self._kept_start}")
        end = start + length
        while self._kept_start + len(self._kept) < end:
            self._drop_before(start)
            try:
                self._kept += await anext(self._pieces)
            except StopAsyncIteration:
                break
        self._drop_before(start)
        return bytes(self._kept[: end - start])

    def _drop_before(self, start: int) -> None:
        cut = min(start - self._kept_start, len(self._kept))
        if cut > 0:
            del self._kept[:cut]
            self._kept_start += cut


# Non-delivery reports as Exchange Online writes them: from its system mailbox ("Microsoft Outlook"
# <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@...>, often the tenant's onmicrosoft.com domain), a
# `multipart/report; report-type=delivery-status` marked `X-MS-Exchange-Message-Is-Ndr`, made inside the
# organisation (`X-MS-Exchange-Organization-AuthAs: Internal`: Exchange's header firewall removes
# X-MS-Exchange-Organization-* from mail arriving from outside and stamps its own, so no outsider can set it;
# a mailbox inside cannot send as the system mailbox). The text quotes the SMTP reply per recipient ("Remote
# Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; ...'") and, after it, the bounced mail's original
# headers (its Message-ID among them).
NDR_HEADER = "x-ms-exchange-message-is-ndr"
NDR_SENDER_LOCAL = "microsoftexchange329e71ec88ae4615bbc36ab6ce41109e"
AUTH_AS_HEADER = "x-ms-exchange-organization-authas"
_REPORT = re.compile(r"^\s*multipart/report\s*;(?:.*;)?\s*report-type\s*=\s*\"?delivery-status\"?\s*(?:;|$)", re.I)
_DSN = re.compile(r"(?<![\d.])([245]\d\d)[ -]#?([245]\.\d{1,3}\.\d{1,3})(?![\d.])([^'<>#\n]*)")
# the original's Message-ID as a header line of its own in the quoted headers: a subject (which its sender
# writes) quoted on the line of its own header cannot start one
_MESSAGE_ID = re.compile(r"^[ \t]*Message-ID:[ \t]*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
# where Exchange starts quoting the original's headers: what follows is the sender's text, not Exchange's
_ORIGINAL_HEADERS = re.compile(r"Original message headers:", re.IGNORECASE)
_ADDRESS = re.compile(r"[\w.!#$%&*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_TAG = re.compile(r"<[^>]*>")


def _headers(message: dict[str, Any]) -> dict[str, str]:
    return {
        str(h.get("name", "")).lower(): str(h.get("value", "")) for h in message.get("internetMessageHeaders") or []
    }


def _is_ndr(message: dict[str, Any], mailbox: str) -> bool:
    """Whether Exchange itself wrote this report: its system sender (in the mailbox's domain or an
    onmicrosoft.com one), its report structure and marks, and made inside the organisation."""
    headers = _headers(message)
    sender = str(((message.get("from") or {}).get("emailAddress") or {}).get("address") or "").lower()
    local, _, domain = sender.partition("@")
    return (
        local == NDR_SENDER_LOCAL
        and (domain == mailbox.rsplit("@", 1)[-1].lower() or domain.endswith(".onmicrosoft.com"))
        and NDR_HEADER in headers
        and bool(_REPORT.match(headers.get("content-type", "")))
        and headers.get(AUTH_AS_HEADER, "").strip().lower() == "internal"
    )


def _bounce(message: dict[str, Any], mailbox: str) -> Bounce:
    """What an NDR says: the code, the recipients named before the diagnostic ends, the original Message-ID."""
    body = message.get("body") or {}
    text = str(body.get("content") or "")
    if str(body.get("contentType", "")).lower() == "html":
        text = _TAG.sub(" ", text)  # before unescaping, so a quoted <message-id> survives as text
    text = html.unescape(text)
    quoted = _ORIGINAL_HEADERS.search(text)
    report, headers = (text[: quoted.start()], text[quoted.end() :]) if quoted else (text, "")
    codes = list(_DSN.finditer(report))  # Exchange's own part: a code quoted in a subject is not one
    first = codes[0] if codes else None
    named = report[: codes[-1].end()] if codes else report
    reporter = str(((message.get("from") or {}).get("emailAddress") or {}).get("address") or "").lower()
    recipients: dict[str, str] = {}
    for address in _ADDRESS.findall(named):
        if address.lower() not in {mailbox.lower(), reporter}:
            recipients.setdefault(address.lower(), address)
    found_id = _MESSAGE_ID.search(headers) if codes else None
    original = found_id.group(1) if found_id else None
    replied_to = _headers(message).get("in-reply-to", "").strip()
    if replied_to and replied_to != original:  # the report's two mentions of the original disagree
        original = None
    return Bounce(
        ndr_id=str(message["id"]),
        received_at=message.get("receivedDateTime"),
        internet_message_id=original,
        dsn_code=first.group(2) if first else None,
        diagnostic=" ".join(first.group(0).split()) if first else None,
        recipients=list(recipients.values()),
    )


def _graph_error(error: Any) -> GraphError:
    status = int(getattr(error, "response_status_code", 0) or 0)
    inner = getattr(error, "error", None)
    code = getattr(inner, "code", None) or "unknown"
    message = getattr(inner, "message", None) or str(error)
    headers = getattr(error, "response_headers", None) or {}
    retry_after = next((v for k, v in dict(headers).items() if k.lower() == "retry-after"), None)
    if isinstance(retry_after, list):
        retry_after = retry_after[0] if retry_after else None
    return GraphError(status, str(code), str(message), _seconds(retry_after))


def _build_service(settings: Settings, credential: Any) -> tuple[GraphServiceClient, Any]:
    """GraphServiceClient on the configured Graph root, with in-process retries bounded; and its httpx client."""
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RetryHandler
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory
    from msgraph_core.middleware import GraphTelemetryHandler

    class BoundedRetryHandler(RetryHandler):
        """Retries in process only for short waits; longer ones go back to the queue as a delay."""

        def get_delay_time(self, retry_count: int, response: Any = None, delay: float = 3) -> float:
            wait = float(super().get_delay_time(retry_count, response, delay))
            return wait if wait <= MAX_IN_PROCESS_WAIT else float(RetryHandlerOption.MAX_DELAY)

        def should_retry(self, request: Any, options: Any, response: Any) -> bool:
            if getattr(options, _THROTTLED_ONLY, False) and response.status_code != 429:
                return False  # a 503/504 may come after Graph did the work: resending could duplicate it
            return bool(super().should_retry(request, options, response))

    middleware = [
        BoundedRetryHandler() if isinstance(m, RetryHandler) else m
        for m in KiotaClientFactory.get_default_middleware(None)
    ]
    middleware.append(GraphTelemetryHandler())
    http_client = GraphClientFactory.create_with_custom_middleware(
        middleware, client=KiotaClientFactory.get_default_client()
    )
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[graph_scope(settings)], allowed_hosts=[settings.graph_host]
    )
    adapter = GraphRequestAdapter(auth, client=http_client)
    adapter.base_url = settings.graph_base_url
    return GraphServiceClient(request_adapter=adapter), http_client


_clients: LoopCache[GraphClient] = LoopCache()


def graph_client(settings: Settings) -> GraphClient:
    """The cached client of this process's event loop (the Functions worker runs one loop)."""
    return _clients.get(settings, lambda: GraphClient(settings))
