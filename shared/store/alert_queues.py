"""The alert pipeline's queues: `alerts-flush` (a group's flush or a receiver's summary, visible when due)
and the poison queue of `alerts-inbox`."""

from __future__ import annotations

import json
from typing import Any

from .storage import ALERTS_FLUSH, ALERTS_INBOX, Storage


class AlertQueues:
    """Messages of the alert pipeline."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def send_flush(self, message: dict[str, Any], delay_seconds: float) -> None:
        """Put a flush or summary message on `alerts-flush`, visible after the delay."""
        await self._storage.send_message(ALERTS_FLUSH, json.dumps(message), delay_seconds)

    async def poison_intake(self, text: str) -> None:
        """Move an `alerts-inbox` message that can never be read to `alerts-inbox-poison`."""
        await self._storage.poison(ALERTS_INBOX, text)

    async def poison_flush(self, text: str) -> None:
        """Move an `alerts-flush` message that is not a flush to `alerts-flush-poison`."""
        await self._storage.poison(ALERTS_FLUSH, text)
