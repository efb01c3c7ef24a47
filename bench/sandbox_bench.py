"""Sandbox speed: start-up, sendMail throughput, and a 1000-message page (faults off).

Run with `make bench` (or `.venv/bin/python bench/sandbox_bench.py`). Prints one `BENCH <name> <value> <unit>`
line per figure (`bench/common.py`); sandbox/README.md quotes them. The client runs on the same 2-core machine and
shares its CPU.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from common import bench_line  # puts the project on sys.path

from sandbox.launcher import SandboxProcess

SENDER = "notifications@contoso.test"
SUPPORT = "support@contoso.test"
CONCURRENCY = 16
SENDS = 3000
PAGE_MESSAGES = 5000
PAGE_RUNS = 15


def _token(sandbox: SandboxProcess) -> str:
    return sandbox.token(sandbox.env["GRAPH_CLIENT_ID"], "sandbox-graph-client-secret")


async def _send_throughput(sandbox: SandboxProcess, token: str) -> float:
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{sandbox.url}/v1.0/users/{SENDER}/sendMail"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(SENDS):
        queue.put_nowait(n)
    failures = 0

    async with httpx.AsyncClient(verify=context, limits=limits, headers=headers, timeout=30) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                n = queue.get_nowait()
                answer = await client.post(
                    url,
                    json={
                        "message": {
                            "subject": f"Bench {n}",
                            "body": {"contentType": "text", "content": "CPU at 97% on web-3"},
                            "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
                        }
                    },
                )
                failures += answer.status_code != 202

        await client.post(url, json={"message": {"toRecipients": [{"emailAddress": {"address": "a@b.test"}}]}})
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{failures} sendMail calls failed")
    return SENDS / elapsed


def _page_times(sandbox: SandboxProcess, token: str) -> list[float]:
    sandbox.deliver(
        SUPPORT,
        [
            {
                "subject": f"Ticket {i}",
                "from": f"c{i % 9}@fabrikam.test",
                "body": f"Customer message {i} " + "lorem ipsum " * 20,
            }
            for i in range(PAGE_MESSAGES)
        ],
    )
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    times = []
    with httpx.Client(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(PAGE_RUNS):
            started = time.perf_counter()
            answer = client.get(f"{sandbox.url}/v1.0/users/{SUPPORT}/messages", params={"$top": "1000"})
            times.append((time.perf_counter() - started) * 1000)
            assert len(answer.json()["value"]) == 1000
    return times


def _small_get_times(sandbox: SandboxProcess, token: str) -> list[float]:
    """Sequential small GETs on one connection: catches per-request stalls such as Nagle + delayed ACK."""
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    times = []
    with httpx.Client(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(200):
            started = time.perf_counter()
            client.get(f"{sandbox.url}/v1.0/users/{SUPPORT}/mailFolders/inbox").raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        startups = []
        for _ in range(3):
            with SandboxProcess(Path(data) / "startup") as sandbox:
                startups.append(sandbox.startup_seconds)
        with SandboxProcess(Path(data) / "bench") as sandbox:
            token = _token(sandbox)
            rates = [asyncio.run(_send_throughput(sandbox, token)) for _ in range(3)]
            small = _small_get_times(sandbox, token)
            pages = _page_times(sandbox, token)
    print(f"sandbox start-up: {[round(s, 2) for s in startups]} s")
    print(
        f"sendMail throughput, {CONCURRENCY} concurrent clients, {SENDS} mails per run: "
        f"{[round(r) for r in rates]} mails/s"
    )
    print(
        f"GET $top=1000 of {PAGE_MESSAGES} messages: median {statistics.median(pages):.0f} ms, "
        f"max {max(pages):.0f} ms over {PAGE_RUNS} runs"
    )
    print(f"sequential GET mailFolders/inbox: median {statistics.median(small):.1f} ms over {len(small)}")
    latency, startup, page, rate = (
        statistics.median(small),
        statistics.median(startups),
        statistics.median(pages),
        statistics.median(rates),
    )
    bench_line("sandbox_get_latency", latency, "ms", target="< 5 ms (no per-request stall)", met=latency < 5)
    bench_line("sandbox_startup", startup, "s", target="< 3 s", met=startup < 3)
    bench_line("sandbox_page_1000", page, "ms", target="< 200 ms", met=page < 200)
    bench_line("sandbox_sendmail", rate, "mails/s", target=">= 300 mails/s", met=rate >= 300)


if __name__ == "__main__":
    main()
