"""Graph sendMail and message listing (OData) through msgraph-sdk's GraphServiceClient."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.attachment import Attachment
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.file_attachment import FileAttachment
from msgraph.generated.models.internet_message_header import InternetMessageHeader
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.users.item.messages.messages_request_builder import MessagesRequestBuilder
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

from sandbox.launcher import SandboxProcess

from ..helpers import READER_APP_ID, READER_SECRET, SENDER, SUPPORT, bearer, graph_client

Query = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters


def _recipients(*addresses: str) -> list[Recipient]:
    return [Recipient(email_address=EmailAddress(address=a)) for a in addresses]


def _mail(
    to: list[str],
    *,
    cc: list[str] = (),
    bcc: list[str] = (),
    subject: str = "Disk full on db-1",  # type: ignore[assignment]
    save: bool | None = None,
    **extra: Any,
) -> SendMailPostRequestBody:
    message = Message(
        subject=subject,
        body=ItemBody(content_type=BodyType.Html, content="<p>92% used</p>"),
        to_recipients=_recipients(*to),
        cc_recipients=_recipients(*cc),
        bcc_recipients=_recipients(*bcc),
        **extra,
    )
    return SendMailPostRequestBody(message=message, save_to_sent_items=save)


def _send(sandbox: SandboxProcess, body: SendMailPostRequestBody, sender: str = SENDER, **client: Any) -> None:
    async def go() -> None:
        async with graph_client(sandbox, **client) as graph:
            await graph.users.by_user_id(sender).send_mail.post(body)

    asyncio.run(go())


def _graph_error(
    sandbox: SandboxProcess, body: SendMailPostRequestBody, sender: str = SENDER, **client: Any
) -> ODataError:
    with pytest.raises(ODataError) as raised:
        _send(sandbox, body, sender, **client)
    return raised.value


def test_send_mail_delivers_unread_to_inboxes_and_keeps_a_sent_items_copy(sandbox: SandboxProcess) -> None:
    _send(sandbox, _mail(["alice@contoso.test"], cc=["bob@contoso.test"], bcc=["support@contoso.test"]))

    [received] = sandbox.mailbox("alice@contoso.test", "inbox")
    assert received["subject"] == "Disk full on db-1"
    assert received["isRead"] is False
    assert received["from"]["emailAddress"]["address"] == SENDER
    assert received["body"] == {"contentType": "html", "content": "<p>92% used</p>"}
    assert received["bccRecipients"] == []  # recipients never see the Bcc line
    assert [m["subject"] for m in sandbox.mailbox("bob@contoso.test", "inbox")] == ["Disk full on db-1"]
    assert any(m["subject"] == "Disk full on db-1" for m in sandbox.mailbox(SUPPORT, "inbox"))
    [copy] = sandbox.mailbox(SENDER, "sentitems")
    assert copy["isRead"] is True
    assert [r["emailAddress"]["address"] for r in copy["bccRecipients"]] == ["support@contoso.test"]


def test_send_mail_without_save_to_sent_items_keeps_no_copy(sandbox: SandboxProcess) -> None:
    _send(sandbox, _mail(["alice@contoso.test"], save=False))
    assert sandbox.mailbox(SENDER, "sentitems") == []
    assert len(sandbox.mailbox("alice@contoso.test")) == 1


def test_external_recipients_are_recorded_as_sent(sandbox: SandboxProcess) -> None:
    _send(sandbox, _mail(["oncall@fabrikam.test", "alice@contoso.test"]))
    [sent] = sandbox.sent()
    assert sent["mailbox"] == SENDER
    assert sent["externalRecipients"] == ["oncall@fabrikam.test"]
    assert sent["subject"] == "Disk full on db-1"


def test_send_mail_answers_202_with_an_empty_body_for_pascal_case_and_encoded_upn(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.post(
        "/v1.0/users/notifications%40contoso.test/sendMail",
        headers=bearer(sandbox),
        json={
            "Message": {"subject": "raw", "toRecipients": [{"emailAddress": {"address": "bob@contoso.test"}}]},
            "SaveToSentItems": False,
        },
    )
    assert answer.status_code == 202
    assert answer.content == b""
    assert answer.headers["request-id"]


def test_attachments_and_custom_headers_arrive(sandbox: SandboxProcess) -> None:
    attachment = FileAttachment(
        odata_type="#microsoft.graph.fileAttachment",
        name="report.csv",
        content_type="text/csv",
        content_bytes=b"host,used\ndb-1,92\n",
    )
    headers = [InternetMessageHeader(name="x-alert-id", value="42")]
    _send(sandbox, _mail(["alice@contoso.test"], attachments=[attachment], internet_message_headers=headers))
    [received] = sandbox.mailbox("alice@contoso.test")
    assert received["hasAttachments"] is True
    assert received["attachments"][0]["name"] == "report.csv"
    assert received["attachments"][0]["size"] == len(b"host,used\ndb-1,92\n")
    assert received["internetMessageHeaders"] == [  # and the origin Exchange stamps on delivery
        {"name": "x-alert-id", "value": "42"},
        {"name": "X-MS-Exchange-Organization-AuthAs", "value": "Internal"},
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_mail([]), 400, "ErrorInvalidRecipients"),
        (_mail([f"user{i}@fabrikam.test" for i in range(501)]), 400, "ErrorTooManyRecipients"),
        (_mail(["not-an-address"]), 400, "ErrorInvalidRecipients"),
        (
            _mail(
                ["alice@contoso.test"],
                internet_message_headers=[InternetMessageHeader(name=f"x-h{i}", value="v") for i in range(6)],
            ),
            400,
            "InvalidInternetMessageHeaderCollection",
        ),
        (
            _mail(["alice@contoso.test"], internet_message_headers=[InternetMessageHeader(name="Reply-By", value="v")]),
            400,
            "InvalidInternetMessageHeader",
        ),
    ],
)
def test_send_mail_refuses_what_exchange_refuses(
    sandbox: SandboxProcess, body: SendMailPostRequestBody, status: int, code: str
) -> None:
    error = _graph_error(sandbox, body)
    assert error.response_status_code == status
    assert error.error is not None and error.error.code == code
    assert sandbox.sent() == []


def test_500_recipients_is_the_limit_not_above(sandbox: SandboxProcess) -> None:
    _send(sandbox, _mail([f"user{i}@fabrikam.test" for i in range(500)]))
    assert len(sandbox.sent()[0]["externalRecipients"]) == 500


def test_sending_needs_mail_send_and_a_mailbox_in_scope(sandbox: SandboxProcess) -> None:
    outside = _graph_error(sandbox, _mail(["bob@contoso.test"]), sender="alice@contoso.test")
    assert outside.response_status_code == 403
    assert outside.error is not None and outside.error.code == "ErrorAccessDenied"
    no_role = _graph_error(sandbox, _mail(["bob@contoso.test"]), client_id=READER_APP_ID, secret=READER_SECRET)
    assert no_role.response_status_code == 403
    unknown = _graph_error(sandbox, _mail(["bob@contoso.test"]), sender="nobody@contoso.test")
    assert unknown.response_status_code == 404
    assert unknown.error is not None and unknown.error.code == "ErrorInvalidUser"
    assert sandbox.sent() == []


def test_sending_as_another_mailbox_is_denied(sandbox: SandboxProcess) -> None:
    body = _mail(["bob@contoso.test"], from_=Recipient(email_address=EmailAddress(address=SUPPORT)))
    error = _graph_error(sandbox, body)
    assert error.response_status_code == 403
    assert error.error is not None and error.error.code == "ErrorSendAsDenied"


# -- listing ----------------------------------------------------------------------------------------------
def _seed_support(sandbox: SandboxProcess, count: int) -> datetime:
    """`count` messages in support@'s inbox: every third read, every fifth categorised, senders rotating."""
    # after the seed's own support@ mail (dated hours before the sandbox's now), in whole minutes
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=20)
    sandbox.deliver(
        SUPPORT,
        [
            {
                "subject": f"Ticket {i:05d}",
                "from": f"customer{i % 7}@fabrikam.test",
                "body": f"Message number {i}",
                "isRead": i % 3 == 0,
                "categories": ["Billing"] if i % 5 == 0 else [],
                "receivedDateTime": (start + timedelta(minutes=i)).isoformat(),
            }
            for i in range(count)
        ],
    )
    return start


async def _all_pages(graph: Any, mailbox: str, query: Query) -> tuple[list[Any], int]:
    builder = graph.users.by_user_id(mailbox).messages
    page = await builder.get(RequestConfiguration(query_parameters=query))
    messages, pages = list(page.value), 1
    while page.odata_next_link:
        page = await builder.with_url(page.odata_next_link).get()
        messages += page.value
        pages += 1
    return messages, pages


def test_default_page_is_10_and_next_links_walk_thousands_of_messages(sandbox: SandboxProcess) -> None:
    _seed_support(sandbox, 2500)

    async def go() -> tuple[Any, list[Any], int]:
        async with graph_client(sandbox) as graph:
            first = await graph.users.by_user_id(SUPPORT).messages.get()
            messages, pages = await _all_pages(graph, SUPPORT, Query(top=1000, select=["subject"]))
            return first, messages, pages

    first, messages, pages = asyncio.run(go())
    assert len(first.value) == 10
    assert first.odata_next_link and "$skip=10" in first.odata_next_link
    assert pages == 3
    subjects = [m.subject for m in messages]
    assert len(subjects) == len(set(subjects)) == 2505  # 2500 seeded + the 5 of the seed
    assert subjects[0] == "Ticket 02499"  # newest first by default


def test_filter_select_orderby_count_and_the_inefficient_filter_rule(sandbox: SandboxProcess) -> None:
    start = _seed_support(sandbox, 300)
    since = (start + timedelta(minutes=100)).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def go() -> dict[str, Any]:
        async with graph_client(sandbox) as graph:
            builder = graph.users.by_user_id(SUPPORT).messages
            unread = await _all_pages(graph, SUPPORT, Query(filter="isRead eq false", top=50, count=True))
            billing = await builder.get(
                RequestConfiguration(
                    query_parameters=Query(filter="categories/any(c:c eq 'Billing')", count=True, top=1)
                )
            )
            sender = await builder.get(
                RequestConfiguration(
                    query_parameters=Query(
                        filter="from/emailAddress/address eq 'CUSTOMER3@fabrikam.test'", count=True, top=1
                    )
                )
            )
            ordered = await builder.get(
                RequestConfiguration(
                    query_parameters=Query(
                        filter=f"receivedDateTime ge {since} and isRead eq false",
                        orderby=["receivedDateTime asc"],
                        select=["subject", "isRead"],
                        top=5,
                    )
                )
            )
            with pytest.raises(ODataError) as inefficient:
                await builder.get(
                    RequestConfiguration(
                        query_parameters=Query(filter="isRead eq false", orderby=["receivedDateTime desc"])
                    )
                )
            return {
                "unread": unread,
                "billing": billing,
                "sender": sender,
                "ordered": ordered,
                "inefficient": inefficient.value,
            }

    found = asyncio.run(go())
    unread_messages, _ = found["unread"]
    expected_unread = sum(1 for i in range(300) if i % 3) + 4  # the seed has 4 unread in support@
    assert len(unread_messages) == expected_unread
    assert all(m.is_read is False for m in unread_messages)
    assert found["billing"].odata_count == 60
    assert found["sender"].odata_count == len([i for i in range(300) if i % 7 == 3])
    ordered = found["ordered"].value
    # unread are those with i % 3 != 0, from minute 100 on, oldest first
    assert [m.subject for m in ordered] == [
        "Ticket 00100",
        "Ticket 00101",
        "Ticket 00103",
        "Ticket 00104",
        "Ticket 00106",
    ]
    assert ordered[0].body is None  # only the selected properties come back
    assert found["ordered"].additional_data["@odata.context"].endswith("/messages(subject,isRead)")
    assert found["inefficient"].response_status_code == 400
    assert found["inefficient"].error.code == "InefficientFilter"


@pytest.mark.parametrize(
    "query",
    [
        "$filter=isRead eq",
        "$filter=nosuch eq 1",
        "$filter=isRead eq 'yes'",
        "$filter=(isRead eq true",
        "$orderby=bogus desc",
        "$orderby=subject sideways",
        "$select=nosuch",
        "$top=0",
        "$top=1001",
        "$top=ten",
        "$skip=-1",
        "$count=maybe",
        "$search=x",
        "$filter=receivedDateTime ge 2026-13-45T00:00:00Z",
        "$filter=categories eq 'Billing'",
        "$filter=subject eq 'x'' or 1=1 --",
    ],
)
def test_malformed_odata_gets_400(sandbox: SandboxProcess, query: str) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.get(f"/v1.0/users/{SUPPORT}/messages?{query}", headers=bearer(sandbox))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] in {"BadRequest", "InefficientFilter"}


def test_a_quote_in_a_filter_literal_is_data_not_sql(sandbox: SandboxProcess) -> None:
    sandbox.deliver(SUPPORT, [{"subject": "it's broken", "from": "a@fabrikam.test"}])
    assert sandbox.control is not None
    answer = sandbox.control.get(
        f"/v1.0/users/{SUPPORT}/messages", params={"$filter": "subject eq 'it''s broken'"}, headers=bearer(sandbox)
    )
    assert [m["subject"] for m in answer.json()["value"]] == ["it's broken"]


def test_an_unknown_message_is_404_item_not_found(sandbox: SandboxProcess) -> None:
    async def go() -> ODataError:
        async with graph_client(sandbox) as graph:
            with pytest.raises(ODataError) as raised:
                await graph.users.by_user_id(SUPPORT).messages.by_message_id("AAMkAGnope=").get()
            return raised.value

    error = asyncio.run(go())
    assert error.response_status_code == 404
    assert error.error is not None and error.error.code == "ErrorItemNotFound"
    assert error.error.inner_error is not None


def test_attachments_can_be_read_back_with_expand(sandbox: SandboxProcess) -> None:
    attachment = FileAttachment(odata_type="#microsoft.graph.fileAttachment", name="a.txt", content_bytes=b"hello")
    _send(sandbox, _mail([SUPPORT], attachments=[attachment]))
    [received] = [m for m in sandbox.mailbox(SUPPORT) if m["hasAttachments"]]
    assert sandbox.control is not None
    answer = sandbox.control.get(
        f"/v1.0/users/{SUPPORT}/messages/{received['id']}", params={"$expand": "attachments"}, headers=bearer(sandbox)
    ).json()
    assert base64.b64decode(answer["attachments"][0]["contentBytes"]) == b"hello"
    assert isinstance(attachment, Attachment)
