"""State in Azure Storage: mail status (Tables), the outbox queue with claim check (Queues, Blobs), audit,
and the rows, queues and blobs the alert pipeline keeps its groups in.

The one module that talks to Storage. Clients are async, made once per event loop and reused; tables,
queues and containers are created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from . import routes
from .config import StorageAccount
from .errors import InvalidMessage
from .loop_cache import LoopCache
from .text import json_too_deep

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

if TYPE_CHECKING:  # the Storage SDKs load on first use: importing them costs a cold start 0.25 s
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.data.tables.aio import TableClient
    from azure.storage.blob.aio import BlobClient, BlobServiceClient
    from azure.storage.queue.aio import QueueClient

OUTBOX = routes.MAIL_OUTBOX
OUTBOX_POISON = "mail-outbox-poison"
STATUS_TABLE = "mailstatus"
AUDIT_TABLE = "audit"
CLAIM_CONTAINER = "mail-payloads"
ALERTS_INBOX = routes.ALERTS_INBOX
ALERTS_INBOX_POISON = "alerts-inbox-poison"
ALERTS_FLUSH = routes.ALERTS_FLUSH
ALERT_GROUPS_TABLE = "alertgroups"
ALERT_DIGEST_TABLE = "alertdigest"
DIGEST_STATUS_TABLE = "digeststatus"
INSTANCES_TABLE = "instances"
NOTICE_CONTAINER = "alert-notices"
DIGEST_RUN_CONTAINER = "digest-runs"
_TABLES = (STATUS_TABLE, AUDIT_TABLE, ALERT_GROUPS_TABLE, ALERT_DIGEST_TABLE, DIGEST_STATUS_TABLE, INSTANCES_TABLE)
APP_QUEUES = (OUTBOX, OUTBOX_POISON, ALERTS_INBOX, ALERTS_INBOX_POISON, ALERTS_FLUSH)
_CONTAINERS = (CLAIM_CONTAINER, NOTICE_CONTAINER, DIGEST_RUN_CONTAINER)
TRANSACTION_SIZE = 100  # Table storage: at most 100 operations per transaction, one partition
QUEUE_PAYLOAD_LIMIT = 48 * 1024  # 64 KB per queue message once base64-encoded
MAX_QUEUE_DELAY = 7 * 24 * 3600 - 1  # a visibility timeout must stay under 7 days


class StatusChanged(Exception):
    """A row changed since it was read (another instance got there first)."""


@dataclass
class MailStatus:
    """The status row of one mail: what `GET /api/mail/{id}` answers, plus what the sender needs."""

    id: str
    status: str  # queued | sending | sent | failed
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    created: str = ""
    updated: str = ""
    payload_hash: str = ""
    sender: str = ""
    recipient_count: int = 0
    lease_until: str = ""
    etag: str | None = field(default=None, repr=False)

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "attempts": self.attempts,
            "updated": self.updated,
        }
        if self.error_code:
            body["error"] = {"code": self.error_code, "message": self.error_message or ""}
        return body


@dataclass(frozen=True)
class Enqueued:
    """A message `enqueue_mail` sent: enough to delete it again."""

    message_id: str
    pop_receipt: str | None
    claim: dict[str, Any] | None = None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entity(status: MailStatus) -> dict[str, Any]:
    entity = {k: v for k, v in status.__dict__.items() if k not in {"id", "etag"} and v is not None}
    return {"PartitionKey": status.id, "RowKey": "status", **entity}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row as Table storage takes it: no ETag field, no empty values."""
    return {k: v for k, v in row.items() if k != "etag" and v is not None}


def _status(entity: Any) -> MailStatus:
    fields = {k: entity.get(k) for k in MailStatus.__dataclass_fields__ if k not in {"id", "etag"}}
    status = MailStatus(id=entity["PartitionKey"], **{k: v for k, v in fields.items() if v is not None})
    status.etag = entity.metadata.get("etag")
    return status


class Store:
    """Mail status, the outbox queue, claim-check blobs and the audit table."""

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
        self._ready: asyncio.Task[None] | None = None
        self._blobs_ready: asyncio.Task[None] | None = None

    def _table(self, name: str) -> TableClient:
        """One client per table, reused: making one costs more CPU than the request it sends."""
        if name not in self._table_clients:
            self._table_clients[name] = self._tables.get_table_client(name)
        return self._table_clients[name]

    async def ensure(self) -> None:
        """Create tables, queues and the claim-check container once per process."""
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._create())  # a failed attempt is not remembered
        await asyncio.shield(self._ready)

    async def _create(self) -> None:
        async def create(call: Any) -> None:
            with contextlib.suppress(ResourceExistsError):
                await call

        await asyncio.gather(
            *(create(self._tables.create_table(name)) for name in _TABLES),
            *(create(self._queue(name).create_queue()) for name in APP_QUEUES),
        )

    async def _blob(self, container: str, name: str) -> BlobClient:
        """A blob's client; the Blob SDK is loaded and the containers are made when the first blob is used."""
        if self._blobs_ready is None or (self._blobs_ready.done() and self._blobs_ready.exception() is not None):
            self._blobs_ready = asyncio.ensure_future(self._create_containers())
        await asyncio.shield(self._blobs_ready)
        return self._blob_service().get_blob_client(container, name)

    def _blob_service(self) -> BlobServiceClient:
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
            with contextlib.suppress(ResourceExistsError):
                await self._blob_service().create_container(name)

    # -- status ---------------------------------------------------------------------------------------
    async def create_status(self, status: MailStatus) -> MailStatus | None:
        """Insert a new status row; None when one with that id exists already."""
        await self.ensure()
        table = self._table(STATUS_TABLE)
        status.created = status.updated = now_iso()
        try:
            metadata = await table.create_entity(_entity(status))
        except ResourceExistsError:
            return None
        status.etag = metadata.get("etag")
        return status

    async def get_status(self, mail_id: str) -> MailStatus | None:
        await self.ensure()
        try:
            entity = await self._table(STATUS_TABLE).get_entity(mail_id, "status")
        except ResourceNotFoundError:
            return None
        return _status(entity)

    async def save_status(self, status: MailStatus) -> MailStatus:
        """Write a status row back, only if nobody changed it since it was read (ETag)."""
        status.updated = now_iso()
        table = self._table(STATUS_TABLE)
        try:
            if status.etag is None:
                metadata = await table.upsert_entity(_entity(status), mode="replace")
            else:
                metadata = await table.update_entity(
                    _entity(status),
                    mode="replace",
                    etag=status.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StatusChanged(status.id) from None
        status.etag = metadata.get("etag")
        return status

    async def delete_status(self, mail_id: str) -> None:
        await self._table(STATUS_TABLE).delete_entity(mail_id, "status")

    # -- outbox queue ---------------------------------------------------------------------------------
    async def enqueue_mail(self, mail_id: str, payload: dict[str, Any]) -> Enqueued:
        """Put a mail on the outbox; a payload too big for a queue message goes through a blob of its own
        (never shared by two submissions of one id). The answer can withdraw the message again."""
        await self.ensure()
        text = json.dumps(payload, separators=(",", ":"))
        claim: dict[str, Any] | None = None
        if len(text.encode()) > QUEUE_PAYLOAD_LIMIT:
            blob = f"{mail_id}-{uuid.uuid4().hex[:12]}.json"
            await (await self._blob(CLAIM_CONTAINER, blob)).upload_blob(text.encode(), overwrite=False)
            claim = {"id": mail_id, "claimCheck": f"{CLAIM_CONTAINER}/{blob}"}
            text = json.dumps(claim)
        sent = await self._queue(OUTBOX).send_message(text)
        return Enqueued(sent.id, sent.pop_receipt, claim)

    async def withdraw(self, enqueued: Enqueued) -> None:
        """Take back a message `enqueue_mail` sent (a submission that turned out to be refused). A sender that
        received it meanwhile holds a new pop receipt: then the message stays, and the sender acknowledges it
        without a Graph call, since its content does not match the status row of its id."""
        try:
            await self._queue(OUTBOX).delete_message(enqueued.message_id, enqueued.pop_receipt)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as error:
            if getattr(error, "error_code", None) != "PopReceiptMismatch":
                raise
        if enqueued.claim is not None:
            await self.delete_payload(enqueued.claim)

    async def send_message(self, queue: str, text: str, delay_seconds: float = 0) -> None:
        """Send a queue message as is, visible after a delay (a throttled mail's `Retry-After`)."""
        delay = min(MAX_QUEUE_DELAY, max(0, round(delay_seconds)))
        await self._queue(queue).send_message(text, visibility_timeout=delay or None)

    def _queue(self, name: str) -> QueueClient:
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

    async def resolve_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The mail of an outbox message: itself, or the blob its claim check names."""
        claim = payload.get("claimCheck")
        if claim is None:
            return payload
        container, _, blob = str(claim).partition("/")
        if container != CLAIM_CONTAINER or not blob or "/" in blob:
            raise InvalidMessage(f"claimCheck {str(claim)[:120]!r} does not name a mail payload")
        try:
            downloader = await (await self._blob(container, blob)).download_blob()
            text = (await downloader.readall()).decode("utf-8", "replace")
            mail = None if json_too_deep(text) else json.loads(text)
        except ResourceNotFoundError:
            raise InvalidMessage(f"claimCheck {claim!r}: no such blob (deleted, or never written)") from None
        except ValueError:
            raise InvalidMessage(f"claimCheck {claim!r}: the blob is not a JSON mail") from None
        if not isinstance(mail, dict):
            raise InvalidMessage(f"claimCheck {claim!r}: the blob is not a JSON mail")
        return mail

    async def delete_payload(self, payload: dict[str, Any]) -> None:
        claim = payload.get("claimCheck")
        if claim:
            container, _, blob = str(claim).partition("/")
            with contextlib.suppress(ResourceNotFoundError):
                await (await self._blob(container, blob)).delete_blob()

    async def poison(self, queue: str, text: str) -> None:
        """Move a message the app cannot use to `<queue>-poison` itself (the host does it after 5 crashes)."""
        await self.ensure()
        await self.send_message(f"{queue}-poison", text)

    # -- rows of the alert pipeline (groups, their alerts, the digest buffer) --------------------------
    async def get_row(self, table: str, partition: str, row: str) -> dict[str, Any] | None:
        """One row with its ETag under `"etag"`, or None."""
        await self.ensure()
        try:
            entity = await self._table(table).get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        return {**entity, "etag": entity.metadata.get("etag")}

    async def partition_rows(self, table: str, partition: str) -> list[dict[str, Any]]:
        """Every row of a partition, each with its ETag under `"etag"`."""
        await self.ensure()
        rows = self._table(table).query_entities("PartitionKey eq @partition", parameters={"partition": partition})
        return [{**entity, "etag": entity.metadata.get("etag")} async for entity in rows]

    async def insert_row(self, table: str, row: dict[str, Any]) -> str | None:
        """Insert a new row; its ETag, or None when a row with those keys exists already."""
        await self.ensure()
        try:
            metadata = await self._table(table).create_entity(_plain(row))
        except ResourceExistsError:
            return None
        return str(metadata.get("etag"))

    async def replace_row(self, table: str, row: dict[str, Any], etag: str) -> str:
        """Replace a row only if it is unchanged since it was read; StatusChanged otherwise."""
        try:
            metadata = await self._table(table).update_entity(
                _plain(row), mode="replace", etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StatusChanged(f"{row['PartitionKey']}/{row['RowKey']}") from None
        return str(metadata.get("etag"))

    async def delete_row(self, table: str, partition: str, row: str, etag: str | None = None) -> None:
        """Delete a row (only if unchanged, given its ETag: StatusChanged otherwise); gone is fine."""
        client = self._table(table)
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
        client = self._table(table)
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

    # -- records: what a run will do, written before it does it (alert notices, digest runs) -----------
    async def put_record(
        self, container: str, name: str, record: dict[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Store a record unless one of that name exists (or replace it); the stored one (ours, or the first
        writer's)."""
        await self.ensure()
        blob = await self._blob(container, name)
        try:
            await blob.upload_blob(json.dumps(record).encode(), overwrite=replace)
            return record
        except ResourceExistsError:
            existing = await self.get_record(container, name)
            return existing if existing is not None else record

    async def get_record(self, container: str, name: str) -> dict[str, Any] | None:
        await self.ensure()
        try:
            downloader = await (await self._blob(container, name)).download_blob()
        except ResourceNotFoundError:
            return None
        record: dict[str, Any] = json.loads(await downloader.readall())
        return record

    async def delete_record(self, container: str, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await (await self._blob(container, name)).delete_blob()

    # -- the senders alive now (they share Outlook's per-mailbox concurrency) --------------------------
    async def heartbeat(self, instance: str, alive_for: float) -> list[str]:
        """Say this instance is alive; the ids of all instances heard from within `alive_for` seconds."""
        await self.ensure()
        table = self._table(INSTANCES_TABLE)
        now = datetime.now(UTC).timestamp()
        await table.upsert_entity({"PartitionKey": "senders", "RowKey": instance, "seen": now}, mode="replace")
        rows = table.query_entities("PartitionKey eq 'senders'")
        return sorted([str(row["RowKey"]) async for row in rows if float(row.get("seen", 0)) > now - alive_for])

    # -- audit ----------------------------------------------------------------------------------------
    async def write_audit(self, record: dict[str, Any]) -> None:
        """Append an audit record; newest first within a day's partition."""
        await self.ensure()
        stamp = datetime.now(UTC)
        inverted = 10**16 - int(stamp.timestamp() * 1_000_000)
        entity = {
            "PartitionKey": stamp.strftime("%Y%m%d"),
            "RowKey": f"{inverted:017d}-{uuid.uuid4().hex[:8]}",
            **{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in record.items() if v is not None},
        }
        await self._table(AUDIT_TABLE).create_entity(entity)

    async def audit_records(self, day: str) -> list[dict[str, Any]]:
        table = self._table(AUDIT_TABLE)
        return [dict(e) async for e in table.query_entities("PartitionKey eq @day", parameters={"day": day})]

    async def ping(self) -> None:
        """A cheap round trip to Table storage (the health check)."""
        await self.ensure()
        await self._table(STATUS_TABLE).get_table_access_policy()

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


_stores: LoopCache[Store] = LoopCache()


def store(account: StorageAccount) -> Store:
    """The cached store of this process's event loop for that account."""
    return _stores.get(account, lambda: Store(account))
