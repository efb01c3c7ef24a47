"""Delta queries on a folder's messages: rounds of pages, created/updated/removed, and their tokens."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.message import Message
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import DeltaRequestBuilder

from sandbox.launcher import SandboxProcess

from ..helpers import SUPPORT, bearer, graph_client

Query = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters


async def _round(graph: Any, link: str | None, pages: list[int]) -> tuple[list[Message], str]:
    """One delta round through msgraph-sdk, two per page: the items and the round's delta link."""
    builder = graph.users.by_user_id(SUPPORT).mail_folders.by_mail_folder_id("inbox").messages.delta
    config: RequestConfiguration[Any] = RequestConfiguration(query_parameters=Query(select=["subject", "isRead"]))
    config.headers.add("Prefer", "odata.maxpagesize=2")
    items: list[Message] = []
    answer = await (builder.with_url(link).get(config) if link else builder.get(config))
    while True:
        assert answer is not None
        items += answer.value or []
        pages.append(len(answer.value or []))
        if answer.odata_next_link:
            answer = await builder.with_url(answer.odata_next_link).get(config)
            continue
        assert answer.odata_delta_link
        return items, answer.odata_delta_link


def test_delta_over_three_rounds_initial_changes_and_nothing(sandbox: SandboxProcess) -> None:
    async def go() -> None:
        async with graph_client(sandbox) as graph:
            pages: list[int] = []
            initial, link = await _round(graph, None, pages)
            assert sorted(m.subject or "" for m in initial) == [
                "Cannot log in to the portal",
                "Invoice 2026-0412 is wrong",
                "Thanks for the quick fix",
            ]
            assert pages == [2, 1]
            assert all(m.body is None for m in initial)  # $select kept

            new = sandbox.deliver(SUPPORT, [{"subject": f"new {n}", "from": "dana@fabrikam.test"} for n in range(10)])
            messages = graph.users.by_user_id(SUPPORT).messages
            for delivered in new[:5]:
                await messages.by_message_id(delivered["id"]).patch(Message(is_read=True))
            gone = [m.id for m in initial[:2]]
            for message_id in gone:
                await messages.by_message_id(message_id).delete()

            pages = []
            changes, link = await _round(graph, link, pages)
            removed = [m.id for m in changes if (m.additional_data or {}).get("@removed")]
            updated = [m for m in changes if not (m.additional_data or {}).get("@removed")]
            assert sorted(removed) == sorted(gone)
            assert all(m.additional_data["@removed"] == {"reason": "deleted"} for m in changes if m.id in removed)
            assert sorted(m.subject or "" for m in updated) == sorted(f"new {n}" for n in range(10))
            assert sorted(m.subject or "" for m in updated if m.is_read) == [f"new {n}" for n in range(5)]
            assert sum(pages) == 12 and max(pages) == 2

            nothing, _ = await _round(graph, link, [])
            assert nothing == []

    asyncio.run(go())


def test_a_delayed_delivery_shows_in_the_round_after_it_arrives(
    sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    sandbox.reset({**test_seed, "exchange": {"messagesPerMinute": 1}})
    assert sandbox.control is not None
    headers = bearer(sandbox)
    first = sandbox.control.get(f"/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta", headers=headers).json()
    link = first["@odata.deltaLink"]
    for n in range(2):
        message = {"subject": f"late {n}", "toRecipients": [{"emailAddress": {"address": SUPPORT}}]}
        sandbox.control.post(
            f"/v1.0/users/{SUPPORT}/sendMail", headers=headers, json={"message": message, "saveToSentItems": False}
        ).raise_for_status()
    now = sandbox.control.get(link, headers=headers).json()
    assert [m["subject"] for m in now["value"]] == ["late 0"]
    sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 61}).raise_for_status()
    later = sandbox.control.get(now["@odata.deltaLink"], headers=headers).json()
    assert [m["subject"] for m in later["value"]] == ["late 1"]


def test_delta_filters_on_received_date_only_in_the_first_call(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = bearer(sandbox)
    url = f"/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta"
    since = (datetime.now(UTC) - timedelta(hours=50, minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")  # the seed: -50h
    first = sandbox.control.get(url, headers=headers, params={"$filter": f"receivedDateTime ge {since}"})
    assert [m["subject"] for m in first.json()["value"]] == ["Invoice 2026-0412 is wrong"]
    again = sandbox.control.get(
        first.json()["@odata.deltaLink"] + f"&$filter=receivedDateTime ge {since}", headers=headers
    )
    assert again.status_code == 400
    wrong = sandbox.control.get(url, headers=headers, params={"$filter": "isRead eq false"})
    assert wrong.status_code == 400


def test_an_invalid_or_expired_delta_token_gets_graphs_error(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    headers = bearer(sandbox)
    url = f"/v1.0/users/{SUPPORT}/mailFolders/inbox/messages/delta"
    link = sandbox.control.get(url, headers=headers).json()["@odata.deltaLink"]
    tampered = sandbox.control.get(link[:-3] + "abc", headers=headers)
    assert tampered.status_code == 400
    assert tampered.json()["error"]["code"] == "ErrorInvalidSyncStateData"
    sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 8 * 86400}).raise_for_status()
    expired = sandbox.control.get(link, headers=headers)
    assert expired.status_code == 410
    assert expired.json()["error"]["code"] == "SyncStateNotFound"
