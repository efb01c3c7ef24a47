"""The HTTP API's contract as pydantic models: what callers send besides the app's mail, and every answer.

`shared.openapi` builds the OpenAPI document and the published JSON Schema from these and from
`shared.mail.MailRequest` (the model the API validates mail with). The handlers write their answers as
plain JSON; the tests hold real answers against these models' schemas, so the two cannot drift apart.
Nothing is compiled at import (`defer_build`): a cold start pays only when the document is asked for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from .mail import MailRequest


def _any_case(*words: str) -> str:
    """A pattern matching any of `words` in any letter case (JSON Schema patterns have no flags)."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c.replace(".", r"\.") for c in w) for w in words)
    return "^(" + "|".join(spelled) + ")$"


def _names_in_any_case(schema: dict[str, Any]) -> None:
    """Let an object's property names come in any letter case, as `parse_mail` (like Graph) matches them:
    each name also as a pattern, and a required name as "some property name matches"."""
    properties = schema.get("properties", {})
    schema["patternProperties"] = {_any_case(name): sub for name, sub in properties.items()}
    required = schema.pop("required", [])
    if required:
        schema["allOf"] = [{"not": {"propertyNames": {"not": {"pattern": _any_case(name)}}}} for name in required]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, populate_by_name=True)


class _Closed(_Model):
    model_config = ConfigDict(extra="forbid")


# The raw Graph sendMail form (`POST /users/{id}/sendMail`'s body), as `shared.graph_form` reads it: property
# names in any letter case at every level, booleans also as "true"/"false" (Microsoft's own example sends them so)


class _Graph(_Closed):
    model_config = ConfigDict(json_schema_extra=_names_in_any_case)


GraphBool = bool | Annotated[str, Field(pattern=_any_case("true", "false"))]


class GraphEmailAddress(_Graph):
    address: str
    name: str | None = None


class GraphRecipient(_Graph):
    email_address: GraphEmailAddress = Field(alias="emailAddress")


class GraphItemBody(_Graph):
    content_type: str = Field(
        "text", alias="contentType", pattern=_any_case("text", "html"), description="text or html"
    )
    content: str = ""


class GraphHeader(_Graph):
    name: str = Field(description="x-... (at most 5)")
    value: str


class GraphFileAttachment(_Graph):
    odata_type: str = Field(
        "#microsoft.graph.fileAttachment",
        alias="@odata.type",
        pattern=_any_case("#microsoft.graph.fileAttachment"),
        description="only file attachments",
    )
    name: str
    content_type: str | None = Field(None, alias="contentType")
    content_bytes: str | None = Field(None, alias="contentBytes", description="base64")
    is_inline: GraphBool | None = Field(None, alias="isInline")
    content_id: str | None = Field(None, alias="contentId")


class GraphMessage(_Graph):
    """The message of a Graph sendMail body. Graph's other v1.0 message properties (flag, categories,
    singleValueExtendedProperties ...) are refused by name; `mentions`, which Graph's v1.0 sendMail ignores, is
    ignored with a warning in the answer."""

    odata_type: str | None = Field(None, alias="@odata.type")
    subject: str = ""
    body: GraphItemBody | None = None
    to_recipients: list[GraphRecipient] | None = Field(None, alias="toRecipients")
    cc_recipients: list[GraphRecipient] | None = Field(None, alias="ccRecipients")
    bcc_recipients: list[GraphRecipient] | None = Field(None, alias="bccRecipients")
    reply_to: list[GraphRecipient] | None = Field(None, alias="replyTo")
    sender: GraphRecipient | None = Field(None, alias="from")
    importance: str | None = Field(None, pattern=_any_case("low", "normal", "high"), description="low, normal or high")
    attachments: list[GraphFileAttachment] | None = None
    internet_message_headers: list[GraphHeader] | None = Field(None, alias="internetMessageHeaders")
    mentions: list[Any] | None = Field(None, description="ignored, as Graph's v1.0 sendMail ignores it")


class GraphSendMail(_Graph):
    """A raw Graph sendMail body; property names are matched in any letter case (msgraph-sdk sends `Message`)."""

    message: GraphMessage
    save_to_sent_items: GraphBool = Field(True, alias="saveToSentItems")
    id: str | None = Field(None, description="makes the request idempotent, as the app's `id` does")


class MailSubmission(RootModel[MailRequest | GraphSendMail]):
    """A mail for `POST /api/mail` and the `mail-outbox` queue: the app's mail or a raw Graph sendMail body."""

    model_config = ConfigDict(defer_build=True)


class AlertPayload(RootModel[dict[str, Any]]):
    """A webhook payload of Alertmanager, Grafana, Azure Monitor (common alert schema) or the generic format
    (`{"name", "status", "severity", ...}`); `POST /api/alerts` detects which when the route names none."""

    model_config = ConfigDict(defer_build=True)


# Answers


Lane = Literal["critical", "alert", "normal", "bulk"]


class BudgetWarning(_Model):
    code: Literal["budget_short", "backlog"]
    message: str


class MailWarning(_Model):
    code: Literal["empty_subject", "ignored_property", "budget_short", "backlog"]
    message: str


class Queued(_Model):
    id: str
    status: Literal["queued"]
    lane: Lane = Field(description="the priority lane it waits in (docs/delivery.md: Sending budgets)")
    warning: BudgetWarning | None = Field(
        None, description="its sending mailbox's daily budget is nearly used up, or a backlog waits before it"
    )
    warnings: list[MailWarning] | None = Field(
        None,
        description="what the caller should know about the accepted mail: `empty_subject` (it goes without a "
        "subject), `ignored_property` (a Graph property Graph's sendMail ignores too), and the budget `warning`",
    )


class FailureReason(_Model):
    code: str
    message: str


class MailStatus(_Model):
    """A mail's status (`GET /api/mail/{id}`); `error` when its last attempt failed (then or before a retry)."""

    id: str
    status: Literal["queued", "sending", "sent", "failed", "deferred"]
    attempts: int
    updated: datetime
    lane: Lane | None = None
    deferred_until: datetime | None = Field(
        None, alias="deferredUntil", description="while `deferred`: when its sending budget lets it go"
    )
    error: FailureReason | None = None


class MatchedRoute(_Closed):
    path: str = Field(description="`route`, `route.routes[1]` ...")
    matchers: list[str]


class GroupReceipt(_Model):
    """One alert group the request's alerts went to."""

    key: str
    receiver: str
    mode: Literal["immediate", "digest"]
    grouping: Literal["source", "app", "digest"] = Field(
        description="source: a pre-grouped notification (Alertmanager, Grafana) mailed as it is; app: the app "
        "groups it (group_wait, group_interval); digest: it waits for the receiver's alert digest"
    )
    routes: list[MatchedRoute] = Field(description="the routes that matched, from the root down")
    labels: dict[str, str]
    alerts: int
    mail: str | None = Field(None, description="the id of the mail a pass-through notification became")


class AlertsAccepted(_Model):
    accepted: int
    groups: list[GroupReceipt]
    replayed: bool | None = Field(None, description="A signed request seen before: nothing accepted")


class AlertMailPreview(_Model):
    """The mail a group would get now (dry runs)."""

    group: str
    receiver: str
    sender: str = Field(alias="from")
    to: list[str]
    cc: list[str]
    subject: str
    html: str


class AlertsDryRun(AlertsAccepted):
    dry_run: Literal[True] = Field(alias="dryRun")
    mails: list[AlertMailPreview]


class FolderCount(_Model):
    path: str
    count: int


class DigestMailPreview(_Model):
    sender: str = Field(alias="from")
    to: list[str]
    subject: str
    html: str


class DigestRun(_Model):
    """What a digest run did: its kind (`new` since the last digest, or `waiting` unread), counts, notes about
    the folders read; `tagged`, `untagged`, `tagRequests` (what tagging cost, in `$batch` requests) and
    `resumedEarlierRun` are left out of dry runs, which carry the `mail` they would send instead."""

    name: str
    report: Literal["new", "waiting"]
    outcome: Literal["sent", "nothing_new", "dry_run"]
    messages: int
    folders: list[FolderCount]
    notes: list[str] | None = None
    mail_id: str | None = Field(None, alias="mailId")
    tagged: int | None = None
    untagged: int | None = None
    tag_requests: int | None = Field(None, alias="tagRequests")
    resumed_earlier_run: bool | None = Field(None, alias="resumedEarlierRun")
    mail: DigestMailPreview | None = None


class AlertDigestMailPreview(DigestMailPreview):
    cc: list[str]


class AlertDigestRun(_Model):
    """What an alert digest run did: the alerts it reported and its mail's id (`resumedEarlierRun` when it
    first finished a run that had died); a dry run carries the `mail` it would send instead, and releases
    nothing."""

    receiver: str
    outcome: Literal["sent", "nothing_new", "dry_run"]
    alerts: int
    mail_id: str | None = Field(None, alias="mailId")
    resumed_earlier_run: bool | None = Field(None, alias="resumedEarlierRun")
    mail: AlertDigestMailPreview | None = None


class HealthCheck(_Closed):
    ok: bool
    highest_day_percent: float | None = Field(
        None, alias="highestDayPercent", description="budgets: the most any sending mailbox used of its day"
    )


class Health(_Closed):
    status: Literal["ok", "degraded"]
    checks: dict[str, HealthCheck] = Field(description="config, storage, keyVault, graphToken, digests")


class HealthCheckDetails(_Model):
    ok: bool
    ms: float | None = None
    mode: str | None = Field(None, description="config: the Graph auth mode")
    error: str | None = Field(None, description="the error's type and a reason that carries no secret")
    mailboxes: dict[str, dict[str, Any]] | None = Field(
        None, description="budgets: per sending mailbox, the minute's and the day's use and mail waiting per lane"
    )


class HealthDetails(_Model):
    status: Literal["ok", "degraded"]
    checks: dict[str, HealthCheckDetails] = Field(description="config, storage, keyVault, graphToken, digest:<name>")


class ErrorDetail(_Model):
    field: str
    message: str


class ErrorBody(_Model):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(_Model):
    """Every error answer: `{"error": {"code", "message", "details": [{"field", "message"}]}}`."""

    error: ErrorBody
