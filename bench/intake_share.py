"""Where an accepted webhook's CPU goes: the app's handler in process, against the same Storage calls made bare,
and the devhost's HTTP layer (which Azure does not run) as the rest of the devhost's CPU per request.

For `POST /api/mail` and `POST /api/alerts`, 16 concurrent callers, CPU time (user + system) per accepted
request:
- in process: the function `function_app` defines, called as the worker calls it (a `func.HttpRequest`);
- bare: the Storage calls that request makes, with the Storage SDKs and nothing else (mail: a status row and a
  queue message, concurrently; the intake figure's baseline is the enqueue alone);
- devhost: the devhost process's CPU per request over HTTP, whose excess over "in process" is the local
  host's share (uvicorn, starlette, the invoker's logs); a GET of an unknown path (the app's fallback answers
  404 without Storage) shows that share nearly alone.

`--profile` adds a cProfile of the in-process mail handler (top functions by own time and by cumulative time).
Not a `make bench` figure: a profile docs/benchmarks.md's "What limits each figure" quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from common import local_cloud, median
from cpu_per_mail import _cpu_seconds
from intake_latency import ALERT, BACKGROUND, MAIL

CLIENTS = 16
REQUESTS = 1500
RUNS = 3


async def _cpu_per_call(call: Callable[[int], Awaitable[None]], count: int = REQUESTS) -> float:
    """CPU seconds of this process per call, `count` calls from CLIENTS concurrent loops (after a warm-up)."""
    for n in range(50):
        await call(n)
    counter = iter(range(count))

    async def client() -> None:
        for n in counter:
            await call(n)

    started = time.process_time()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return (time.process_time() - started) / count


def _request(path: str, body: dict[str, Any]) -> Any:
    import azure.functions as func

    data = json.dumps(body).encode()
    headers = {"content-type": "application/json", "content-length": str(len(data)), "host": "127.0.0.1"}
    return func.HttpRequest("POST", f"http://127.0.0.1:7071{path}", headers=headers, params={}, body=data)


async def _in_process(name: str, path: str, body: dict[str, Any], profile: cProfile.Profile | None) -> float:
    import function_app
    from shared.functions import shutdown

    function = getattr(function_app, name).build().get_user_function()
    request = _request(path, body)

    async def call(_: int) -> None:
        answer = await function(request)
        assert answer.status_code == 202, answer.get_body()

    try:
        if profile is None:
            return await _cpu_per_call(call)
        profile.enable()
        try:
            return await _cpu_per_call(call)
        finally:
            profile.disable()
    finally:
        await shutdown()


async def _bare(connection: str, with_row: bool) -> float:
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables.aio import TableClient
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    options: dict[str, Any] = {"use_env_settings": False}
    queue = QueueClient.from_connection_string(
        connection, "bare-outbox", message_encode_policy=TextBase64EncodePolicy(), **options
    )
    table = TableClient.from_connection_string(connection, "barestatus", **options)
    async with queue, table:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        with contextlib.suppress(ResourceExistsError):
            await table.create_table()
        text = json.dumps({**MAIL, "id": "x" * 32})

        async def call(_: int) -> None:
            row = {"PartitionKey": uuid.uuid4().hex, "RowKey": "status", "status": "queued", "hash": "h" * 64}
            if with_row:
                await asyncio.gather(table.create_entity(row), queue.send_message(text))
            else:
                await queue.send_message(text)

        return await _cpu_per_call(call)


def _devhost(cloud: Any, path: str, body: dict[str, Any] | None, status: int = 202) -> float:
    """The devhost's CPU per request; `body` None: a GET."""
    host = cloud.devhost("share", settings={f"AzureWebJobs.{name}.Disabled": "true" for name in BACKGROUND})
    try:

        async def load() -> None:
            limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:

                async def send() -> int:
                    url = f"{host.url}{path}"
                    answer = await (client.get(url) if body is None else client.post(url, json=body))
                    return answer.status_code

                for _ in range(50):
                    assert await send() == status
                before = _cpu_seconds(host.process.pid)
                counter = iter(range(REQUESTS))

                async def caller() -> None:
                    for _ in counter:
                        assert await send() == status

                await asyncio.gather(*(caller() for _ in range(CLIENTS)))
                nonlocal spent
                spent = (_cpu_seconds(host.process.pid) - before) / REQUESTS

        spent = 0.0
        asyncio.run(load())
        return spent
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process mail handler")
    parser.add_argument("--skip-devhost", action="store_true")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    with local_cloud() as cloud:
        os.environ.update(cloud.env)
        connection = cloud.azurite.connection_string
        for _ in range(RUNS):  # interleaved, so a change in the machine's load meets every figure alike
            for key, measure in (
                ("bare enqueue", lambda: asyncio.run(_bare(connection, False))),
                ("bare row + enqueue", lambda: asyncio.run(_bare(connection, True))),
                ("mail in process", lambda: asyncio.run(_in_process("post_mail", "/api/mail", MAIL, None))),
                ("alerts in process", lambda: asyncio.run(_in_process("post_alerts", "/api/alerts", ALERT, None))),
            ):
                figures.setdefault(key, []).append(measure() * 1000)
            if not args.skip_devhost:
                figures.setdefault("mail via devhost", []).append(_devhost(cloud, "/api/mail", MAIL) * 1000)
                figures.setdefault("alerts via devhost", []).append(_devhost(cloud, "/api/alerts", ALERT) * 1000)
                figures.setdefault("404 via devhost", []).append(_devhost(cloud, "/api/nothing", None, 404) * 1000)
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            asyncio.run(_in_process("post_mail", "/api/mail", MAIL, profile))
    for key, values in figures.items():
        print(f"{key:22} {median(values):6.2f} ms CPU per request  ({', '.join(f'{v:.2f}' for v in values)})")
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(r"shared|azure|aiohttp", 40)


if __name__ == "__main__":
    main()
