"""Queue intake of alerts: one `alerts-inbox` message (any supported format, auto-detected) parsed by
`intake` and handed to the dispatcher; one that can never be read goes to `alerts-inbox-poison` at once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ..audit import audit
from ..config import Settings
from ..errors import AppError
from ..store import Store
from ..text import json_too_deep
from .dispatch import Dispatcher
from .intake import parse_alerts

log = logging.getLogger("notifier.alerts")


class InboxResult(StrEnum):
    INGESTED = "ingested"
    POISONED = "poisoned"


@dataclass(frozen=True)
class InboxOutcome:
    """What became of one `alerts-inbox` message: `ingested` (with its groups' keys) or `poisoned` (with why)."""

    outcome: InboxResult
    alerts: int = 0
    groups: tuple[str, ...] = ()
    reason: str = ""


async def ingest_message(
    text: str, message_id: str, dispatcher: Dispatcher, settings: Settings, now: datetime
) -> InboxOutcome:
    """Ingest one `alerts-inbox` message. One that can never be read is poisoned, its reason in the log and
    the audit table; Storage trouble is raised for the host to redeliver."""
    store = dispatcher.store
    if json_too_deep(text):
        return await _poison_inbox(text, message_id, settings, store, "not JSON: nested too deep")
    try:
        alerts = parse_alerts(json.loads(text), severity_map=dispatcher.config.severity_map)
    except ValueError as error:
        return await _poison_inbox(text, message_id, settings, store, f"not JSON: {error}"[:300])
    except AppError as error:
        return await _poison_inbox(text, message_id, settings, store, error.message[:300])
    written = await dispatcher.ingest(alerts, now)
    return InboxOutcome(InboxResult.INGESTED, len(alerts), tuple(g.key for g in written.groups))


async def _poison_inbox(text: str, message_id: str, settings: Settings, store: Store, reason: str) -> InboxOutcome:
    await store.alert_queues.poison_intake(text)
    log.warning("alerts-inbox message %s poisoned: %s", message_id, reason)
    await audit(
        store,
        settings,
        operation="alertIntake",
        mailbox="",
        outcome="poisoned",
        caller="alerts-inbox",
        correlation_id=message_id,
        detail=reason,
    )
    return InboxOutcome(InboxResult.POISONED, reason=reason)
