"""The sandbox's clock: real time plus an offset that `PUT /_sandbox/clock` moves forward.

Everything time-based that the sandbox models (received dates, sending windows, delayed deliveries, delta
tokens, upload sessions) reads this clock; tokens and the request log keep real time. A sandbox is one
process, so the clock is one per process; the store persists its offset.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        """Seconds since the epoch, sandbox time."""
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)


CLOCK = Clock()


def stamp(seconds: float) -> str:
    """Graph's wire format for an epoch time: UTC, seconds, `Z`."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
