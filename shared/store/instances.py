"""The instances sending mail now (they share Outlook's per-mailbox concurrency): a row per instance in
the `instances` table, refreshed as its heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime

from .storage import INSTANCES_TABLE, Storage

_PARTITION = "senders"


class Instances:
    """The `instances` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def heartbeat(self, instance: str, alive_for: float) -> list[str]:
        """Say this instance is alive; the ids of all instances heard from within `alive_for` seconds."""
        await self._storage.ensure()
        table = self._storage.table(INSTANCES_TABLE)
        now = datetime.now(UTC).timestamp()
        await table.upsert_entity({"PartitionKey": _PARTITION, "RowKey": instance, "seen": now}, mode="replace")
        rows = table.query_entities(f"PartitionKey eq '{_PARTITION}'")
        return sorted([str(row["RowKey"]) async for row in rows if float(row.get("seen", 0)) > now - alive_for])
