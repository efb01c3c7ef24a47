"""Injected faults for Graph endpoints, Outlook-style throttling, and the Graph request log."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import GraphError

_STATUS_CODES = {
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
STATE_CHANGING = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class Throttle(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    concurrent_per_mailbox: int | None = Field(None, alias="concurrentPerMailbox", ge=1)
    requests_per_window: int | None = Field(None, alias="requestsPerWindow", ge=1)
    window_seconds: float = Field(600, alias="windowSeconds", gt=0)


class Faults(BaseModel):
    """The body of `PUT /_sandbox/faults`; every field optional, all off by default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    latency_ms: float = Field(0, alias="latencyMs", ge=0, le=60_000)
    error_rate: float = Field(0, alias="errorRate", ge=0, le=1)
    error_statuses: list[int] = Field([503], alias="errorStatuses", min_length=1)
    drop_connection_rate: float = Field(0, alias="dropConnectionRate", ge=0, le=1)
    throttle: Throttle = Field(default_factory=Throttle)
    random_seed: int | None = Field(None, alias="randomSeed")
    ambiguous_rate: float = Field(0, alias="ambiguousRate", ge=0, le=1)
    sent_items_delay_ms: float = Field(0, alias="sentItemsDelayMs", ge=0, le=86_400_000)
    upload_latency_ms: float = Field(0, alias="uploadLatencyMs", ge=0, le=60_000)  # each chunk PUT to an upload URL


@dataclass
class FaultState:
    """Live fault settings plus the throttle counters they drive (per app and mailbox, like Graph)."""

    faults: Faults = field(default_factory=Faults)
    random: random.Random = field(default_factory=random.Random)
    in_flight: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    windows: dict[tuple[str, str], deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def configure(self, faults: Faults) -> None:
        self.faults = faults
        self.random = random.Random(faults.random_seed)
        self.windows.clear()

    def should_drop(self) -> bool:
        return self.faults.drop_connection_rate > 0 and self.random.random() < self.faults.drop_connection_rate

    def ambiguous_outcome(self, method: str) -> str | None:
        """For a request that changes state and was carried out: how its answer is lost, if it is.

        "timeout" (a 504 GatewayTimeout) or "drop" (the connection closes before the answer), half each.
        """
        rate = self.faults.ambiguous_rate
        if rate <= 0 or method not in STATE_CHANGING or self.random.random() >= rate:
            return None
        return "timeout" if self.random.random() < 0.5 else "drop"

    def injected_error(self) -> GraphError | None:
        if self.faults.error_rate <= 0 or self.random.random() >= self.faults.error_rate:
            return None
        status = self.random.choice(self.faults.error_statuses)
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        code = _STATUS_CODES.get(status, "BadRequest" if status < 500 else "InternalServerError")
        return GraphError(status, code, "Injected fault.", headers)

    def admit(self, app: str, mailbox: str) -> None:
        """Take a concurrency slot and a window slot for a mailbox request, or raise 429 ApplicationThrottled."""
        throttle = self.faults.throttle
        key = (app, mailbox)
        if throttle.concurrent_per_mailbox and self.in_flight[key] >= throttle.concurrent_per_mailbox:
            raise GraphError(
                429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", {"Retry-After": "1"}
            )
        if throttle.requests_per_window:
            now = time.monotonic()
            window = self.windows[key]
            while window and window[0] <= now - throttle.window_seconds:
                window.popleft()
            if len(window) >= throttle.requests_per_window:
                wait = max(1, math.ceil(window[0] + throttle.window_seconds - now))
                raise GraphError(
                    429, "ApplicationThrottled", "Application is over its request limit.", {"Retry-After": str(wait)}
                )
            window.append(now)
        self.in_flight[key] += 1

    def release(self, app: str, mailbox: str) -> None:
        self.in_flight[(app, mailbox)] -= 1


@dataclass
class RequestLog:
    """The Graph request log served by `GET /_sandbox/requests`; bounded, in memory."""

    entries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=500_000))
    last_seq: int = 0

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.last_seq += 1
        entry = {"seq": self.last_seq, "at": round(time.time(), 4), **entry}  # when the answer was ready
        self.entries.append(entry)
        return entry

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["seq"] > seq]
