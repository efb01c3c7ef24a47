"""State in Azure Storage, behind one typed repository per kind of state.

`storage` holds the clients and the Storage mechanics (ETags, retries, lazy SDK imports); each other module
is one kind of state with its row dataclasses: `mail_status`, `outbox_queue` (and its claim check),
`attachments` (the attachment blobs producers hand over), `alert_groups`, `alert_replays` (signed alert
requests seen lately), `alert_queues`, `mail_caps`,
`alert_digest` (the digest buffer), `records` (run records: alert notices, digest runs), `digest_status`,
`digest_cursors` (where `report: new` digests stand), `digest_schedule` (claimed occurrences), `audit_log`,
`instances`, `mailboxes`, `mail_budgets` (sending budgets). `store(account)` is the process's `Store`, which
hands them out.
"""

from __future__ import annotations

from ..config import StorageAccount
from ..loop_cache import LoopCache
from .alert_digest import AlertDigestBuffer
from .alert_groups import AlertGroups
from .alert_queues import AlertQueues
from .alert_replays import AlertReplays
from .attachments import Attachments
from .audit_log import AuditLog
from .digest_cursors import DigestCursors
from .digest_schedule import DigestClaims
from .digest_status import DigestStatuses
from .instances import Instances
from .mail_budgets import MailBudgets
from .mail_caps import MailCaps
from .mail_status import MailStatuses
from .mailboxes import Mailboxes
from .outbox_queue import OutboxQueue
from .records import RunRecords
from .storage import DIGEST_RUN_CONTAINER, NOTICE_CONTAINER, StatusChanged, Storage

__all__ = ["StatusChanged", "Store", "store"]


class Store:
    """Every repository of one storage account, sharing its clients."""

    def __init__(self, account: StorageAccount) -> None:
        self.storage = Storage(account)
        self.statuses = MailStatuses(self.storage)
        self.outbox = OutboxQueue(self.storage)
        self.attachments = Attachments(self.storage)
        self.groups = AlertGroups(self.storage)
        self.replays = AlertReplays(self.storage)
        self.caps = MailCaps(self.storage)
        self.alert_queues = AlertQueues(self.storage)
        self.digest_buffer = AlertDigestBuffer(self.storage)
        self.notices = RunRecords(self.storage, NOTICE_CONTAINER)
        self.digest_runs = RunRecords(self.storage, DIGEST_RUN_CONTAINER)
        self.digest_statuses = DigestStatuses(self.storage)
        self.digest_cursors = DigestCursors(self.storage)
        self.digest_claims = DigestClaims(self.storage)
        self.audit = AuditLog(self.storage)
        self.instances = Instances(self.storage)
        self.mailboxes = Mailboxes(self.storage)
        self.budgets = MailBudgets(self.storage)

    async def ping(self) -> None:
        """A cheap round trip to Table storage (the health check)."""
        await self.storage.ping()

    async def close(self) -> None:
        await self.storage.close()


_stores: LoopCache[Store] = LoopCache()


def store(account: StorageAccount) -> Store:
    """The cached store of this process's event loop for that account."""
    return _stores.get(account, lambda: Store(account))
