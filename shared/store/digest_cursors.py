"""Where each `report: new` mailbox digest stands: its cursor, a JSON blob in `digest-runs` under
`cursors/<digest>.json` (the folder tree's delta link and the folders it knows, each chosen folder's message
delta link, the time the last run read up to, and the ids it saw lately). A run changes it only by finishing
its run record, so a dry run or a run that dies leaves it as it was."""

from __future__ import annotations

import json
from typing import Any

from .storage import DIGEST_RUN_CONTAINER, Storage


class DigestCursors:
    """The cursors of `report: new` digests, by digest name."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @staticmethod
    def _name(digest: str) -> str:
        return f"cursors/{digest}.json"

    async def get(self, digest: str) -> dict[str, Any]:
        """A digest's cursor; `{"version": 0}` before its first run."""
        content = await self._storage.get_bytes(DIGEST_RUN_CONTAINER, self._name(digest))
        if content is None:
            return {"version": 0}
        cursor: dict[str, Any] = json.loads(content)
        return cursor

    async def put(self, digest: str, cursor: dict[str, Any]) -> None:
        await self._storage.put_json(DIGEST_RUN_CONTAINER, self._name(digest), cursor, replace=True)
