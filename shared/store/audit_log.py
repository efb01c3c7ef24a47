"""The audit table: one row per Graph operation, newest first within a day's partition (`YYYYMMDD`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .storage import AUDIT_TABLE, Storage


@dataclass(frozen=True)
class AuditEntry:
    """One audited operation; recipients are already tagged (hashed unless configured plain)."""

    operation: str
    mailbox: str
    caller: str
    correlation_id: str
    outcome: str
    recipients: list[str] = field(default_factory=list)
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The entry as the log line and the row show it."""
        return {
            "operation": self.operation,
            "mailbox": self.mailbox,
            "caller": self.caller,
            "correlationId": self.correlation_id,
            "outcome": self.outcome,
            "recipientCount": len(self.recipients),
            "recipients": self.recipients,
            "detail": self.detail,
        }


class AuditLog:
    """The `audit` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def append(self, entry: AuditEntry) -> None:
        """Append an entry, keyed by the time so a day's rows list newest first."""
        await self._storage.ensure()
        moment = datetime.now(UTC)
        inverted = 10**16 - int(moment.timestamp() * 1_000_000)
        row = {
            "PartitionKey": moment.strftime("%Y%m%d"),
            "RowKey": f"{inverted:017d}-{uuid.uuid4().hex[:8]}",
            **{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in entry.as_dict().items() if v is not None},
        }
        await self._storage.table(AUDIT_TABLE).create_entity(row)
