"""shared.graph against the sandbox: every operation the app builds on, with Graph's paging and errors."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.launcher import SandboxProcess
from shared.config import load_settings
from shared.errors import GraphError
from shared.graph import GraphClient

from .helpers import SENDER, SUPPORT, run


def _with_client(env: dict[str, str], scenario: Any) -> Any:
    async def go() -> Any:
        client = GraphClient(load_settings(env))
        try:
            return await scenario(client)
        finally:
            await client.close()

    return run(go())


def test_list_messages_follows_every_page_with_select_and_filter(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    sandbox.deliver(SUPPORT, [{"subject": f"Ticket {n}", "isRead": n % 2 == 0} for n in range(250)])

    async def scenario(client: GraphClient) -> list[dict[str, Any]]:
        return [
            m
            async for m in client.list_messages(SUPPORT, select=["subject", "isRead"], filter="isRead eq false", top=40)
        ]

    since = sandbox.last_seq()
    messages = _with_client(app_env, scenario)
    assert len(messages) == 125 + 4  # the seed's own unread mail too
    assert all(m["isRead"] is False and "body" not in m for m in messages)
    pages = [e for e in sandbox.requests(since) if e["path"].endswith("/messages")]
    assert len(pages) == 4  # 129 at 40 a page


def test_list_folders_walks_children_with_their_paths(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    sandbox.deliver(SUPPORT, [{"subject": "deep", "folder": "Inbox/Escalations/Tier 3"}])
    folders = _with_client(app_env, lambda client: client.list_folders(SUPPORT))
    paths = {f["path"]: f for f in folders}
    assert {"Inbox", "Inbox/Escalations", "Inbox/Escalations/Tier 3", "Sent Items"} <= set(paths)
    assert paths["Inbox/Escalations"]["unreadItemCount"] == 2
    assert not any(f["isHidden"] for f in folders)


def test_batch_update_patches_each_message_and_answers_per_message(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    sandbox.deliver(SUPPORT, [{"subject": f"b{n}"} for n in range(21)])
    ids = [m["id"] for m in sandbox.mailbox(SUPPORT) if m["subject"].startswith("b")]

    async def scenario(client: GraphClient) -> dict[str, Any]:
        read = await client.batch_update(SUPPORT, {ids[0]: {"isRead": True}})
        batch = {i: {"categories": ["Digested"]} for i in ids[1:20]} | {"AAMkAGgone=": {"categories": ["Digested"]}}
        outcome = await client.batch_update(SUPPORT, batch)
        with pytest.raises(ValueError):
            await client.batch_update(SUPPORT, {i: {} for i in ids})
        return {"read": read, "outcome": outcome}

    result = _with_client(app_env, scenario)
    assert result["read"] == {ids[0]: None}
    assert next(m for m in sandbox.mailbox(SUPPORT) if m["id"] == ids[0])["isRead"] is True
    outcome = result["outcome"]
    assert [outcome[i] for i in ids[1:20]] == [None] * 19
    missing = outcome["AAMkAGgone="]
    assert isinstance(missing, GraphError) and missing.status == 404 and missing.code == "ErrorItemNotFound"
    tagged = [m for m in sandbox.mailbox(SUPPORT) if m["categories"] == ["Digested"]]
    assert len(tagged) == 19


def test_graph_errors_carry_status_code_and_retry_after(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    sandbox.set_faults(throttle={"requestsPerWindow": 1, "windowSeconds": 60})

    async def scenario(client: GraphClient) -> GraphError:
        [m async for m in client.list_messages(SUPPORT, top=1000)]  # one page: one request
        with pytest.raises(GraphError) as raised:
            [m async for m in client.list_messages(SUPPORT, top=1000)]
        return raised.value

    error = _with_client(app_env, scenario)
    assert (error.status, error.code, error.transient) == (429, "ApplicationThrottled", True)
    assert error.retry_after is not None and 30 <= error.retry_after <= 60


def test_sending_instances_split_the_four_requests_per_mailbox_and_slots_follow_the_share() -> None:
    import asyncio

    from shared.config import load_settings
    from shared.graph import GraphClient, MailboxSlots

    settings = load_settings({"GRAPH_AUTH_MODE": "managed_identity", "MAIL_DEFAULT_SENDER": SENDER})

    async def shares() -> list[list[int]]:
        client = GraphClient(settings, credential=object())
        found = []
        for count in (1, 2, 3, 8):
            row = []
            for position in range(count):
                await client.share_mailboxes(position, count)
                row.append(client._slot(SENDER).capacity)
            found.append(row)
        return found

    assert asyncio.run(shares()) == [[4], [2, 2], [2, 1, 1], [1] * 8]

    async def most_in_flight(capacity: int) -> int:
        slots, busy, peak = MailboxSlots(4), 0, 0
        await slots.resize(capacity)

        async def request() -> None:
            nonlocal busy, peak
            async with slots:
                busy += 1
                peak = max(peak, busy)
                await asyncio.sleep(0.01)
                busy -= 1

        await asyncio.gather(*(request() for _ in range(12)))
        return peak

    assert asyncio.run(most_in_flight(2)) == 2
