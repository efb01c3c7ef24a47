"""The store on its own: Storage trouble at first use does not stick to the process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from azure.core.exceptions import AzureError

from devhost.azurite import AzuriteProcess, free_port
from shared.config import StorageAccount
from shared.store import Store
from shared.store.mail_status import MailState, MailStatus

from .helpers import run


def test_storage_that_was_down_at_first_use_works_once_it_is_back(tmp_path: Path) -> None:
    azurite = AzuriteProcess(tmp_path / "azurite", (free_port(), free_port(), free_port()))

    async def scenario() -> MailStatus | None:
        store = Store(StorageAccount(azurite.connection_string))
        try:
            with pytest.raises(AzureError):  # nothing listens yet
                await store.storage.ensure()
            azurite.start()
            await store.statuses.create(MailStatus(id="after-outage", status=MailState.QUEUED))
            return await store.statuses.get("after-outage")
        finally:
            await store.close()

    try:
        status = run(scenario())
    finally:
        azurite.stop(grace=2)
    assert status is not None and status.status == "queued"


def test_the_heartbeat_lists_the_instances_heard_from_recently(azurite: AzuriteProcess) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        store = Store(StorageAccount(azurite.connection_string))
        try:
            await store.instances.heartbeat("instance-a", 10)
            both = await store.instances.heartbeat("instance-b", 10)
            only_recent = await store.instances.heartbeat("instance-b", 0.0001)  # a's beat is older than that
            return both, only_recent
        finally:
            await store.close()

    both, only_recent = run(scenario())
    assert {"instance-a", "instance-b"} <= set(both)
    assert only_recent == ["instance-b"]


def test_withdrawing_a_message_a_sender_already_received_leaves_it_to_the_sender(azurite: AzuriteProcess) -> None:
    """Issue 11, item 11: the refused copy's pop receipt changed under us (PopReceiptMismatch): no 500."""
    from azure.storage.queue import QueueClient

    async def scenario() -> None:
        store = Store(StorageAccount(azurite.connection_string))
        try:
            enqueued = await store.outbox.enqueue("withdrawn-1", {"id": "withdrawn-1", "to": ["a@contoso.test"]})
            received: set[str] = set()  # the outbox may hold other tests' messages: receive until ours comes
            with QueueClient.from_connection_string(azurite.connection_string, "mail-outbox") as queue:
                while enqueued.message_id not in received:
                    batch = {m.id for m in queue.receive_messages(max_messages=32, visibility_timeout=2)}
                    if not batch:
                        break
                    received |= batch
            assert enqueued.message_id in received  # a sender has it now, with a new receipt
            await store.outbox.withdraw(enqueued)
        finally:
            await store.close()

    run(scenario())


def test_concurrent_posts_of_one_id_with_different_bodies_get_one_202_and_409s_while_a_sender_runs(
    app_env: dict[str, str], azurite: AzuriteProcess, sandbox: object
) -> None:
    """Issue 11, item 11, end to end: 20 callers race for one id while the outbox trigger receives."""
    import asyncio
    import json

    import function_app
    from devhost.queues import QueueSettings, QueueTrigger

    from .helpers import http, user_function

    async def scenario() -> list[int]:
        trigger = QueueTrigger(
            azurite.connection_string,
            "mail-outbox",
            user_function(function_app.mail_outbox),
            QueueSettings(max_polling_interval=0.05),
        )
        stop = asyncio.Event()
        sender = asyncio.ensure_future(trigger.run(stop))
        post = user_function(function_app.post_mail)
        bodies = [
            {"id": "raced-1", "to": ["alice@contoso.test"], "subject": f"version {n}", "text": "t"} for n in range(20)
        ]
        responses = await asyncio.gather(*(post(http("POST", "/api/mail", body)) for body in bodies))
        await asyncio.sleep(1)
        stop.set()
        await sender
        for response in responses:
            assert response.status_code != 500, json.loads(response.get_body())
        return sorted(r.status_code for r in responses)

    assert run(scenario()) == [202] + [409] * 19


def test_the_cached_store_is_per_connection_string_and_close_all_closes_every_cached_client(
    azurite: AzuriteProcess,
) -> None:
    """Issue 13, item 5: a cached factory never hands a client made for other arguments."""
    from shared import loop_cache
    from shared.store import store

    other = azurite.connection_string.replace("127.0.0.1", "localhost")

    async def scenario() -> tuple[bool, bool, list[object]]:
        first, again, second = (
            store(StorageAccount(azurite.connection_string)),
            store(StorageAccount(azurite.connection_string)),
            store(StorageAccount(other)),
        )
        await loop_cache.close_all()
        left = [item for cache in loop_cache._caches for item in cache.pop_all()]
        return first is again, first is second, left

    same, shared_with_other, left = run(scenario())
    assert same and not shared_with_other
    assert left == []


def test_times_read_from_rows_written_by_earlier_versions_are_written_back_as_the_same_text() -> None:
    """Issue 13, item 4: rows hold datetimes now, stored as the ISO text the rows always held."""
    from datetime import UTC

    from shared.store.storage import read_time, time_text

    precise, second = "2026-11-23T08:01:30.123456Z", "2026-11-23T08:01:30Z"
    moment = read_time(precise)
    assert moment is not None and moment.tzinfo is not None and moment.astimezone(UTC).microsecond == 123456
    assert time_text(moment, micro=True) == precise
    assert time_text(read_time(second)) == second
    assert read_time("") is None and time_text(None) == ""


def test_first_use_on_an_account_already_set_up_creates_nothing_and_makes_what_is_missing(
    azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold start lists the tables, and the queues on their first use (a request each), instead of sending a
    create per table and queue that Storage answers 409; a table or queue that is missing is still made."""
    from azure.data.tables import TableServiceClient
    from azure.data.tables.aio import TableServiceClient as AsyncTableServiceClient
    from azure.storage.queue import QueueClient as SyncQueueClient
    from azure.storage.queue.aio import QueueClient

    from shared.store.storage import AUDIT_TABLE, OUTBOX_POISON

    async def first_use() -> None:
        store = Store(StorageAccount(azurite.connection_string))
        try:
            await store.storage.ensure()
            await store.storage.ensure_queues()
        finally:
            await store.close()

    run(first_use())  # the account is set up
    creates: list[str] = []
    create_table, create_queue = AsyncTableServiceClient.create_table, QueueClient.create_queue

    async def counted_table(self: AsyncTableServiceClient, name: str, **kwargs: object) -> object:
        creates.append(name)
        return await create_table(self, name, **kwargs)

    async def counted_queue(self: QueueClient, **kwargs: object) -> object:
        creates.append(self.queue_name)
        return await create_queue(self, **kwargs)

    monkeypatch.setattr(AsyncTableServiceClient, "create_table", counted_table)
    monkeypatch.setattr(QueueClient, "create_queue", counted_queue)
    run(first_use())
    assert creates == []

    TableServiceClient.from_connection_string(azurite.connection_string).delete_table(AUDIT_TABLE)
    SyncQueueClient.from_connection_string(azurite.connection_string, OUTBOX_POISON).delete_queue()
    run(first_use())
    assert sorted(creates) == sorted([AUDIT_TABLE, OUTBOX_POISON])


def test_first_use_where_listing_is_refused_creates_every_table_and_queue(
    azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identity allowed single queues and tables but not the account's listing (403) still gets its tables
    and queues: it creates them all, as before the listing, and tolerates those that exist."""
    from azure.core.exceptions import HttpResponseError
    from azure.data.tables import TableServiceClient
    from azure.data.tables.aio import TableServiceClient as AsyncTableServiceClient
    from azure.storage.queue import QueueClient
    from azure.storage.queue import QueueServiceClient as SyncQueueServiceClient
    from azure.storage.queue.aio import QueueServiceClient

    from shared.store.storage import APP_QUEUES, OUTBOX_POISON, STATUS_TABLE

    def refused(self: object, **kwargs: object) -> AsyncIterator[object]:
        async def listing() -> AsyncIterator[object]:  # a pager: the answer comes as it is read
            raise HttpResponseError("This request is not authorized to perform this operation.")  # no roles
            yield

        return listing()

    monkeypatch.setattr(QueueServiceClient, "list_queues", refused)
    monkeypatch.setattr(AsyncTableServiceClient, "list_tables", refused)
    TableServiceClient.from_connection_string(azurite.connection_string).delete_table(STATUS_TABLE)
    QueueClient.from_connection_string(azurite.connection_string, OUTBOX_POISON).delete_queue()

    async def first_use() -> None:
        store = Store(StorageAccount(azurite.connection_string))
        try:
            await store.storage.ensure()
            await store.storage.send_message(APP_QUEUES[0], "{}")
        finally:
            await store.close()

    run(first_use())
    queues = {q.name for q in SyncQueueServiceClient.from_connection_string(azurite.connection_string).list_queues()}
    assert OUTBOX_POISON in queues
    tables = {t.name for t in TableServiceClient.from_connection_string(azurite.connection_string).list_tables()}
    assert STATUS_TABLE in tables


def test_a_signature_is_remembered_for_its_hold_at_least_once_across_copies_and_old_buckets_are_deleted(
    azurite: AzuriteProcess,
) -> None:
    import asyncio
    import uuid

    from shared.store.storage import ALERT_REPLAYS_TABLE

    hold = 600.0
    start = 1_800_000_000.0  # the start of a bucket of 600 s
    signature = uuid.uuid4().hex

    async def scenario() -> tuple[list[bool], list[bool], list[str]]:
        store = Store(StorageAccount(azurite.connection_string))
        replays = store.replays
        try:
            copies = await asyncio.gather(*(replays.first_sight("test", signature, hold, start) for _ in range(4)))
            seen = [
                await replays.first_sight("test", signature, hold, start + 599),  # same bucket
                await replays.first_sight("test", signature, hold, start + 1199),  # the next: the previous is read
                await replays.first_sight("test", signature, hold, start + 2400),  # past the bound: taken as new
            ]
            later = store.storage.table(ALERT_REPLAYS_TABLE).query_entities(
                "PartitionKey ge @low and PartitionKey lt @high", parameters={"low": "test-", "high": "test."}
            )
            partitions = sorted({row["PartitionKey"] async for row in later})
            return copies, seen, partitions
        finally:
            await store.close()

    copies, seen, partitions = run(scenario())
    assert sorted(copies) == [False, False, False, True]  # four copies at once: one passes
    assert seen == [False, False, True]
    assert partitions == ["test-001800002400"]  # the buckets before the previous one deleted
