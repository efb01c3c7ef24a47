"""mailFolders, childFolders, message PATCH and `$batch`, through msgraph-sdk and raw HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.followup_flag import FollowupFlag
from msgraph.generated.models.followup_flag_status import FollowupFlagStatus
from msgraph.generated.models.importance import Importance
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.item.mail_folders.mail_folders_request_builder import MailFoldersRequestBuilder

from sandbox.launcher import SandboxProcess

from ..helpers import READER_APP_ID, READER_SECRET, SUPPORT, bearer, graph_client

FolderQuery = MailFoldersRequestBuilder.MailFoldersRequestBuilderGetQueryParameters


def _run(sandbox: SandboxProcess, scenario: Any, **client: Any) -> Any:
    async def go() -> Any:
        async with graph_client(sandbox, **client) as graph:
            return await scenario(graph.users.by_user_id(SUPPORT))

    return asyncio.run(go())


def test_mail_folders_list_the_roots_children_with_counts_and_page_by_10(sandbox: SandboxProcess) -> None:
    sandbox.deliver(SUPPORT, [{"subject": f"in {name}", "folder": name} for name in ("Projects", "Vendors", "Zeta")])

    async def scenario(mailbox: Any) -> Any:
        first = await mailbox.mail_folders.get()
        second = await mailbox.mail_folders.with_url(first.odata_next_link).get()
        hidden = await mailbox.mail_folders.get(
            RequestConfiguration(query_parameters=FolderQuery(include_hidden_folders="true", top=50))
        )
        return first, second, hidden

    first, second, hidden = _run(sandbox, scenario)
    assert len(first.value) == 10
    names = [f.display_name for f in first.value + second.value]
    assert names[:3] == ["Inbox", "Drafts", "Sent Items"]
    assert {"Projects", "Vendors", "Zeta"} <= set(names)
    assert "Top of Information Store" not in names
    inbox = first.value[0]
    assert (inbox.total_item_count, inbox.unread_item_count, inbox.child_folder_count) == (3, 2, 1)
    assert len(hidden.value) == len(names) + 1
    assert any(f.is_hidden for f in hidden.value)


def test_well_known_names_child_folders_and_folder_messages(sandbox: SandboxProcess) -> None:
    sandbox.deliver(SUPPORT, [{"subject": "deep", "folder": "Inbox/Escalations/Tier 3"}])

    async def scenario(mailbox: Any) -> Any:
        inbox = await mailbox.mail_folders.by_mail_folder_id("inbox").get()
        children = await mailbox.mail_folders.by_mail_folder_id(inbox.id).child_folders.get()
        escalations = children.value[0]
        grandchildren = await mailbox.mail_folders.by_mail_folder_id(escalations.id).child_folders.get()
        messages = await mailbox.mail_folders.by_mail_folder_id(escalations.id).messages.get()
        sent = await mailbox.mail_folders.by_mail_folder_id("sentitems").get()
        return inbox, escalations, grandchildren, messages, sent

    inbox, escalations, grandchildren, messages, sent = _run(sandbox, scenario)
    assert inbox.display_name == "Inbox"
    assert sent.display_name == "Sent Items"
    assert escalations.display_name == "Escalations"
    assert escalations.parent_folder_id == inbox.id
    assert (escalations.total_item_count, escalations.unread_item_count, escalations.child_folder_count) == (2, 2, 1)
    assert [f.display_name for f in grandchildren.value] == ["Tier 3"]
    assert {m.subject for m in messages.value} == {"Outage in region West", "Data export stuck at 90%"}


def test_an_unknown_folder_is_404(sandbox: SandboxProcess) -> None:
    async def scenario(mailbox: Any) -> ODataError:
        with pytest.raises(ODataError) as raised:
            await mailbox.mail_folders.by_mail_folder_id("AAMkAGnothere=").get()
        return raised.value

    error = _run(sandbox, scenario)
    assert error.response_status_code == 404
    assert error.error.code == "ErrorItemNotFound"


def test_patch_updates_categories_read_flag_importance_and_the_folder_counts(sandbox: SandboxProcess) -> None:
    async def scenario(mailbox: Any) -> Any:
        page = await mailbox.mail_folders.by_mail_folder_id("inbox").messages.get()
        target = next(m for m in page.value if not m.is_read)
        patched = await mailbox.messages.by_message_id(target.id).patch(
            Message(
                categories=["Digested"],
                is_read=True,
                importance=Importance.High,
                flag=FollowupFlag(flag_status=FollowupFlagStatus.Flagged),
            )
        )
        inbox = await mailbox.mail_folders.by_mail_folder_id("inbox").get()
        return target, patched, inbox

    target, patched, inbox = _run(sandbox, scenario)
    assert patched.id == target.id
    assert patched.categories == ["Digested"]
    assert patched.is_read is True
    assert patched.importance == Importance.High
    assert patched.flag.flag_status == FollowupFlagStatus.Flagged
    assert inbox.unread_item_count == 1
    [stored] = [m for m in sandbox.mailbox(SUPPORT) if m["id"] == target.id]
    assert stored["categories"] == ["Digested"]


def test_patch_refuses_read_only_and_mistyped_properties_and_needs_read_write(sandbox: SandboxProcess) -> None:
    message_id = sandbox.mailbox(SUPPORT, "inbox")[0]["id"]
    assert sandbox.control is not None
    url = f"/v1.0/users/{SUPPORT}/messages/{message_id}"
    for body, code in (
        ({"subject": "rewritten"}, "ErrorInvalidPropertyUpdateSentMessage"),
        ({"isRead": "yes"}, "RequestBodyRead"),
        ({"categories": "Digested"}, "RequestBodyRead"),
        ({"nonsense": 1}, "RequestBodyRead"),
        ({"receivedDateTime": "2020-01-01"}, "ErrorInvalidPropertyRequest"),
    ):
        answer = sandbox.control.patch(url, json=body, headers=bearer(sandbox))
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, code), body
    reader = sandbox.control.patch(url, json={"isRead": True}, headers=bearer(sandbox, READER_APP_ID, READER_SECRET))
    assert reader.status_code == 403
    assert sandbox.control.get(url, headers=bearer(sandbox, READER_APP_ID, READER_SECRET)).status_code == 200


def _batch(sandbox: SandboxProcess, requests: list[dict[str, Any]]) -> Any:
    assert sandbox.control is not None
    return sandbox.control.post("/v1.0/$batch", json={"requests": requests}, headers=bearer(sandbox))


def test_batch_runs_20_patches_with_relative_urls_and_answers_each_by_id(sandbox: SandboxProcess) -> None:
    sandbox.deliver(SUPPORT, [{"subject": f"m{i}"} for i in range(20)])
    ids = [m["id"] for m in sandbox.mailbox(SUPPORT) if m["subject"].startswith("m")]
    answer = _batch(
        sandbox,
        [
            {
                "id": str(n),
                "method": "PATCH",
                "url": f"/users/{SUPPORT}/messages/{mid}",
                "headers": {"Content-Type": "application/json"},
                "body": {"categories": ["Digested"]},
            }
            for n, mid in enumerate(ids)
        ],
    )
    assert answer.status_code == 200
    responses = answer.json()["responses"]
    assert sorted(int(r["id"]) for r in responses) == list(range(20))
    assert all(r["status"] == 200 for r in responses)
    by_id = {r["id"]: r for r in responses}
    assert by_id["3"]["body"]["id"] == ids[3]
    tagged = [m for m in sandbox.mailbox(SUPPORT) if m["categories"] == ["Digested"]]
    assert len(tagged) == 20
    entry = sandbox.requests()[-1]
    assert entry["path"] == "/$batch" and len(entry["requests"]) == 20


def test_batch_over_20_or_with_absolute_urls_is_400(sandbox: SandboxProcess) -> None:
    too_many = _batch(
        sandbox, [{"id": str(i), "method": "GET", "url": f"/users/{SUPPORT}/messages"} for i in range(21)]
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "BadRequest"
    absolute = _batch(
        sandbox, [{"id": "1", "method": "GET", "url": f"https://graph.microsoft.com/v1.0/users/{SUPPORT}"}]
    )
    assert absolute.status_code == 400


def test_batch_depends_on_orders_requests_and_fails_dependents_of_a_failure(sandbox: SandboxProcess) -> None:
    message_id = sandbox.mailbox(SUPPORT, "inbox")[0]["id"]
    answer = _batch(
        sandbox,
        [
            {
                "id": "read",
                "method": "PATCH",
                "url": f"/users/{SUPPORT}/messages/{message_id}",
                "body": {"isRead": True},
            },
            {
                "id": "check",
                "method": "GET",
                "url": f"/users/{SUPPORT}/messages/{message_id}?$select=isRead",
                "dependsOn": ["read"],
            },
            {"id": "missing", "method": "GET", "url": f"/users/{SUPPORT}/messages/AAMkAGgone="},
            {"id": "after-missing", "method": "GET", "url": f"/users/{SUPPORT}/mailFolders", "dependsOn": ["missing"]},
            {"id": "outside", "method": "GET", "url": "/users/alice@contoso.test/messages"},
        ],
    ).json()
    by_id = {r["id"]: r for r in answer["responses"]}
    assert by_id["read"]["status"] == 200
    assert by_id["check"]["status"] == 200 and by_id["check"]["body"]["isRead"] is True
    assert by_id["missing"]["status"] == 404
    assert by_id["missing"]["body"]["error"]["code"] == "ErrorItemNotFound"
    assert by_id["after-missing"]["status"] == 424
    assert by_id["outside"]["status"] == 403
    assert by_id["outside"]["body"]["error"]["code"] == "ErrorAccessDenied"


def test_graph_errors_carry_request_ids(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.get(
        "/v1.0/users/nobody@contoso.test/messages",
        headers={**bearer(sandbox), "client-request-id": "my-correlation-id"},
    )
    assert answer.status_code == 404
    inner = answer.json()["error"]["innerError"]
    assert inner["client-request-id"] == "my-correlation-id" == answer.headers["client-request-id"]
    assert inner["request-id"] == answer.headers["request-id"]
    assert inner["date"]
