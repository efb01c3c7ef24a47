"""Sending budgets: one row per sending mailbox in the `mailbudgets` table, shared by every instance: the
times mail went to Graph in the last minute, the recipients per 10 minutes of the last 24 hours, and the
tickets of mail waiting per lane (see `shared.budgets`). Writes are guarded by the row's ETag, so two
instances never both take the last slot; a change that loses the race is worked out again on the new row."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

from ..budgets import Budget, Lane, LaneLine
from .storage import BUDGETS_TABLE, StatusChanged, Storage

_ROW = "budget"
MAX_TRIES = 40  # per change; each lost race means another instance's change went through
T = TypeVar("T")


def _budget(mailbox: str, row: dict[str, Any] | None) -> Budget:
    if row is None:
        return Budget(mailbox)
    lines = {
        Lane(name): LaneLine(int(v["issued"]), int(v["served"]), float(v["until"]))
        for name, v in json.loads(row.get("lines") or "{}").items()
        if name in Lane.__members__.values()
    }
    return Budget(
        mailbox,
        sent=_times(row.get("sent")),
        paced_at=float(row.get("paced_at") or 0.0),
        day=[(int(start), int(n)) for start, n in json.loads(row.get("day") or "[]")],
        lines=lines,
        etag=row.get("etag"),
    )


def _entity(budget: Budget) -> dict[str, Any]:
    lines = {
        str(lane): {"issued": v.issued, "served": v.served, "until": round(v.until, 3)}
        for lane, v in budget.lines.items()
    }
    return {
        "PartitionKey": budget.mailbox,
        "RowKey": _ROW,
        "sent": _times_text(budget.sent),
        "paced_at": budget.paced_at,
        "day": json.dumps(budget.day),
        "lines": json.dumps(lines, sort_keys=True),
    }


def _times_text(times: list[float]) -> str:
    """The last minute's send times, compactly: the first as epoch seconds, the rest as milliseconds after it
    (2,000 of them stay far under a Table property's 64 KiB)."""
    if not times:
        return "[]"
    return json.dumps([round(times[0], 3), *(round((t - times[0]) * 1000) for t in times[1:])])


def _times(text: object) -> list[float]:
    values = json.loads(str(text or "[]"))
    if not values:
        return []
    first = float(values[0])
    return [first, *(first + int(ms) / 1000 for ms in values[1:])]


class MailBudgets:
    """The `mailbudgets` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get(self, mailbox: str) -> Budget:
        """A mailbox's budget (an empty one, not yet stored, for a mailbox that has sent nothing)."""
        return _budget(mailbox, await self._storage.get_row(BUDGETS_TABLE, mailbox.lower(), _ROW))

    async def save(self, budget: Budget) -> None:
        """Write a budget back only if unchanged since it was read; StatusChanged otherwise."""
        budget.mailbox = budget.mailbox.lower()
        if budget.etag is None:
            etag = await self._storage.insert_row(BUDGETS_TABLE, _entity(budget))
            if etag is None:
                raise StatusChanged(f"{budget.mailbox}/{_ROW}")
            budget.etag = etag
        else:
            budget.etag = await self._storage.replace_row(BUDGETS_TABLE, _entity(budget), budget.etag)

    async def change(self, mailbox: str, apply: Callable[[Budget], T]) -> T:
        """Read a mailbox's budget, `apply` a change to it and write it back, again on the new row as long as
        another instance got there first; the last answer of `apply`."""
        for attempt in range(MAX_TRIES):
            budget = await self.get(mailbox)
            answer = apply(budget)
            try:
                await self.save(budget)
                return answer
            except StatusChanged:
                await asyncio.sleep(random.uniform(0, 0.02 * min(attempt + 1, 10)))  # noqa: S311 (jitter)
        raise StatusChanged(f"{mailbox}/{_ROW}: still contended after {MAX_TRIES} tries")
