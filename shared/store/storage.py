"""Storage mechanics: the one place that holds the Azure Storage clients, for every kind of state.

Clients are async, made once per store and reused (one per table and queue; the Blob SDK loads with the
first blob); tables, queues and containers are created on first use. Rows come back as dicts with their
ETag under `"etag"`; the repositories next to this module turn them into typed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import routes
from ..config import StorageAccount

# Storage is reached directly (Azure's own network, or Azurite); reading the proxy environment on every
# request (aiohttp's trust_env, in a thread) was a fifth of the CPU a mail costs. The SDKs' own retries would
# hold a webhook for 40 s and more when Storage is down (Queues and Blobs wait 15 s before their first retry,
# Tables retry 10 times): a short try here, and a 503 with Retry-After to the caller; queue work is retried by
# the host's redelivery, and the sender's record of a sent mail by its own loop.
_CLIENT_OPTIONS: dict[str, Any] = {"use_env_settings": False, "connection_timeout": 5, "read_timeout": 30}
_TABLE_OPTIONS: dict[str, Any] = {**_CLIENT_OPTIONS, "retry_total": 2, "retry_backoff_factor": 0.5}
_QUEUE_BLOB_OPTIONS: dict[str, Any] = {
    **_CLIENT_OPTIONS,
    "retry_total": 2,
    "initial_backoff": 0.5,
    "increment_base": 1,
    "random_jitter_range": 0.5,
}

# The Storage SDKs, and azure-core with them (even its exception classes load its whole pipeline package), load
# on first use: importing them costs a cold start 0.25 s, and a worker that only indexes the app needs none.
if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient
    from azure.storage.blob.aio import BlobClient, BlobServiceClient
    from azure.storage.queue.aio import QueueClient, QueueServiceClient

OUTBOX = routes.MAIL_OUTBOX
OUTBOX_POISON = "mail-outbox-poison"
STATUS_TABLE = "mailstatus"
AUDIT_TABLE = "audit"
CLAIM_CONTAINER = "mail-payloads"
ALERTS_INBOX = routes.ALERTS_INBOX
ALERTS_INBOX_POISON = "alerts-inbox-poison"
ALERTS_FLUSH = routes.ALERTS_FLUSH
ALERTS_FLUSH_POISON = "alerts-flush-poison"
ALERT_GROUPS_TABLE = "alertgroups"
ALERT_DIGEST_TABLE = "alertdigest"
DIGEST_STATUS_TABLE = "digeststatus"
DIGEST_SCHEDULE_TABLE = "digestschedule"
INSTANCES_TABLE = "instances"
MAILBOXES_TABLE = "mailboxes"
BUDGETS_TABLE = "mailbudgets"
ALERT_REPLAYS_TABLE = "alertreplays"
NOTICE_CONTAINER = "alert-notices"
DIGEST_RUN_CONTAINER = "digest-runs"
ATTACHMENT_CONTAINER = routes.MAIL_ATTACHMENTS  # producers write here too (queue messages name their blobs)
_TABLES = (
    STATUS_TABLE,
    AUDIT_TABLE,
    ALERT_GROUPS_TABLE,
    ALERT_DIGEST_TABLE,
    DIGEST_STATUS_TABLE,
    DIGEST_SCHEDULE_TABLE,
    INSTANCES_TABLE,
    MAILBOXES_TABLE,
    BUDGETS_TABLE,
    ALERT_REPLAYS_TABLE,
)
APP_QUEUES = (OUTBOX, OUTBOX_POISON, ALERTS_INBOX, ALERTS_INBOX_POISON, ALERTS_FLUSH, ALERTS_FLUSH_POISON)
_CONTAINERS = (CLAIM_CONTAINER, NOTICE_CONTAINER, DIGEST_RUN_CONTAINER, ATTACHMENT_CONTAINER)
TRANSACTION_SIZE = 100  # Table storage: at most 100 operations per transaction, one partition
MAX_QUEUE_DELAY = 7 * 24 * 3600 - 1  # a visibility timeout must stay under 7 days


class StatusChanged(Exception):
    """A row changed since it was read (another instance got there first)."""


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as Table storage takes it: no ETag field, no empty values."""
    return {k: v for k, v in row.items() if k != "etag" and v is not None}


class Storage:
    """The clients of one storage account: tables, queues and blobs, and the row, message and blob
    operations every repository is built from."""

    def __init__(self, account: StorageAccount) -> None:
        from azure.data.tables.aio import TableServiceClient

        self._account = account
        self._credential: AsyncTokenCredential | None = None
        if account.connection_string is None:  # identity-based, as the host reaches AzureWebJobsStorage__*
            from azure.identity.aio import ManagedIdentityCredential

            self._credential = ManagedIdentityCredential(client_id=account.client_id)
            self._tables = TableServiceClient(account.table_url, credential=self._credential, **_TABLE_OPTIONS)
        else:
            self._tables = TableServiceClient.from_connection_string(account.connection_string, **_TABLE_OPTIONS)
        self._table_clients: dict[str, TableClient] = {}
        self._queues: dict[str, QueueClient] = {}
        self._blobs: BlobServiceClient | None = None  # most sends never touch a blob: made on first use
        self._steps: dict[str, asyncio.Future[None]] = {}  # set-up steps run once: tables, queues, containers

    def table(self, name: str) -> TableClient:
        """One client per table, reused: making one costs more CPU than the request it sends."""
        if name not in self._table_clients:
            self._table_clients[name] = self._tables.get_table_client(name)
        return self._table_clients[name]

    async def ensure(self) -> None:
        """The app's tables exist: listed once per process, and created where missing (1 request once the
        account is set up, instead of a create per table that Storage answers 409)."""
        await self._once(
            "tables", lambda: _make_missing(_names(self._tables.list_tables()), _TABLES, self._tables.create_table)
        )

    async def ensure_queues(self) -> None:
        """The app's queues exist, checked when the app first sends a message (and by the health check): a
        sender that only reads and writes rows (most mail) loads no Queue SDK on a cold start. The deployment
        (`infra/core.bicep`) creates them, so producers can write before the app's first run."""
        await self._once("queues", lambda: _make_missing(self._queue_names(), APP_QUEUES, self._create_queue))

    def _once(self, step: str, make: Callable[[], Awaitable[None]]) -> Awaitable[None]:
        """One run of a set-up step per process, shared by concurrent callers; a failed (or cancelled) run is not
        remembered."""
        task = self._steps.get(step)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._steps[step] = asyncio.ensure_future(make())
        return asyncio.shield(task)

    async def _queue_names(self) -> set[str]:
        async with self._queue_service() as queues:
            return await _names(queues.list_queues())

    async def _create_queue(self, name: str) -> None:
        await self.queue(name).create_queue()

    def _queue_service(self) -> QueueServiceClient:
        """A queue service client for listing queues (the per-queue clients keep the base64 policies)."""
        from azure.storage.queue.aio import QueueServiceClient

        if self._account.connection_string is None:
            return QueueServiceClient(self._account.queue_url, credential=self._credential, **_QUEUE_BLOB_OPTIONS)
        return QueueServiceClient.from_connection_string(self._account.connection_string, **_QUEUE_BLOB_OPTIONS)

    async def blob(self, container: str, name: str) -> BlobClient:
        """A blob's client; the Blob SDK is loaded and the containers are made when the first blob is used."""
        await self._once("containers", self._create_containers)
        return self.blob_service().get_blob_client(container, name)

    def blob_service(self) -> BlobServiceClient:
        """The Blob service client, made (and the Blob SDK loaded) on first use."""
        if self._blobs is None:
            from azure.storage.blob.aio import BlobServiceClient

            if self._account.connection_string is None:
                self._blobs = BlobServiceClient(
                    self._account.blob_url, credential=self._credential, **_QUEUE_BLOB_OPTIONS
                )
            else:
                self._blobs = BlobServiceClient.from_connection_string(
                    self._account.connection_string, **_QUEUE_BLOB_OPTIONS
                )
        return self._blobs

    async def _create_containers(self) -> None:
        for name in _CONTAINERS:
            await _created(self.blob_service().create_container(name))

    def queue(self, name: str) -> QueueClient:
        """A client per queue, base64 like the Functions host (QueueServiceClient would drop the policy)."""
        if name not in self._queues:
            from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
            from azure.storage.queue.aio import QueueClient

            options = {
                "message_encode_policy": TextBase64EncodePolicy(),
                "message_decode_policy": TextBase64DecodePolicy(),
                **_QUEUE_BLOB_OPTIONS,
            }
            if self._account.connection_string is None:
                self._queues[name] = QueueClient(self._account.queue_url, name, credential=self._credential, **options)
            else:
                self._queues[name] = QueueClient.from_connection_string(
                    self._account.connection_string, name, **options
                )
        return self._queues[name]

    # -- queue messages ---------------------------------------------------------------------------------
    async def send_message(self, queue: str, text: str, delay_seconds: float = 0) -> None:
        """Send a queue message as is, visible after a delay (a throttled mail's `Retry-After`)."""
        await self.ensure_queues()
        delay = min(MAX_QUEUE_DELAY, max(0, round(delay_seconds)))
        await self.queue(queue).send_message(text, visibility_timeout=delay or None)

    async def poison(self, queue: str, text: str) -> None:
        """Move a message the app cannot use to `<queue>-poison` itself (the host does it after 5 crashes)."""
        await self.send_message(f"{queue}-poison", text)

    # -- rows, with ETags -------------------------------------------------------------------------------
    async def get_row(self, table: str, partition: str, row: str) -> dict[str, Any] | None:
        """One row with its ETag under `"etag"`, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        await self.ensure()
        try:
            entity = await self.table(table).get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        return {**entity, "etag": entity.metadata.get("etag")}

    async def partition_rows(self, table: str, partition: str) -> list[dict[str, Any]]:
        """Every row of a partition, each with its ETag under `"etag"`."""
        await self.ensure()
        rows = self.table(table).query_entities("PartitionKey eq @partition", parameters={"partition": partition})
        return [{**entity, "etag": entity.metadata.get("etag")} async for entity in rows]

    async def query_rows(self, table: str, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows a filter finds (keys only), e.g. a range of partitions."""
        await self.ensure()
        rows = self.table(table).query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"])
        return [{"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]} async for entity in rows]

    async def delete_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Delete rows (whatever they hold; gone is fine), a transaction per 100 rows of one partition."""
        from azure.data.tables import TableTransactionError

        client = self.table(table)
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_partition.setdefault(row["PartitionKey"], []).append(row)
        for part in by_partition.values():
            for start in range(0, len(part), TRANSACTION_SIZE):
                chunk = part[start : start + TRANSACTION_SIZE]
                try:
                    await client.submit_transaction([("delete", row) for row in chunk])
                except TableTransactionError:  # a row another instance deleted first fails the whole transaction
                    for row in chunk:
                        await self.delete_row(table, row["PartitionKey"], row["RowKey"])

    async def insert_row(self, table: str, row: Mapping[str, Any]) -> str | None:
        """Insert a new row; its ETag, or None when a row with those keys exists already."""
        from azure.core.exceptions import ResourceExistsError

        await self.ensure()
        try:
            metadata = await self.table(table).create_entity(_plain(row))
        except ResourceExistsError:
            return None
        return str(metadata.get("etag"))

    async def replace_row(self, table: str, row: Mapping[str, Any], etag: str | None) -> str:
        """Replace a row only if it is unchanged since it was read (StatusChanged otherwise); without an
        ETag, write it whatever is there."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        client = self.table(table)
        try:
            if etag is None:
                metadata = await client.upsert_entity(_plain(row), mode="replace")
            else:
                metadata = await client.update_entity(
                    _plain(row), mode="replace", etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StatusChanged(f"{row['PartitionKey']}/{row['RowKey']}") from None
        return str(metadata.get("etag"))

    async def delete_row(self, table: str, partition: str, row: str, etag: str | None = None) -> None:
        """Delete a row (only if unchanged, given its ETag: StatusChanged otherwise); gone is fine."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        client = self.table(table)
        try:
            if etag is None:
                await client.delete_entity(partition, row)
            else:
                await client.delete_entity(partition, row, etag=etag, match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            return
        except ResourceModifiedError:
            raise StatusChanged(f"{partition}/{row}") from None

    async def merge_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Upsert rows, merging into what is there (fields not given are kept), a transaction per 100 rows of
        one partition; partitions are written concurrently."""
        await self.ensure()
        client = self.table(table)
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_partition.setdefault(row["PartitionKey"], []).append(_plain(row))

        async def write(chunk: list[dict[str, Any]]) -> None:
            await client.submit_transaction([("upsert", row, {"mode": "merge"}) for row in chunk])

        await asyncio.gather(
            *(
                write(part[start : start + TRANSACTION_SIZE])
                for part in by_partition.values()
                for start in range(0, len(part), TRANSACTION_SIZE)
            )
        )

    # -- JSON blobs -------------------------------------------------------------------------------------
    async def put_json(self, container: str, name: str, value: dict[str, Any], *, replace: bool = False) -> bool:
        """Store a JSON blob; False when one of that name exists (and `replace` is not asked)."""
        from azure.core.exceptions import ResourceExistsError

        blob = await self.blob(container, name)
        try:
            await blob.upload_blob(json.dumps(value).encode(), overwrite=replace)
        except ResourceExistsError:
            return False
        return True

    async def get_bytes(self, container: str, name: str) -> bytes | None:
        """A blob's content, or None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = await (await self.blob(container, name)).download_blob()
        except ResourceNotFoundError:
            return None
        return bytes(await downloader.readall())

    async def delete_blob(self, container: str, name: str) -> None:
        """Delete a blob; gone is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            await (await self.blob(container, name)).delete_blob()

    async def ping(self) -> None:
        """A cheap round trip to Table storage, and the queues checked (the health check)."""
        await self.ensure()
        await self.ensure_queues()
        await self.table(STATUS_TABLE).get_table_access_policy()

    async def close(self) -> None:
        for table in self._table_clients.values():
            await table.close()
        await self._tables.close()
        for queue in self._queues.values():
            await queue.close()
        if self._blobs is not None:
            await self._blobs.close()
        if self._credential is not None:
            await self._credential.close()


async def _names(listing: AsyncIterator[Any]) -> set[str]:
    return {item.name async for item in listing}


async def _make_missing(listed: Awaitable[set[str]], wanted: tuple[str, ...], create: Callable[[str], Any]) -> None:
    """Create what a listing lacks; an identity not allowed to list (a role scoped to single tables or queues)
    creates them all."""
    from azure.core.exceptions import HttpResponseError

    try:
        present = await listed
    except HttpResponseError:
        present = set()
    await asyncio.gather(*(_created(create(name)) for name in wanted if name not in present))


async def _created(call: Awaitable[Any]) -> None:
    """A create that another instance may have made meanwhile."""
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        await call


def time_text(moment: datetime | None, *, micro: bool = False) -> str:
    """A time as rows store it: UTC ISO text ending in `Z` (to the microsecond, or the second); "" for none."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def read_time(text: object) -> datetime | None:
    """A time `time_text` wrote (None for "" or nothing), as an aware UTC datetime."""
    if not text:
        return None
    return datetime.fromisoformat(str(text)).astimezone(UTC)
