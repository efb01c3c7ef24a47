"""Drain throughput: 2,000 queued mails from one sender, sandbox latency 100 ms and a throttle of 4 concurrent
requests per mailbox, so Graph's ceiling is 40 mails/s. One devhost process, then two, drain the queue; the
figure is mails per second from the first send to the last. Checked: none lost, none sent twice, and the
share of Graph requests answered 429. Baseline in the same run: a raw httpx sendMail loop with 4 concurrent
requests against the same sandbox settings (the ceiling as this machine reaches it).

Also measured: the peak memory (VmHWM) of the one sending process over its drain.

Targets (issue 19): one process and two processes each at least 95% of the raw loop's rate, no loss or
duplicate, 429s under 1% of sendMail requests; the sending process's peak memory under 150 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections import Counter

import httpx
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy
from common import SENDER, bench_line, local_cloud, median, vm_peak_mb

MAILS = 2000
RUNS = 3  # the figures are medians over the runs
CEILING = 40.0
FAULTS = {"latencyMs": 100, "throttle": {"concurrentPerMailbox": 4}}
OTHERS = ("post_mail", "alerts_inbox", "alerts_flush", "digest_timer")


def _enqueue(connection: str, run: str, count: int = MAILS) -> None:
    queue = QueueClient.from_connection_string(
        connection, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
    )
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    for n in range(count):
        mail = {"id": f"{run}-{n}", "to": ["alice@contoso.test"], "subject": f"{run} {n}", "text": "drain"}
        queue.send_message(json.dumps(mail))
    queue.close()


async def _raw_loop(cloud: object, seconds: float = 15.0) -> float:
    sandbox = cloud.sandbox  # type: ignore[attr-defined]
    token = sandbox.token(sandbox.env["GRAPH_CLIENT_ID"], "sandbox-graph-client-secret")
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    sent = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                answer = await client.post(
                    f"{sandbox.url}/v1.0/users/{SENDER}/sendMail",
                    json={
                        "message": {
                            "subject": "raw",
                            "body": {"contentType": "text", "content": "drain"},
                            "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
                        }
                    },
                )
                sent += answer.status_code == 202

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        return sent / (time.perf_counter() - started)


def _drain(cloud: object, processes: int, run: str) -> dict[str, float]:
    sandbox, azurite = cloud.sandbox, cloud.azurite  # type: ignore[attr-defined]
    _enqueue(azurite.connection_string, run)
    since = sandbox.last_seq()
    settings = {f"AzureWebJobs.{name}.Disabled": "true" for name in OTHERS}
    hosts = [cloud.devhost(f"{run}-{n}", settings=settings) for n in range(processes)]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            sent = [m for m in sandbox.sent() if m["subject"].startswith(f"{run} ")]
            if len(sent) >= MAILS:
                break
            time.sleep(0.5)
        time.sleep(3)  # anything sent twice would show now
        peak_mb = max(vm_peak_mb(host.process.pid) for host in hosts)
    finally:
        for host in hosts:
            host.stop()
    requests = [r for r in sandbox.requests(since) if r["path"].endswith("/sendMail")]
    accepted = sorted(r["seq"] for r in requests if r["status"] == 202)
    first = next(r for r in requests if r["status"] == 202)
    log = sandbox.requests(since)
    times = {r["seq"]: r for r in log}
    subjects = Counter(m["subject"] for m in sandbox.sent() if m["subject"].startswith(f"{run} "))
    elapsed = _span(times, first["seq"], accepted[-1])
    return {
        "rate": len(accepted) / elapsed if elapsed else 0.0,
        "sent": len(subjects),
        "duplicates": sum(c - 1 for c in subjects.values()),
        "throttled": sum(1 for r in requests if r["status"] == 429) / len(requests),
        "requests": len(requests),
        "peak_mb": peak_mb,
    }


def _span(entries: dict[int, dict[str, object]], first: int, last: int) -> float:
    """Seconds between two request-log entries (the log records when each request finished)."""
    return float(entries[last]["at"]) - float(entries[first]["at"])  # type: ignore[arg-type]


def main() -> None:
    ones: list[dict[str, float]] = []
    twos: list[dict[str, float]] = []
    raws: list[float] = []
    for n in range(RUNS):  # a fresh sandbox and Azurite each run, so no run pays for an earlier one's state
        with local_cloud() as cloud:
            cloud.sandbox.set_faults(**FAULTS)
            raws.append(asyncio.run(_raw_loop(cloud)))
            ones.append(_drain(cloud, 1, f"one{n}"))
        with local_cloud() as cloud:
            cloud.sandbox.set_faults(**FAULTS)
            twos.append(_drain(cloud, 2, f"two{n}"))
    baseline = median(raws)
    for name, results in (("one process", ones), ("two processes", twos)):
        for result in results:
            print(
                f"{name}: {result['rate']:.1f} mails/s ({result['rate'] / CEILING:.0%} of the ceiling), "
                f"{int(result['sent'])} sent, {int(result['duplicates'])} duplicates, "
                f"{result['throttled']:.1%} of {int(result['requests'])} sendMail requests throttled, "
                f"peak RSS {result['peak_mb']:.0f} MB"
            )
    base = f"raw httpx loop, 4 concurrent: {baseline:.1f} mails/s"
    for name, results in (("drain_one_process", ones), ("drain_two_processes", twos)):
        rate = median([r["rate"] for r in results])
        met = rate >= 0.95 * baseline
        bench_line(name, rate, "mails/s", base, ratio=rate / baseline, target=">= 0.95x baseline", met=met)
        throttled = median([r["throttled"] * 100 for r in results])
        bench_line(f"{name}_429", throttled, "% of sendMail", target="< 1%", met=throttled < 1)
    peak = median([r["peak_mb"] for r in ones])
    bench_line("drain_worker_peak_rss", peak, "MB", target="< 150 MB", met=peak < 150)
    if any(r["sent"] < MAILS or r["duplicates"] for r in ones + twos):
        sys.exit("mails were lost or duplicated")


if __name__ == "__main__":
    main()
