"""Run records: what a run will do, written as a JSON blob before it does it (an alert group's notice, a
receiver's summary, a digest run), so a run that dies half-way is finished by the next one, not redone."""

from __future__ import annotations

import json
from typing import Any

from .storage import Storage


class RunRecords:
    """The records of one container (`alert-notices`, `digest-runs`), by name."""

    def __init__(self, storage: Storage, container: str) -> None:
        self._storage = storage
        self.container = container

    async def put(self, name: str, record: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Store a record unless one of that name exists (or replace it); the stored one (ours, or the first
        writer's)."""
        if await self._storage.put_json(self.container, name, record, replace=replace):
            return record
        existing = await self.get(name)
        return existing if existing is not None else record

    async def get(self, name: str) -> dict[str, Any] | None:
        content = await self._storage.get_bytes(self.container, name)
        if content is None:
            return None
        record: dict[str, Any] = json.loads(content)
        return record

    async def delete(self, name: str) -> None:
        await self._storage.delete_blob(self.container, name)
