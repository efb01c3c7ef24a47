"""The mail model: the app's request schema, the raw Graph sendMail form, validation, and Graph's JSON.

`parse_mail` turns either accepted form into one `MailRequest`; `check_mail` applies the limits and the
sending policy; `graph_send_body` renders what Graph's sendMail takes; `needs_draft` says when a mail cannot
go by sendMail at all. Every problem is reported with the field it is in.

An attachment carries its content inline (`contentBase64`, at most 3 MiB, Graph's inline limit) or names a
blob in the app's container (`blob`: `mail-attachments/<name>`), whose `size` the app reads from Storage before
the mail is checked (`shared.attachments.resolve_attachments`): `check_mail` itself does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from .config import Settings
from .errors import AppError, Detail, InvalidRequest, PayloadTooLarge
from .graph_form import as_written, is_graph_form, read_graph_form
from .routes import MAIL_ATTACHMENTS
from .text import ADDRESS, CONTROL

MAX_RECIPIENTS = 500  # Graph's limit per message
MAX_SUBJECT = 255
MAX_BODY_CHARS = 1_000_000
MAX_INLINE_ATTACHMENT_BYTES = 3 * 1024 * 1024  # Graph's limit for an attachment inside the message (contentBase64)
# sendMail's request is at most about 4 MB: more than this in attachments altogether (base64 makes them a third
# larger) and the mail can only go as a draft with upload sessions
SEND_MAIL_ATTACHMENT_BYTES = 3 * 1024 * 1024
GRAPH_REQUEST_BYTES = 4 * 1024 * 1024  # Graph answers 413 to a request body over about 4 MB
REQUEST_HEADROOM_BYTES = 16 * 1024  # what the sender adds to a mail's own request: marker, internetMessageId
MAX_BLOB_ATTACHMENT_BYTES = 150 * 1024 * 1024  # Graph's upload sessions take attachments up to 150 MB
MAX_ATTACHMENTS = 50
# the MIME message Exchange measures against its maximum message size: base64 in lines of 76 characters, each
# ended by CRLF (RFC 2045); the headers Exchange writes (Received, ARC, X-MS-Exchange-*: a few KB) and each
# attachment's part headers (Content-Type, -Disposition with its dates, -Transfer-Encoding, the boundary line)
MIME_LINE_CHARS = 76
MIME_HEADER_BYTES = 16 * 1024
MIME_PART_HEADER_BYTES = 512
MAX_JSON_BYTES = 5 * 1024 * 1024  # a mail's JSON (a request body, a form's mail part): 3 MiB inline is 4 MiB of base64
# a blob reference: the container, then 1-4 path segments of letters, digits and . _ : - (none starting with a
# dot) and no `..` anywhere, as `shared.store.attachments` names the blobs it writes (`forms/<mail id in hex>/<n>`)
_SEGMENT = "[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}"
# as the JSON Schema pattern (`$` is the end of the text there); BLOB_REFERENCE is the same rule for Python
BLOB_PATTERN = rf"^(?!.*\.\.){MAIL_ATTACHMENTS}/(?:{_SEGMENT}/){{0,3}}{_SEGMENT}$"
BLOB_REFERENCE = re.compile(BLOB_PATTERN.removesuffix("$") + r"\Z")
SHA256_PATTERN = "^[0-9a-f]{64}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
MAX_HEADERS = 5  # Graph allows at most 5 custom internet message headers, named x-...
# the ids of the mails the app writes itself (alert notices and summaries, digests) begin with this; a caller's
# mail may not, or it could take an alert's place in the outbox before the alert arrives
APP_ID_PREFIX = "app:"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
# header names a caller may not set: Microsoft's and Exchange's own (an NDR's marks, anti-spam and transport
# stamps) and the app's (x-notifier-*, on its alert mail only)
RESERVED_HEADER_PREFIXES = ("x-ms-", "x-microsoft-", "x-exchange-", "x-forefront-", "x-notifier-")
_HEADER_NAME = re.compile(r"^[xX]-[A-Za-z0-9-]{1,62}\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class Mailbox(_Strict):
    address: str
    name: str | None = None


def _attachment_schema(schema: dict[str, Any]) -> None:
    """An attachment's JSON Schema: content or blob, and no `null` default shown for what may only be absent."""
    schema["oneOf"] = [{"required": ["contentBase64"]}, {"required": ["blob"]}]
    schema["dependentRequired"] = {"size": ["blob"], "sha256": ["blob"]}
    for name in ("contentBase64", "blob", "size", "sha256"):
        schema["properties"][name].pop("default", None)


class Attachment(_Strict):
    """A file attached to a mail: its content inline (`contentBase64`) or in a blob of the app (`blob`), never
    both. `size` and `sha256` describe a blob's content: the app reads `size` from Storage, and the multipart
    intake records `sha256` while it stores a file."""

    model_config = ConfigDict(json_schema_extra=_attachment_schema)

    name: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", alias="contentType", max_length=255)
    content_base64: str | SkipJsonSchema[None] = Field(
        None, alias="contentBase64", description="the content, base64; at most 3 MiB decoded (Graph's inline limit)"
    )
    blob: str | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra={"pattern": BLOB_PATTERN},
        description=f"a blob in the app's Storage account holding the content: `{MAIL_ATTACHMENTS}/<name>`",
    )
    size: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = Field(
        None, description="the blob's size in bytes; the app reads it from the blob (whatever is given here)"
    )
    sha256: str | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra={"pattern": SHA256_PATTERN},
        description="hex SHA-256 of the blob's content (a replay with the same content is recognised by it)",
    )
    inline: bool = False
    content_id: str | None = Field(None, alias="contentId", max_length=255)

    @field_validator("blob")
    @classmethod
    def _in_our_container(cls, value: str | None) -> str | None:
        if value is not None and not BLOB_REFERENCE.match(value):
            raise PydanticCustomError(
                "blob", f"must name a blob of the app's container: {MAIL_ATTACHMENTS}/<name> (no `..`)"
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise PydanticCustomError("sha256", "must be 64 lower-case hex digits")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        for name in ("content_base64", "blob", "size", "sha256"):
            if name in self.model_fields_set and getattr(self, name) is None:
                field = type(self).model_fields[name].alias or name
                raise PydanticCustomError("attachment", "{field} must not be null", {"field": field})
        if (self.content_base64 is None) == (self.blob is None):
            raise PydanticCustomError("attachment", "give exactly one of contentBase64 and blob")
        if self.blob is None and (self.size is not None or self.sha256 is not None):
            raise PydanticCustomError("attachment", "size and sha256 describe a blob; this attachment has none")
        return self

    def byte_size(self) -> int:
        """The attachment's size in bytes: decoded for inline content, the blob's `size` for a blob (which must
        have been looked up: `shared.attachments.resolve_attachments`)."""
        if self.blob is not None:
            if self.size is None:
                raise ValueError(f"attachment {self.name!r}: the size of {self.blob} has not been looked up")
            return self.size
        text = self.content_base64 or ""
        return len(text) // 4 * 3 - text[-2:].count("=")  # exact for valid base64, which check_mail ensures

    def request_bytes(self) -> int:
        """The attachment's share of a Graph request: its base64 (computed for a blob's size), its texts as
        JSON writes them, and the fixed keys of a fileAttachment (under 200 bytes)."""
        base64_bytes = len(self.content_base64) if self.content_base64 is not None else 4 * -(-self.byte_size() // 3)
        return base64_bytes + len(json.dumps([self.name, self.content_type, self.content_id]).encode()) + 200


class MailRequest(_Strict):
    """A mail as callers send it (`POST /api/mail`, `mail-outbox`). Addresses may be strings or objects."""

    id: str | None = None
    sender: str | None = Field(None, alias="from")
    to: list[Mailbox] = []
    cc: list[Mailbox] = []
    bcc: list[Mailbox] = []
    reply_to: list[Mailbox] = Field([], alias="replyTo")
    subject: str = ""
    text: str | None = None
    html: str | None = None
    importance: Literal["low", "normal", "high"] = "normal"
    attachments: list[Attachment] = []
    save_to_sent_items: bool = Field(True, alias="saveToSentItems")
    headers: dict[str, str] = {}
    template: str | None = None
    data: dict[str, Any] | None = None
    priority: Literal["critical", "alert", "normal", "bulk"] | None = Field(
        None,
        description="The mail's lane (docs/delivery.md: Sending budgets): `critical` and `alert` only for the app's "
        "alert mail and senders in MAIL_PRIORITY_SENDERS; `normal` by default.",
    )
    sender_pool: str | None = Field(
        None,
        alias="senderPool",
        description="A pool of sending mailboxes (MAIL_SENDER_POOLS) to send from instead of `from`.",
    )
    # a mail given in Graph's form: where the caller wrote each field, and what Graph would ignore too
    _written: dict[str, str] | None = PrivateAttr(None)
    _ignored: list[str] = PrivateAttr(default_factory=list)

    # the published schema shows what callers may send: one address, or a list of addresses and mailboxes
    @field_validator("to", "cc", "bcc", "reply_to", mode="before", json_schema_input_type=str | list[str | Mailbox])
    @classmethod
    def _addresses_as_objects(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"address": v} if isinstance(v, str) else v for v in value]
        return value

    def recipients(self) -> list[str]:
        return [m.address.lower() for m in (*self.to, *self.cc, *self.bcc)]

    def as_written(self, field: str) -> str:
        """A field's name as the caller wrote it: the app's own for its form, Graph's path for a Graph body."""
        return field if self._written is None else as_written(self._written, field)

    def warnings(self) -> list[dict[str, str]]:
        """What the caller should know about an accepted mail: an empty subject, properties ignored as Graph
        ignores them."""
        found = []
        if not self.subject.strip():
            where = self.as_written("subject")
            found.append({"code": "empty_subject", "message": f"{where} is empty: the mail goes without a subject"})
        for where in self._ignored:
            found.append(
                {"code": "ignored_property", "message": f"{where}: Graph's sendMail ignores it, and so does the app"}
            )
        return found

    def dump(self) -> dict[str, Any]:
        """The JSON form this mail travels in (queue, blob)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _field(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# the names pydantic gives the members of a union in an error's location ("to.str", "size.constrained-int")
_UNION_TAGS = {"str", "int", "constrained-int", "function-after[_addresses_as_objects()]"}


def _from_validation_error(error: ValidationError, written: dict[str, str] | None = None) -> AppError:
    details = []
    for item in error.errors():
        location = _field(tuple(p for p in item["loc"] if p not in _UNION_TAGS))
        details.append(
            Detail(as_written(written, location) if written is not None else location or "body", item["msg"])
        )
    return InvalidRequest(f"The mail is not valid: {details[0].field}: {details[0].message}", details)


def parse_mail(body: Any) -> MailRequest:
    """Accept the app's schema or a raw Graph sendMail body (`{"message": {...}, "saveToSentItems"}`, read as
    Graph reads it: `shared.graph_form`)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.", [Detail("body", "not an object")])
    if is_graph_form(body):
        form = read_graph_form(body)
        try:
            mail = MailRequest.model_validate(form.mail)
        except ValidationError as error:
            raise _from_validation_error(error, form.written) from None
        mail._written, mail._ignored = form.written, form.ignored
        return mail
    try:
        return MailRequest.model_validate(body)
    except ValidationError as error:
        raise _from_validation_error(error) from None


def canonical_id(mail_id: str) -> str:
    """The form a mail id is kept and looked up in: lower case, since Graph compares the marker property's value
    (the id) without regard to case, so `Case-X` and `case-x` must be one mail."""
    return mail_id.lower()


def check_mail(mail: MailRequest, settings: Settings) -> MailRequest:
    """Apply limits and the sending policy; returns the mail with its sender filled in and its id in its
    canonical (lower-case) form."""
    problems: list[Detail] = []
    if mail.id is not None and not ID_PATTERN.match(mail.id):
        problems.append(Detail("id", "must be 1-64 letters, digits or . _ : - and start with a letter or digit"))
    elif mail.id is not None:
        mail = mail.model_copy(update={"id": canonical_id(mail.id)})
    sender = (mail.sender or settings.mail_default_sender).lower()
    pool = settings.sender_pool(mail.sender_pool) if mail.sender_pool is not None else None
    if mail.sender_pool is not None:
        if mail.sender is not None:
            problems.append(Detail("senderPool", "give either from or senderPool, not both"))
        elif pool is None:
            problems.append(Detail("senderPool", f"no sender pool named {mail.sender_pool!r} (MAIL_SENDER_POOLS)"))
    elif not ADDRESS.match(sender):
        problems.append(Detail("from", "not an email address"))
    elif not settings.may_send_as(sender):
        problems.append(Detail("from", f"{sender} is not an allowed sender (MAIL_ALLOWED_SENDERS)"))
    own = mail.id is not None and mail.id.lower().startswith(APP_ID_PREFIX)
    _refuse_reserved_headers(mail, own)
    if mail.priority in ("critical", "alert") and not own and not settings.may_use_alert_lanes(pool or (sender,)):
        problems.append(
            Detail(
                "priority",
                f"{mail.priority!r} is kept for alert mail: only senders in MAIL_PRIORITY_SENDERS may use it",
            )
        )
    for group in ("to", "cc", "bcc", "reply_to"):
        for index, mailbox in enumerate(getattr(mail, group)):
            where = f"{'replyTo' if group == 'reply_to' else group}[{index}]"
            if len(mailbox.address) > 254 or not ADDRESS.match(mailbox.address):
                problems.append(Detail(where, "not an email address"))
            elif not settings.may_mail(mailbox.address):
                problems.append(Detail(where, "recipient domain is not allowed (MAIL_ALLOWED_RECIPIENT_DOMAINS)"))
            if mailbox.name is not None and (CONTROL.search(mailbox.name) or len(mailbox.name) > 255):
                problems.append(Detail(f"{where}.name", "must be one line of at most 255 characters"))
    count = len(mail.recipients())
    if count == 0:
        problems.append(Detail("to", "at least one recipient (to, cc or bcc) is required"))
    if count > MAX_RECIPIENTS:
        problems.append(Detail("to", f"{count} recipients; at most {MAX_RECIPIENTS} are allowed"))
    if CONTROL.search(mail.subject):
        problems.append(Detail("subject", "must not contain line breaks or control characters"))
    if len(mail.subject) > MAX_SUBJECT:
        problems.append(Detail("subject", f"longer than {MAX_SUBJECT} characters"))
    if mail.text is None and mail.html is None and mail.template is None:
        problems.append(Detail("text", "a text or html body is required"))
    for name in ("text", "html"):
        if len(getattr(mail, name) or "") > MAX_BODY_CHARS:
            problems.append(Detail(name, f"longer than {MAX_BODY_CHARS} characters"))
    if len(mail.headers) > MAX_HEADERS:
        problems.append(Detail("headers", f"at most {MAX_HEADERS} custom headers"))
    for name, value in mail.headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            problems.append(Detail(f"headers.{name}", "header names must start with x- and use letters, digits, -"))
        if not isinstance(value, str) or CONTROL.search(value) or len(value) > 998:
            problems.append(Detail(f"headers.{name}", "must be one line of at most 998 characters"))
    problems += _attachment_problems(mail)
    if mail.template is not None:
        problems.append(Detail("template", f"no template named {mail.template!r} is configured"))
    if problems:
        problems = [Detail(mail.as_written(p.field), p.message) for p in problems]
        raise InvalidRequest(f"The mail is not valid: {problems[0].field}: {problems[0].message}", problems)
    check_message_size(mail, settings.mail_max_message_bytes)
    bare = body_request_bytes(mail) + REQUEST_HEADROOM_BYTES
    if bare > GRAPH_REQUEST_BYTES:  # the body alone: no attachment left out of the request makes room
        field = mail.as_written("html" if mail.html is not None else "text")
        raise PayloadTooLarge(
            f"The mail's body makes a Graph request of {bare} bytes (JSON escapes each non-ASCII character); "
            f"Graph takes at most {GRAPH_REQUEST_BYTES}.",
            [Detail(field, f"{bare} bytes as a Graph request; at most {GRAPH_REQUEST_BYTES}")],
        )
    if pool is not None:
        return mail.model_copy(update={"sender_pool": mail.sender_pool})
    return mail.model_copy(update={"sender": sender})


def _refuse_reserved_headers(mail: MailRequest, own: bool) -> None:
    """A caller's header under a reserved prefix is refused (`reserved_header`): Exchange's own marks (an NDR's
    `x-ms-exchange-message-is-ndr`) must only ever come from Exchange; the app's own only from the app."""
    for name in mail.headers:
        prefix = next((p for p in RESERVED_HEADER_PREFIXES if str(name).lower().startswith(p)), None)
        if prefix is not None and not (own and prefix == "x-notifier-"):
            raise InvalidRequest(
                f"The header {name!r} is reserved: names starting {', '.join(RESERVED_HEADER_PREFIXES)} are "
                "Microsoft's, Exchange's or the app's own.",
                [Detail(f"headers.{name}", f"names starting {prefix!r} are reserved")],
                code="reserved_header",
            )


def message_bytes(mail: MailRequest) -> int:
    """The mail's own bytes: the body that is sent (UTF-8) and the attachments, decoded. Not what the size limit
    measures (`encoded_message_bytes`); the 413 names both."""
    body = mail.html if mail.html is not None else (mail.text or "")
    return len(body.encode("utf-8", "surrogatepass")) + sum(a.byte_size() for a in mail.attachments)


def mime_base64_bytes(size: int) -> int:
    """`size` bytes as MIME writes them in base64: 4 characters per 3 bytes, in lines of 76 ended by CRLF."""
    characters = 4 * -(-size // 3)
    return characters + 2 * -(-characters // MIME_LINE_CHARS)


def mime_attachment_bytes(attachment_bytes: int, name: str, content_type: str) -> int:
    """One attachment's share of the MIME message: its base64 lines and its part's headers (the name twice,
    RFC 2231-encoded at worst, three bytes a byte)."""
    texts = 2 * 3 * len(name.encode("utf-8", "surrogatepass")) + len(content_type)
    return mime_base64_bytes(attachment_bytes) + MIME_PART_HEADER_BYTES + texts


def encoded_message_bytes(mail: MailRequest) -> int:
    """An estimate, on the high side, of the mail as Exchange measures it against its maximum message size
    (MAIL_MAX_MESSAGE_BYTES): the encoded MIME message, i.e. the body in base64 lines, each attachment in base64
    lines with its part headers, and the message's headers (addresses, subject, custom headers, and what
    Exchange adds). Base64 makes attachments about 37% larger than their bytes."""
    body = mail.html if mail.html is not None else (mail.text or "")
    texts = [mail.subject, *(f"{m.name or ''} <{m.address}>" for m in (*mail.to, *mail.cc, *mail.bcc, *mail.reply_to))]
    texts += [f"{name}: {value}" for name, value in mail.headers.items()]
    headers = MIME_HEADER_BYTES + sum(mime_base64_bytes(len(t.encode("utf-8", "surrogatepass"))) + 16 for t in texts)
    attachments = sum(mime_attachment_bytes(a.byte_size(), a.name, a.content_type) for a in mail.attachments)
    return headers + mime_base64_bytes(len(body.encode("utf-8", "surrogatepass"))) + attachments


def message_too_large(decoded: int, encoded: int, limit: int, field: str = "attachments") -> PayloadTooLarge:
    """The 413 of a mail over MAIL_MAX_MESSAGE_BYTES, naming both sizes: its own bytes and the encoded message's."""
    return PayloadTooLarge(
        f"The mail is about {encoded} bytes as Exchange measures it (the encoded MIME message: base64 makes "
        f"attachments about a third larger), from {decoded} bytes of body and attachments; at most {limit} are "
        "accepted (MAIL_MAX_MESSAGE_BYTES, Exchange's maximum message size).",
        [Detail(field, f"about {encoded} bytes encoded ({decoded} decoded); at most {limit}")],
    )


def check_message_size(mail: MailRequest, limit: int) -> None:
    """413 when the mail's encoded MIME message (`encoded_message_bytes`) would pass `limit`."""
    encoded = encoded_message_bytes(mail)
    if encoded > limit:
        raise message_too_large(message_bytes(mail), encoded, limit, mail.as_written("attachments"))


def needs_draft(mail: MailRequest) -> bool:
    """Whether a checked mail can only be sent as a draft with upload sessions, not by sendMail: it has a blob
    attachment, an attachment over Graph's 3 MiB inline limit, or its sendMail request (body and base64
    attachments) would pass Graph's 4 MB."""
    if any(a.blob is not None for a in mail.attachments):
        return True
    sizes = [a.byte_size() for a in mail.attachments]
    if any(size > MAX_INLINE_ATTACHMENT_BYTES for size in sizes) or sum(sizes) > SEND_MAIL_ATTACHMENT_BYTES:
        return True
    if not mail.attachments:  # check_mail keeps the body alone within a request
        return False
    attached = sum(a.request_bytes() for a in mail.attachments)
    return body_request_bytes(mail) + attached + REQUEST_HEADROOM_BYTES > GRAPH_REQUEST_BYTES


def body_request_bytes(mail: MailRequest) -> int:
    """The size of the mail's Graph request without its attachments, as `shared.graph` sends it (`json.dumps`,
    which escapes non-ASCII)."""
    return len(json.dumps(graph_send_body(mail.model_copy(update={"attachments": []}))).encode())


def _attachment_problems(mail: MailRequest) -> list[Detail]:
    problems = []
    if len(mail.attachments) > MAX_ATTACHMENTS:
        problems.append(Detail("attachments", f"at most {MAX_ATTACHMENTS} attachments"))
    for index, attachment in enumerate(mail.attachments):
        where = f"attachments[{index}]"
        for name, alias in (("name", "name"), ("content_type", "contentType"), ("content_id", "contentId")):
            value = getattr(attachment, name)
            if value is not None and CONTROL.search(value):
                problems.append(Detail(f"{where}.{alias}", "must not contain line breaks or control characters"))
        if attachment.blob is not None:
            if not BLOB_REFERENCE.match(attachment.blob):  # as the model does: a mail may be built without it
                problems.append(
                    Detail(f"{where}.blob", f"not a blob of the app's container: {MAIL_ATTACHMENTS}/<name>")
                )
            if attachment.size is None:
                problems.append(Detail(f"{where}.size", "unknown: the app reads a blob's size before the check"))
            continue
        try:
            size = len(base64.b64decode(attachment.content_base64 or "", validate=True))
        except (binascii.Error, ValueError):
            problems.append(Detail(f"{where}.contentBase64", "not valid base64"))
            continue
        if size > MAX_INLINE_ATTACHMENT_BYTES:
            problems.append(
                Detail(
                    f"{where}.contentBase64",
                    f"{size} bytes; inline attachments are at most {MAX_INLINE_ATTACHMENT_BYTES} bytes each: "
                    "send larger files as multipart file parts or blobs",
                )
            )
    return problems


def app_mail_id(kind: str, *parts: str) -> str:
    """The id of a mail the app writes itself: `app:<kind>-<parts>`, readable when it fits the 64 characters of
    an id, else `app:<kind>-<hash of the parts>` (a long receiver or digest name)."""
    readable = canonical_id(f"{APP_ID_PREFIX}{kind}-{'-'.join(parts)}")
    if ID_PATTERN.match(readable):
        return readable
    return f"{APP_ID_PREFIX}{kind}-{hashlib.sha256('-'.join(parts).encode()).hexdigest()[:32]}"


def compose_mail(
    mail_id: str,
    sender: str | None,
    to: list[str],
    subject: str,
    html: str,
    settings: Settings,
    *,
    cc: list[str] | None = None,
    importance: Literal["low", "normal", "high"] = "normal",
    headers: dict[str, str] | None = None,
    priority: Literal["critical", "alert", "normal", "bulk"] = "normal",
    sender_pool: str | None = None,
) -> MailRequest:
    """A mail the app writes itself (alert notices, digests), checked like any caller's mail; from its sender
    pool when one is given, else from `sender`, else from the default sender."""
    origin = {"senderPool": sender_pool} if sender_pool else {"from": sender or settings.mail_default_sender}
    mail = MailRequest.model_validate(
        {
            "id": mail_id,
            **origin,
            "priority": priority,
            "to": to,
            "cc": cc or [],
            "subject": subject,
            "html": html,
            "importance": importance,
            "headers": headers or {},
        }
    )
    return check_mail(mail, settings)


def graph_send_body(mail: MailRequest, *, leave_out_blobs: bool = False) -> dict[str, Any]:
    """The JSON body of Graph's sendMail for a checked mail, with its inline attachments. A mail with blob
    attachments can only go as a draft whose attachments are uploaded (`needs_draft`): its body is rendered
    only when asked to `leave_out_blobs` (the draft's message), never silently without them."""
    if not leave_out_blobs and any(a.blob is not None for a in mail.attachments):
        raise ValueError(f"mail {mail.id}: its blob attachments must be uploaded to a draft (needs_draft)")

    def recipients(mailboxes: list[Mailbox]) -> list[dict[str, Any]]:
        return [{"emailAddress": {"address": m.address, **({"name": m.name} if m.name else {})}} for m in mailboxes]

    html = mail.html is not None
    message: dict[str, Any] = {
        "subject": mail.subject,
        "body": {"contentType": "html" if html else "text", "content": mail.html if html else (mail.text or "")},
        "toRecipients": recipients(mail.to),
        "ccRecipients": recipients(mail.cc),
        "bccRecipients": recipients(mail.bcc),
        "importance": mail.importance,
    }
    if mail.reply_to:
        message["replyTo"] = recipients(mail.reply_to)
    if mail.headers:
        message["internetMessageHeaders"] = [{"name": k, "value": v} for k, v in mail.headers.items()]
    if mail.attachments:
        message["attachments"] = [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": a.name,
                "contentType": a.content_type,
                "contentBytes": a.content_base64,
                "isInline": a.inline,
                **({"contentId": a.content_id} if a.content_id else {}),
            }
            for a in mail.attachments
            if a.content_base64 is not None
        ]
    return {"message": message, "saveToSentItems": mail.save_to_sent_items}


def payload_hash(payload: dict[str, Any]) -> str:
    """A fingerprint of a mail's JSON form: the same mail under the same id is a repeat, not a conflict.

    A blob attachment counts by its content, not by where it lies: `size` is the app's own reading, and a blob
    whose `sha256` is known (a form's file) counts by that hash, so a replayed form matches the first one. A
    blob without `sha256` (a producer's) counts by its name."""
    attachments = payload.get("attachments")
    if isinstance(attachments, list) and any(isinstance(a, dict) and "blob" in a for a in attachments):
        payload = {**payload, "attachments": [_fingerprinted(a) for a in attachments]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fingerprinted(attachment: Any) -> Any:
    if not isinstance(attachment, dict) or "blob" not in attachment:
        return attachment
    dropped = {"size", "blob"} if attachment.get("sha256") else {"size"}
    return {key: value for key, value in attachment.items() if key not in dropped}
