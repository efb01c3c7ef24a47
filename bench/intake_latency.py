"""Intake latency: `POST /api/mail` and `POST /api/alerts` through the devhost, 16 concurrent clients for 20 s
each; p50 and p99. Baseline in the same run: the bare Azurite enqueue of the same message (16 concurrent).

The devhost hosts only the HTTP functions here (the queue triggers and timers are disabled with the host's
own `AzureWebJobs.<name>.Disabled` settings), so the figure is the webhook's answer time, not delivery's.
Also measured, as the floor of a mail intake that keeps its durable status: the bare status row and enqueue,
concurrently, with the Storage SDKs and nothing else.
Targets (issue 19; 2-core machine, the load generator sharing it; medians of 3 runs): p50 at most 1.5x and
p99 at most 2x the bare enqueue's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from common import bench_line, local_cloud, median, percentile

CLIENTS = 16
SECONDS = 20.0
RUNS = 3  # the figures are medians over the runs
MAIL = {"to": ["alice@contoso.test"], "subject": "Disk full on db-1", "text": "/var is at 97% since 10:02 UTC."}
ALERT = {"name": "DiskFilling", "severity": "critical", "labels": {"instance": "db-1"}, "summary": "/var at 97%"}
BACKGROUND = ("mail_outbox", "alerts_inbox", "alerts_flush", "digest_timer")


async def _load(call: Callable[[int], Awaitable[None]]) -> list[float]:
    """Run `call` from CLIENTS concurrent loops for SECONDS; the latency of each call in ms."""
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS
    counter = iter(range(10**9))

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return latencies


async def _http(url: str, body: dict[str, object]) -> list[float]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def post(_: int) -> None:
            answer = await client.post(url, json=body)
            if answer.status_code != 202:
                raise SystemExit(f"{url}: {answer.status_code} {answer.text}")

        for _ in range(50):  # warm-up: connections, first-use imports
            await post(0)
        return await _load(post)


async def _enqueue(connection: str, with_row: bool = False) -> list[float]:
    """The bare enqueue; `with_row`: a status row written alongside, as the mail intake does."""
    queue = QueueClient.from_connection_string(
        connection, "bench-baseline", message_encode_policy=TextBase64EncodePolicy()
    )
    table = TableClient.from_connection_string(connection, "benchbaseline")
    async with queue, table:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        with contextlib.suppress(ResourceExistsError):
            await table.create_table()
        text = json.dumps(MAIL)

        async def send(_: int) -> None:
            if not with_row:
                await queue.send_message(text)
                return
            row = {"PartitionKey": uuid.uuid4().hex, "RowKey": "status", "status": "queued"}
            await asyncio.gather(table.create_entity(row), queue.send_message(text))

        for _ in range(50):
            await send(0)
        return await _load(send)


def _summary(name: str, latencies: list[float]) -> str:
    rate = len(latencies) / SECONDS
    return (
        f"{name}: {len(latencies)} requests, {rate:.0f}/s, p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms"
    )


def main() -> None:
    runs: list[dict[str, list[float]]] = []
    for _ in range(RUNS):  # a fresh Azurite each run: its tables and queues slow down as they fill up
        with local_cloud() as cloud:
            host = cloud.devhost("intake", settings={f"AzureWebJobs.{name}.Disabled": "true" for name in BACKGROUND})
            try:
                runs.append(
                    {
                        "baseline": asyncio.run(_enqueue(cloud.azurite.connection_string)),
                        "floor": asyncio.run(_enqueue(cloud.azurite.connection_string, with_row=True)),
                        "mail": asyncio.run(_http(f"{host.url}/api/mail", MAIL)),
                        "alerts": asyncio.run(_http(f"{host.url}/api/alerts", ALERT)),
                    }
                )
            finally:
                host.stop()
    for n, run in enumerate(runs, 1):
        for name, label in (
            ("baseline", "bare Azurite enqueue"),
            ("floor", "bare status row + enqueue"),
            ("mail", "POST /api/mail"),
            ("alerts", "POST /api/alerts"),
        ):
            print(f"run {n}: " + _summary(label, run[name]))

    def med(name: str, share: float) -> float:
        return median([percentile(run[name], share) for run in runs])

    for name in ("mail", "alerts"):
        for share, label, limit in ((0.5, "p50", 1.5), (0.99, "p99", 2.0)):
            result, base = med(name, share), med("baseline", share)
            bench_line(
                f"intake_{name}_{label}",
                result,
                "ms",
                f"bare Azurite enqueue {label} {base:.1f} ms",
                ratio=result / base,
                target=f"<= {limit}x baseline",
                met=result <= limit * base,
            )
    for share, label in ((0.5, "p50"), (0.99, "p99")):
        floor, base = med("floor", share), med("baseline", share)
        bench_line(
            f"intake_floor_{label}",
            floor,
            "ms",
            f"bare Azurite enqueue {label} {base:.1f} ms",
            ratio=floor / base,
            target="reported (the status row's cost, Storage SDK only)",
        )


if __name__ == "__main__":
    main()
