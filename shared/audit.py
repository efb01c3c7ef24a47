"""Audit records of Graph operations: a structured JSON log line and a row in the audit table.

Recipients are recorded as SHA-256 prefixes unless `AUDIT_RECIPIENTS=plain`, so the table shows
who got how many mails without holding the addresses.
"""

from __future__ import annotations

import hashlib
import json
import logging

from .config import Settings
from .store import Store
from .store.audit_log import AuditEntry

log = logging.getLogger("notifier.audit")


def recipient_tag(address: str, mode: str) -> str:
    return address.lower() if mode == "plain" else hashlib.sha256(address.lower().encode()).hexdigest()[:16]


async def audit(
    store: Store,
    settings: Settings,
    *,
    operation: str,
    mailbox: str,
    outcome: str,
    caller: str,
    correlation_id: str,
    recipients: list[str] | None = None,
    detail: str | None = None,
) -> None:
    """Record one Graph operation; a failure to write the table is logged, never raised."""
    entry = AuditEntry(
        operation,
        mailbox,
        caller,
        correlation_id,
        outcome,
        [recipient_tag(r, settings.audit_recipients) for r in recipients or []],
        detail,
    )
    log.info(json.dumps({"audit": entry.as_dict()}, separators=(",", ":")))
    try:
        await store.audit.append(entry)
    except Exception as error:
        log.warning("audit table write failed: %s", type(error).__name__)
