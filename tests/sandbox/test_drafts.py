"""Drafts, attachments (inline and upload sessions), /send, immutable ids and extended properties."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.attachment_item import AttachmentItem
from msgraph.generated.models.attachment_type import AttachmentType
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.file_attachment import FileAttachment
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.single_value_legacy_extended_property import SingleValueLegacyExtendedProperty
from msgraph.generated.users.item.messages.item.attachments.create_upload_session.create_upload_session_post_request_body import (  # noqa: E501
    CreateUploadSessionPostRequestBody,
)
from msgraph.generated.users.item.messages.messages_request_builder import MessagesRequestBuilder
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

from sandbox.launcher import SandboxProcess

from ..helpers import SENDER, SUPPORT, bearer, graph_client

IMMUTABLE = 'IdType="ImmutableId"'
MARKER = "String {8ECCC264-6880-4EBE-992F-8888D2EEAA1D} Name NotifierDeliveryId"


def _immutable() -> RequestConfiguration[Any]:
    config: RequestConfiguration[Any] = RequestConfiguration()
    config.headers.add("Prefer", IMMUTABLE)
    return config


def _draft(subject: str = "Weekly report", to: str = SUPPORT, **extra: Any) -> Message:
    return Message(
        subject=subject,
        body=ItemBody(content="See the attachment."),
        to_recipients=[Recipient(email_address=EmailAddress(address=to))],
        **extra,
    )


def test_a_draft_is_created_in_drafts_edited_and_sent_to_sent_items(sandbox: SandboxProcess) -> None:
    async def go() -> tuple[Message, Message, Message]:
        async with graph_client(sandbox) as graph:
            messages = graph.users.by_user_id(SENDER).messages
            draft = await messages.post(_draft())
            assert draft and draft.id
            edited = await messages.by_message_id(draft.id).patch(Message(subject="Weekly report (final)"))
            assert edited
            await messages.by_message_id(draft.id).send.post()
            sent = await graph.users.by_user_id(SENDER).mail_folders.by_mail_folder_id("sentitems").messages.get()
            assert sent and sent.value
            return draft, edited, sent.value[0]

    draft, edited, sent = asyncio.run(go())
    drafts_folder = sandbox.mailbox(SENDER, "drafts")
    assert draft.is_draft is True and edited.subject == "Weekly report (final)"
    assert drafts_folder == []  # it left Drafts
    assert sent.is_draft is False and sent.subject == "Weekly report (final)"
    assert sent.id != draft.id  # a default id changes with the folder
    [received] = sandbox.mailbox(SUPPORT, "inbox")[:1]
    assert received["subject"] == "Weekly report (final)"
    assert received["from"]["emailAddress"]["address"] == SENDER


def test_an_immutable_id_stays_the_same_from_draft_to_sent_items(sandbox: SandboxProcess) -> None:
    async def go() -> tuple[str, Message, httpx.Response]:
        async with graph_client(sandbox) as graph:
            messages = graph.users.by_user_id(SENDER).messages
            draft = await messages.post(_draft(), _immutable())
            assert draft and draft.id
            await messages.by_message_id(draft.id).send.post(_immutable())
            again = await messages.by_message_id(draft.id).get(_immutable())
            assert again
            return draft.id, again, httpx.Response(200)

    draft_id, again, _ = asyncio.run(go())
    assert again.id == draft_id
    assert again.is_draft is False
    sent_items = sandbox.mailbox(SENDER, "sentitems")
    assert again.parent_folder_id == sent_items[0]["parentFolderId"]


def test_preference_applied_answers_the_immutable_id_preference(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": IMMUTABLE}
    answer = sandbox.control.post(f"/v1.0/users/{SENDER}/messages", headers=headers, json={"subject": "x"})
    assert answer.status_code == 201
    assert answer.headers["Preference-Applied"] == IMMUTABLE
    plain = sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{answer.json()['id']}", headers=bearer(sandbox))
    assert plain.status_code == 200 and "Preference-Applied" not in plain.headers
    assert plain.json()["id"] != answer.json()["id"]  # without the preference, the default id


def test_a_default_id_no_longer_finds_a_moved_message(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = bearer(sandbox)
    created = sandbox.control.post(f"/v1.0/users/{SENDER}/messages", headers=headers, json={"subject": "to move"})
    old_id = created.json()["id"]
    moved = sandbox.control.post(
        f"/v1.0/users/{SENDER}/messages/{old_id}/move", headers=headers, json={"destinationId": "archive"}
    )
    assert moved.status_code == 201
    assert moved.json()["id"] != old_id
    assert sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{old_id}", headers=headers).status_code == 404
    assert sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{moved.json()['id']}", headers=headers).is_success


def test_the_sent_items_copy_appears_after_the_configured_delay(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": IMMUTABLE}
    sandbox.set_faults(sentItemsDelayMs=120_000)
    draft = sandbox.control.post(
        f"/v1.0/users/{SENDER}/messages",
        headers=headers,
        json={"subject": "later", "toRecipients": [{"emailAddress": {"address": SUPPORT}}]},
    ).json()
    assert sandbox.control.post(f"/v1.0/users/{SENDER}/messages/{draft['id']}/send", headers=headers).status_code == 202
    assert sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{draft['id']}", headers=headers).status_code == 404
    assert sandbox.mailbox(SENDER, "sentitems") == []
    sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 121}).raise_for_status()
    found = sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{draft['id']}", headers=headers)
    assert found.status_code == 200 and found.json()["isDraft"] is False


def test_extended_properties_are_set_expanded_and_filtered(sandbox: SandboxProcess) -> None:
    query = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters

    async def go() -> tuple[list[Message], list[Message], list[Message]]:
        async with graph_client(sandbox) as graph:
            user = graph.users.by_user_id(SENDER)
            for key in ("delivery-1", "delivery-2"):
                marker = SingleValueLegacyExtendedProperty(id=MARKER, value=key)
                message = _draft(subject=key, single_value_extended_properties=[marker])
                await user.send_mail.post(SendMailPostRequestBody(message=message, save_to_sent_items=True))
            sent = user.mail_folders.by_mail_folder_id("sentitems").messages

            async def find(property_id: str, value: str) -> list[Message]:
                config = RequestConfiguration(
                    query_parameters=query(
                        filter=f"singleValueExtendedProperties/Any(ep: ep/id eq '{property_id}' and ep/value eq "
                        f"'{value}')",
                        expand=[f"singleValueExtendedProperties($filter=id eq '{MARKER}')"],
                    )
                )
                answer = await sent.get(config)
                return list(answer.value or []) if answer else []

            return (
                await find(MARKER, "delivery-2"),
                await find(MARKER.replace("8ECCC264", "8eccc264"), "delivery-1"),
                await find(MARKER.replace("NotifierDeliveryId", "notifierdeliveryid"), "delivery-1"),
            )

    exact, guid_case, name_case = asyncio.run(go())
    assert [m.subject for m in exact] == ["delivery-2"]
    [expanded] = exact[0].single_value_extended_properties or []
    assert (expanded.id, expanded.value) == (MARKER, "delivery-2")
    assert [m.subject for m in guid_case] == ["delivery-1"]  # the GUID ignores case
    assert name_case == []  # the name part does not


def test_extended_properties_set_on_a_draft_by_patch_are_kept_when_sent(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": IMMUTABLE}
    draft = sandbox.control.post(
        f"/v1.0/users/{SENDER}/messages",
        headers=headers,
        json={"subject": "marked", "toRecipients": [{"emailAddress": {"address": SUPPORT}}]},
    ).json()
    patched = sandbox.control.patch(
        f"/v1.0/users/{SENDER}/messages/{draft['id']}",
        headers=headers,
        json={"singleValueExtendedProperties": [{"id": MARKER, "value": "k-7"}]},
    )
    assert patched.status_code == 200
    sandbox.control.post(f"/v1.0/users/{SENDER}/messages/{draft['id']}/send", headers=headers).raise_for_status()
    found = sandbox.control.get(
        f"/v1.0/users/{SENDER}/mailFolders/sentitems/messages",
        headers=headers,
        params={"$filter": f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER}' and ep/value eq 'k-7')"},
    ).json()["value"]
    assert [m["id"] for m in found] == [draft["id"]]


def test_a_marker_value_filter_ignores_letter_case_as_graph_s_does(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": IMMUTABLE}
    draft = sandbox.control.post(
        f"/v1.0/users/{SENDER}/messages",
        headers=headers,
        json={"subject": "cased", "singleValueExtendedProperties": [{"id": MARKER, "value": "Case-X"}]},
    ).json()
    found = sandbox.control.get(
        f"/v1.0/users/{SENDER}/mailFolders/drafts/messages",
        headers=headers,
        params={"$filter": f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER}' and ep/value eq 'case-x')"},
    ).json()["value"]
    assert [m["id"] for m in found] == [draft["id"]]


def test_an_invalid_extended_property_id_is_refused(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.post(
        f"/v1.0/users/{SENDER}/messages",
        headers=bearer(sandbox),
        json={"subject": "x", "singleValueExtendedProperties": [{"id": "NotAnId", "value": "v"}]},
    )
    assert answer.status_code == 400
    assert "NotAnId" in answer.json()["error"]["message"]


def test_an_inline_attachment_is_added_to_a_draft_up_to_3_mb(sandbox: SandboxProcess) -> None:
    async def go() -> tuple[Any, Exception | None]:
        async with graph_client(sandbox) as graph:
            messages = graph.users.by_user_id(SENDER).messages
            draft = await messages.post(_draft())
            assert draft and draft.id
            small = FileAttachment(odata_type="#microsoft.graph.fileAttachment", name="a.txt", content_bytes=b"hello")
            added = await messages.by_message_id(draft.id).attachments.post(small)
            big = FileAttachment(
                odata_type="#microsoft.graph.fileAttachment", name="b.bin", content_bytes=b"x" * (3 * 1024 * 1024 + 1)
            )
            try:
                await messages.by_message_id(draft.id).attachments.post(big)
            except ODataError as error:
                return added, error
            return added, None

    added, refused = asyncio.run(go())
    assert added.name == "a.txt" and added.size == 5
    assert isinstance(refused, ODataError) and refused.response_status_code == 413


# -- upload sessions --------------------------------------------------------------------------------------
CHUNK = 12 * 320 * 1024  # 3.75 MB: under 4 MB and a multiple of 320 KiB


def _session(sandbox: SandboxProcess, size: int, name: str = "dump.bin") -> tuple[str, dict[str, Any]]:
    async def go() -> tuple[str, dict[str, Any]]:
        async with graph_client(sandbox) as graph:
            messages = graph.users.by_user_id(SENDER).messages
            draft = await messages.post(_draft(), _immutable())
            assert draft and draft.id
            body = CreateUploadSessionPostRequestBody(
                attachment_item=AttachmentItem(attachment_type=AttachmentType.File, name=name, size=size)
            )
            session = await messages.by_message_id(draft.id).attachments.create_upload_session.post(body)
            assert session
            return draft.id, {
                "uploadUrl": session.upload_url,
                "expirationDateTime": session.expiration_date_time,
                "nextExpectedRanges": session.next_expected_ranges,
            }

    return asyncio.run(go())


def _put(client: httpx.Client, url: str, data: bytes, start: int, total: int, **headers: str) -> httpx.Response:
    content_range = f"bytes {start}-{start + len(data) - 1}/{total}"
    return client.put(
        url,
        content=data,
        headers={"Content-Range": content_range, "Content-Type": "application/octet-stream", **headers},
    )


def _interrupted(data: bytes) -> Iterator[bytes]:
    yield data[: len(data) // 2]
    raise ConnectionAbortedError("the network went away mid-chunk")


def test_a_20_mb_attachment_uploads_in_chunks_and_resumes_after_an_interruption(sandbox: SandboxProcess) -> None:
    content = os.urandom(20 * 1024 * 1024)
    draft_id, session = _session(sandbox, len(content))
    assert session["nextExpectedRanges"] == ["0-"] and session["expirationDateTime"] is not None
    url = session["uploadUrl"]
    assert sandbox.control is not None
    client = sandbox.control
    first = _put(client, url, content[:CHUNK], 0, len(content))
    assert first.status_code == 200 and first.json()["nextExpectedRanges"] == [str(CHUNK)]

    with pytest.raises((httpx.TransportError, ConnectionAbortedError)):
        client.put(
            url,
            content=_interrupted(content[CHUNK : 2 * CHUNK]),
            headers={"Content-Range": f"bytes {CHUNK}-{2 * CHUNK - 1}/{len(content)}", "Content-Length": str(CHUNK)},
        )
    status = client.get(url).json()
    assert status["nextExpectedRanges"] == [str(CHUNK)]  # the broken chunk was not kept
    wrong = _put(client, url, content[2 * CHUNK : 3 * CHUNK], 2 * CHUNK, len(content))
    assert wrong.status_code == 416

    start, last = CHUNK, None
    while start < len(content):
        last = _put(client, url, content[start : start + CHUNK], start, len(content))
        start += CHUNK
    assert last is not None and last.status_code == 201 and "Attachments(" in last.headers["Location"]

    headers = {**bearer(sandbox), "Prefer": IMMUTABLE}
    attachments = client.get(f"/v1.0/users/{SENDER}/messages/{draft_id}/attachments", headers=headers).json()["value"]
    [attachment] = attachments
    assert attachment["size"] == len(content)
    assert hashlib.sha256(base64.b64decode(attachment["contentBytes"])).digest() == hashlib.sha256(content).digest()
    client.post(f"/v1.0/users/{SENDER}/messages/{draft_id}/send", headers=headers).raise_for_status()
    [received] = [m for m in sandbox.mailbox(SUPPORT, "inbox") if m["hasAttachments"]]
    assert received["attachments"][0]["size"] == len(content)


def test_upload_urls_refuse_a_bearer_token_oversized_or_unaligned_chunks(sandbox: SandboxProcess) -> None:
    _, session = _session(sandbox, 5 * 1024 * 1024)
    url = session["uploadUrl"]
    assert sandbox.control is not None
    client = sandbox.control
    token = bearer(sandbox)["Authorization"]
    assert _put(client, url, b"x" * CHUNK, 0, 5 * 1024 * 1024, Authorization=token).status_code == 401
    assert _put(client, url, b"x" * 1000, 0, 5 * 1024 * 1024).status_code == 400  # not a multiple of 320 KiB
    assert _put(client, url, b"x" * (4 * 1024 * 1024 + 1), 0, 5 * 1024 * 1024).status_code == 413
    assert client.put(url.replace("authtoken=", "authtoken=x"), content=b"x").status_code == 401


def test_uploads_beyond_150_mb_in_5_minutes_per_mailbox_are_throttled(sandbox: SandboxProcess) -> None:
    chunk = b"\0" * CHUNK
    _, first = _session(sandbox, 150 * 1024 * 1024)
    _, second = _session(sandbox, 10 * 1024 * 1024)
    assert sandbox.control is not None
    client = sandbox.control
    for n in range(39):  # 146.25 MB
        assert _put(client, first["uploadUrl"], chunk, n * CHUNK, 150 * 1024 * 1024).status_code == 200
    assert _put(client, second["uploadUrl"], chunk, 0, 10 * 1024 * 1024).status_code == 200  # 150 MB: at the limit
    throttled = _put(client, second["uploadUrl"], chunk, CHUNK, 10 * 1024 * 1024)
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "ApplicationThrottled"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 300
    client.put("/_sandbox/clock", json={"advanceSeconds": 301}).raise_for_status()
    assert _put(client, second["uploadUrl"], chunk, CHUNK, 10 * 1024 * 1024).status_code == 200
