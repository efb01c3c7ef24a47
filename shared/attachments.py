"""Attachments producers hand over besides inline base64: file parts of a `multipart/form-data` mail, stored
as blobs before the mail is submitted (`MailForm`), and blob references, whose sizes are read from Storage
before a mail is checked (`resolve_attachments`).

A mail form is a `mail` part first (the mail's JSON, the same schema as the JSON body; its own attachments may be
inline base64) and then any number of file parts named `attachment`, each of which becomes an attachment: the
part's filename its name, the part's Content-Type its contentType. File parts are plain attachments (for an
inline image with a contentId, put it in the JSON part). Everything is checked as it is read, and nothing is
stored while the mail part is wrong; `MailForm.stored` lists what this request created, for the caller to
delete when the submission is refused. Part headers are capped (lines and bytes per part, bytes per form), and
the body is parsed in pieces with the event loop free between them, so no form holds up other requests.

A mail may name only blobs it may read: the files the app stored for it (`forms/<its id>/`), and blobs under the
folders its way in is given (`MAIL_QUEUE_BLOB_PREFIXES` for `mail-outbox` messages, `MAIL_API_BLOB_PREFIXES`
for the HTTP API). Anything else is refused by its name alone, before Storage is asked, so a refusal never tells
whether such a blob exists.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    BLANK_LINE_RE,
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    Preamble,
    State,
)

from .errors import (
    AppError,
    AttachmentChanged,
    Conflict,
    Detail,
    InvalidMessage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .mail import (
    MAX_ATTACHMENTS,
    MAX_BLOB_ATTACHMENT_BYTES,
    MAX_JSON_BYTES,
    Attachment,
    MailRequest,
    encoded_message_bytes,
    message_bytes,
    message_too_large,
    mime_attachment_bytes,
    parse_mail,
)
from .store.attachments import FORMS_FOLDER, FileTaken, owned_by
from .text import CONTROL, request_json

if TYPE_CHECKING:
    from .store import Store

MAIL_PART = "mail"
FILE_PART = "attachment"
FORM_OVERHEAD_BYTES = MAX_JSON_BYTES  # a form may be this much larger than the mail it carries
_CHUNK_BYTES = 256 * 1024  # the body is handed to the parser in pieces of this size, the loop free between them
MAX_PART_HEADER_BYTES = 8 * 1024  # one part's header lines (a browser's or curl's are a few hundred bytes)
MAX_PART_HEADER_LINES = 16
MAX_FORM_HEADER_BYTES = 64 * 1024  # the header lines of all parts together
# a media type with optional parameters, as RFC 9110 spells it (tokens; quoted parameter values)
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # noqa: S105 (an HTTP token, not a password)
_MEDIA_TYPE = re.compile(rf'^{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*\Z')


def is_form(content_type: str) -> bool:
    """Whether a request's Content-Type is `multipart/form-data`."""
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


class MailForm:
    """A `multipart/form-data` mail, read in one pass over the body: `mail()` reads the first part, then
    `store_files()` stores each file part as a blob while it is read and answers the mail with them."""

    def __init__(self, body: bytes, content_type: str, max_message_bytes: int) -> None:
        limit = max_message_bytes + FORM_OVERHEAD_BYTES
        if len(body) > limit:
            raise PayloadTooLarge(
                f"The form has {len(body)} bytes; at most {limit} are accepted (a mail of MAIL_MAX_MESSAGE_BYTES, "
                f"{max_message_bytes}, plus {FORM_OVERHEAD_BYTES} for the mail part and the form).",
                [Detail("body", f"{len(body)} bytes; at most {limit}")],
            )
        _, options = parse_options_header(content_type)
        boundary = options.get("boundary", "")
        if not 1 <= len(boundary) <= 70 or not boundary.isascii():  # RFC 2046: 1-70 characters
            raise InvalidRequest(
                "A multipart/form-data body needs a boundary parameter of 1-70 ASCII characters in its Content-Type.",
                [Detail("Content-Type", "no usable boundary")],
            )
        self._body = body
        self._max_message_bytes = max_message_bytes
        self._events = self._read(MultipartDecoder(boundary.encode()))
        self._header_bytes = 0
        self.stored: list[str] = []

    async def mail(self) -> MailRequest:
        """The mail of the first part, which must be the `mail` part (JSON, at most 5 MiB)."""
        part = await self._next_part()
        if part is None:
            raise InvalidRequest("The form has no parts; the first must be `mail`.", [Detail(MAIL_PART, "missing")])
        if part.name != MAIL_PART:
            raise InvalidRequest(
                f"The form's first part must be `{MAIL_PART}` (the mail's JSON), not {part.name!r}.",
                [Detail(MAIL_PART, "must be the first part")],
            )
        media_type = part.headers.get("content-type")
        if media_type is not None:
            kind = media_type.split(";")[0].strip().lower()
            if kind != "application/json" and not kind.endswith("+json"):
                raise UnsupportedMediaType(
                    f"The `{MAIL_PART}` part must be application/json, not {kind or 'empty'} "
                    f"(with curl: -F '{MAIL_PART}=<mail.json;type=application/json')."
                )
        content = bytearray()
        async for data in self._data():
            content += data
            if len(content) > MAX_JSON_BYTES:
                raise PayloadTooLarge(
                    f"The `{MAIL_PART}` part has more than {MAX_JSON_BYTES} bytes; send files as file parts.",
                    [Detail(MAIL_PART, f"more than {MAX_JSON_BYTES} bytes")],
                )
        return parse_mail(request_json(bytes(content), MAIL_PART))

    async def store_files(self, store: Store, mail: MailRequest) -> MailRequest:
        """Store each remaining part, which must be a file part named `attachment`, as a blob of the mail (its
        id set), and answer the mail with those attachments after its own. The reference of each stored blob
        is in `stored` as soon as it exists, so a caller can delete them all whatever fails later."""
        assert mail.id is not None
        attachments = list(mail.attachments)
        names = {a.name for a in attachments}
        # the mail so far (its body and the mail part's attachments): its own bytes, and as Exchange measures it
        size, encoded = message_bytes(mail), encoded_message_bytes(mail)
        index = 0
        while (part := await self._next_part()) is not None:
            where = f"{FILE_PART}[{index}]"
            self._check_part(part, where, len(attachments))
            assert isinstance(part, File)
            name, content_type = _file_name(part, where), _content_type(part, where)
            if name in names:
                raise InvalidRequest(
                    f"Two attachments are named {name!r}; each needs a name of its own.",
                    [Detail(where, "duplicate name")],
                )
            names.add(name)
            counted = _Counted(self._data(), partial(_fits, self._max_message_bytes - encoded, name, content_type))
            try:
                stored = await store.attachments.put(mail.id, index, name, counted.chunks(), content_type=content_type)
            except _OverLimit:
                length = counted.size + await _length(self._data())
                await self._too_large(size + length, encoded + mime_attachment_bytes(length, name, content_type))
            except FileTaken:
                raise Conflict(f"The id {mail.id!r} was already used for a different mail.") from None
            if stored.created:
                self.stored.append(stored.blob)
            if stored.size == 0:
                raise InvalidRequest(f"The file {name!r} is empty.", [Detail(where, "empty file")])
            size += stored.size
            encoded += mime_attachment_bytes(stored.size, name, content_type)
            attachments.append(
                Attachment.model_validate(
                    {
                        "name": name,
                        "contentType": content_type,
                        "blob": stored.blob,
                        "size": stored.size,
                        "sha256": stored.sha256,
                    }
                )
            )
            index += 1
        return mail.model_copy(update={"attachments": attachments})

    def _check_part(self, part: Field | File, where: str, attachments: int) -> None:
        """A part after the mail part must be a file named `attachment`, and one more attachment must fit."""
        if part.name == MAIL_PART:
            raise InvalidRequest(f"The form has a second `{MAIL_PART}` part.", [Detail(MAIL_PART, "given twice")])
        if part.name == FILE_PART and not isinstance(part, File):
            raise InvalidRequest(
                f"`{FILE_PART}` parts must be files (with a filename in Content-Disposition).",
                [Detail(where, "not a file")],
            )
        if part.name != FILE_PART:
            raise InvalidRequest(
                f"Unknown form part {part.name!r}: a mail form has a `{MAIL_PART}` part, then file parts named "
                f"`{FILE_PART}`.",
                [Detail(str(part.name), f"unknown part; known: {MAIL_PART}, {FILE_PART}")],
            )
        if attachments >= MAX_ATTACHMENTS:
            raise InvalidRequest(
                f"A mail has at most {MAX_ATTACHMENTS} attachments (the mail part's and the file parts together).",
                [Detail(where, f"more than {MAX_ATTACHMENTS} attachments")],
            )

    async def _too_large(self, size: int, encoded: int) -> NoReturn:
        """413 with the mail's sizes: what was read so far, and the rest of the form counted (not stored)."""
        while (part := await self._next_part()) is not None:
            length = await _length(self._data())
            kind = part.headers.get("content-type") or "application/octet-stream"
            size += length
            encoded += mime_attachment_bytes(length, getattr(part, "filename", None) or "", kind)
        raise message_too_large(size, encoded, self._max_message_bytes)

    async def _read(self, decoder: MultipartDecoder) -> AsyncIterator[Field | File | Data]:
        """The parser's part and data events, fed the body a piece at a time (no copy of the whole), the event loop
        free between pieces; part headers are held to their caps before the parser reads them."""
        view, position = memoryview(self._body), 0
        try:
            while True:
                headers = self._header_room(decoder) if decoder.state == State.PART else 0
                event = decoder.next_event()
                if isinstance(event, NeedData):
                    chunk = bytes(view[position : position + _CHUNK_BYTES]) if position < len(view) else None
                    position += _CHUNK_BYTES
                    decoder.receive_data(chunk)
                    await asyncio.sleep(0)  # other requests' turn
                elif isinstance(event, Epilogue):
                    return
                elif not isinstance(event, Preamble):
                    if isinstance(event, (Field, File)):
                        self._header_bytes += headers
                        if len(event.headers) > MAX_PART_HEADER_LINES:
                            self._headers_too_large(f"more than {MAX_PART_HEADER_LINES} header lines in a part")
                    yield event  # type: ignore[misc]  # the decoder's events are Field, File or Data here
                if decoder.state == State.EPILOGUE:  # whatever follows the last part is not read
                    return
        except ValueError as error:  # a part without Content-Disposition, a body that ends mid-part ...
            raise InvalidRequest(
                f"The multipart body is malformed: {error}"[:300], [Detail("body", "not multipart/form-data")]
            ) from None

    def _header_room(self, decoder: MultipartDecoder) -> int:
        """The bytes of the part header waiting in the parser's buffer, which must end within
        MAX_PART_HEADER_BYTES (and the form's within MAX_FORM_HEADER_BYTES): refused before the parser reads
        them. 0 while the header is not complete (it is looked at again with more data)."""
        room = min(MAX_PART_HEADER_BYTES, MAX_FORM_HEADER_BYTES - self._header_bytes)
        end = BLANK_LINE_RE.search(decoder.buffer, 0, room + 4)
        if end is None and len(decoder.buffer) > room + 4:
            self._headers_too_large(f"more than {room} bytes of part headers")
        return 0 if end is None else end.start()

    @staticmethod
    def _headers_too_large(what: str) -> NoReturn:
        raise PayloadTooLarge(
            f"The form has {what}: a part has at most {MAX_PART_HEADER_LINES} header lines of "
            f"{MAX_PART_HEADER_BYTES} bytes in all, and a form {MAX_FORM_HEADER_BYTES} bytes of part headers.",
            [Detail("body", what)],
            code="form_headers_too_large",
        )

    async def _next_part(self) -> Field | File | None:
        """The next part's header (None after the last part)."""
        event = await anext(self._events, None)
        if event is not None and not isinstance(event, (Field, File)):
            raise InvalidRequest("The multipart body is malformed.", [Detail("body", "data outside a part")])
        return event

    async def _data(self) -> AsyncIterator[bytes]:
        """The current part's content, a piece at a time."""
        async for event in self._events:
            if not isinstance(event, Data):
                raise InvalidRequest("The multipart body is malformed.", [Detail("body", "a part without data")])
            if event.data:
                yield event.data
            if not event.more_data:
                return


async def _length(data: AsyncIterator[bytes]) -> int:
    """The bytes left in a part, counted and dropped."""
    return sum([len(piece) async for piece in data])


class _OverLimit(Exception):
    """A file part took the mail past MAIL_MAX_MESSAGE_BYTES (its blob is never committed)."""


def _fits(room: int, name: str, content_type: str, size: int) -> bool:
    """Whether a file part of `size` bytes takes no more than `room` of the encoded message."""
    return mime_attachment_bytes(size, name, content_type) <= room


class _Counted:
    """A file part's content on its way into a blob: counted, and stopped once the mail would pass its limit
    (`_OverLimit`: the part's blob is then never committed). `fits` says whether the part's bytes so far still
    fit the mail's limit."""

    def __init__(self, data: AsyncIterator[bytes], fits: Callable[[int], bool]) -> None:
        self._data, self._fits = data, fits
        self.size = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._data:
            self.size += len(chunk)
            if not self._fits(self.size):
                raise _OverLimit
            yield chunk


def _file_name(part: File, where: str) -> str:
    name = part.filename.strip()
    if not name:
        raise InvalidRequest("A file part has no filename.", [Detail(where, "no filename")])
    if len(name) > 255 or CONTROL.search(name):
        raise InvalidRequest(
            f"The filename of {where} must be one line of at most 255 characters.",
            [Detail(where, "filename: one line of at most 255 characters")],
        )
    return name


def _content_type(part: File, where: str) -> str:
    given = part.headers.get("content-type")
    if given is None:
        return "application/octet-stream"
    if len(given) > 255 or not given.isascii() or not _MEDIA_TYPE.match(given.strip()):
        raise InvalidRequest(
            f"The Content-Type of {where} is not a media type: {given[:80]!r}.",
            [Detail(where, "Content-Type: not a media type such as application/pdf")],
        )
    encoding = part.headers.get("content-transfer-encoding", "binary").strip().lower()
    if encoding not in {"binary", "8bit", "7bit"}:  # RFC 7578 deprecates it; we would have to decode it
        raise InvalidRequest(
            f"{where} has Content-Transfer-Encoding {encoding!r}; send the file's bytes as they are.",
            [Detail(where, "Content-Transfer-Encoding: only binary")],
        )
    return given.strip()


async def resolve_attachments(
    store: Store,
    mail: MailRequest,
    prefixes: tuple[str, ...],
    *,
    error: type[AppError] = InvalidMessage,
    own_files: bool = True,
) -> MailRequest:
    """The mail with the `size` of each blob attachment read from Storage, for `check_mail`. A mail may name the
    blobs the app stored for it (their size and SHA-256 as taken then; not with `own_files` False, as at intake,
    where those come only from the form's file parts) and blobs under `prefixes` (read from Storage, whatever
    the mail said); any other name raises `error` before Storage is asked, the same for a blob that exists and
    one that does not. A blob that is missing, empty or larger than Graph takes (150 MB)
    raises `error` too: InvalidMessage (a queue message to poison) for the sender, InvalidRequest for the API;
    one of the app's that is not as it was stored raises `AttachmentChanged`. A mail without blobs costs no I/O."""
    blobs = [(i, a) for i, a in enumerate(mail.attachments) if a.blob is not None]
    if not blobs:
        return mail
    assert mail.id is not None
    foreign = [
        Detail(f"attachments[{i}].blob", _NOT_YOURS)
        for i, a in blobs
        if a.blob is not None and not _may_name(a.blob, mail.id if own_files else None, prefixes)
    ]
    if foreign:
        raise error(f"attachment {foreign[0].field}: {foreign[0].message}", foreign)
    sizes = await asyncio.gather(*(store.attachments.size(a.blob) for _, a in blobs if a.blob is not None))
    attachments = list(mail.attachments)
    problems = []
    for (index, attachment), size in zip(blobs, sizes, strict=True):
        where = f"attachments[{index}].blob"
        assert attachment.blob is not None
        if owned_by(attachment.blob, mail.id):
            if size != attachment.size or attachment.sha256 is None:
                found = "it is gone" if size is None else f"{size} bytes, {attachment.size} were accepted"
                raise AttachmentChanged(
                    f"The attachment {attachment.blob} changed after the mail was accepted: {found}.",
                    [Detail(where, found)],
                )
            continue
        if size is None:
            problems.append(Detail(where, f"no blob {attachment.blob} (never uploaded, or already deleted)"))
        elif size == 0:
            problems.append(Detail(where, f"the blob {attachment.blob} is empty"))
        elif size > MAX_BLOB_ATTACHMENT_BYTES:
            problems.append(
                Detail(where, f"{size} bytes; Graph takes attachments of at most {MAX_BLOB_ATTACHMENT_BYTES}")
            )
        attachments[index] = attachment.model_copy(update={"size": size})
    if problems:
        raise error(f"attachment {problems[0].field}: {problems[0].message}", problems)
    return mail.model_copy(update={"attachments": attachments})


_NOT_YOURS = "not a blob this mail may name (the files of its own form, or a folder configured for its way in)"


def _may_name(blob: str, mail_id: str | None, prefixes: tuple[str, ...]) -> bool:
    """Whether a mail may name the blob: one the app stored for it (`mail_id`: None when it may name none of
    those), or one under its way in's folders."""
    own = mail_id is not None and owned_by(blob, mail_id)
    return own or (not blob.startswith(FORMS_FOLDER) and blob.startswith(prefixes))
