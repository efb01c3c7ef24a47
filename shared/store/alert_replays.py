"""Signatures of signed alert requests seen lately, in the Table `alertreplays`, so that a captured request
sent again is refused on every instance.

A signature is remembered for at least `hold` seconds and at most twice that: rows live in partitions of
one time bucket each (`<source>-<bucket start, Unix seconds>`, buckets `hold` long); a request is new when
its row can be inserted into the current bucket (the insert that fails on conflict is the check, so two
copies at once cannot both pass) and the previous bucket has no row for it. Each process deletes the older
partitions of a source once per bucket, so the table holds at most two buckets of requests per source.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from .storage import ALERT_REPLAYS_TABLE, Storage, time_text


class AlertReplays:
    """The `alertreplays` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._cleaned: dict[str, int] = {}  # per source: the bucket this process last cleaned up to

    async def first_sight(self, source: str, signature: str, hold: float, now: float) -> bool:
        """Remember a request's signature; False when it was seen within `hold` seconds (a replay)."""
        size = max(1, int(hold))
        bucket = int(now) // size * size
        row_key = _row_key(signature)
        row = {"PartitionKey": _partition(source, bucket), "RowKey": row_key, "seen": time_text(_time(now))}
        if await self._storage.insert_row(ALERT_REPLAYS_TABLE, row) is None:
            return False
        if await self._storage.get_row(ALERT_REPLAYS_TABLE, _partition(source, bucket - size), row_key) is not None:
            return False
        if self._cleaned.get(source) != bucket:
            await self._clean(source, bucket - size)
            self._cleaned[source] = bucket
        return True

    async def forget(self, source: str, signature: str, hold: float, now: float) -> None:
        """Drop a signature remembered at `now` (the request failed: the sender's retry must get through)."""
        size = max(1, int(hold))
        partition = _partition(source, int(now) // size * size)
        await self._storage.delete_row(ALERT_REPLAYS_TABLE, partition, _row_key(signature))

    async def _clean(self, source: str, oldest_kept: int) -> None:
        """Delete a source's partitions older than the bucket `oldest_kept` starts."""
        query = "PartitionKey ge @low and PartitionKey lt @high"
        parameters = {"low": f"{source}-", "high": _partition(source, oldest_kept)}
        await self._storage.delete_rows(
            ALERT_REPLAYS_TABLE, await self._storage.query_rows(ALERT_REPLAYS_TABLE, query, parameters)
        )


def _partition(source: str, bucket: int) -> str:
    return f"{source}-{max(0, bucket):012d}"  # fixed width: partitions sort by time


def _row_key(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()  # fixed length, whatever the header carried


def _time(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)
