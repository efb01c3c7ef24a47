"""What every sandbox endpoint shares: the state object and request helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from .exchange import Transport
from .faults import FaultState, RequestLog
from .graph import GraphService
from .store import Store


class BodyTooLarge(Exception):
    """A request body over the endpoint's limit."""


@dataclass
class Sandbox:
    store: Store
    signing_key: bytes
    faults: FaultState
    log: RequestLog
    graph: GraphService
    seed: dict[str, Any]  # the seed the sandbox was started with; `POST /_sandbox/reset` restores it
    transport: Transport

    @classmethod
    def create(cls, store: Store, seed: dict[str, Any]) -> Sandbox:
        faults, log, transport = FaultState(), RequestLog(), Transport(store)
        graph = GraphService(store, faults, log, transport)
        return cls(store, store.signing_key(), faults, log, graph, seed, transport)


def base_url(request: Request) -> str:
    """scheme://host:port of this request, as the client addressed us."""
    return f"{request.url.scheme}://{request.url.netloc}"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
