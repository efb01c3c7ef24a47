"""Drain throughput, in both delivery modes: 2,000 queued mails from one sender, sandbox latency 100 ms and a
throttle of 4 concurrent requests per mailbox, so Graph's ceiling is 40 mails/s for sendMail (one request a
mail) and 20 mails/s for drafts (two: create, send). One devhost process, then two, drain the queue; the
figure is mails per second from the first send to the last, and Graph requests per mail. Checked: none lost,
none sent twice, and the share of Graph requests answered 429. Baseline in the same run: a raw httpx
sendMail loop with 4 concurrent requests against the same sandbox settings (the ceiling as this machine
reaches it).

Also measured: the peak memory (VmHWM) of the one sending process over its drain, in each mode.

Targets (issue 19): in sendMail mode, one process and two processes each at least 95% of the raw loop's rate;
in draft mode at least 95% of a raw httpx draft loop (create, send; 4 concurrent) measured in the same run;
no loss or duplicate; 429s under 1% of Graph requests; the sending process's peak memory under 150 MB.
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
CEILING = {"sendmail": 40.0, "draft": 20.0}  # 4 concurrent requests of 100 ms; a draft mail takes two
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


async def _raw_loop(cloud: object, mode: str, seconds: float = 15.0) -> float:
    """Mails a second that bare httpx gets through the sandbox's throttle: one sendMail a mail, or (draft) a
    draft created and then sent, the two requests the delivery engine needs at the least."""
    sandbox = cloud.sandbox  # type: ignore[attr-defined]
    token = sandbox.token(sandbox.env["GRAPH_CLIENT_ID"], "sandbox-graph-client-secret")
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    message = {
        "subject": "raw",
        "body": {"contentType": "text", "content": "drain"},
        "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
    }
    users = f"{sandbox.url}/v1.0/users/{SENDER}"
    sent = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                if mode == "sendmail":
                    answer = await client.post(f"{users}/sendMail", json={"message": message})
                else:
                    draft = await client.post(f"{users}/messages", json=message)
                    if draft.status_code != 201:
                        continue
                    answer = await client.post(f"{users}/messages/{draft.json()['id']}/send")
                sent += answer.status_code == 202

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        return sent / (time.perf_counter() - started)


def _is_send(entry: dict[str, object]) -> bool:
    path = str(entry["path"])
    return path.endswith("/sendMail") or (entry["method"] == "POST" and path.endswith("/send"))


def _drain(cloud: object, processes: int, run: str, mode: str) -> dict[str, float]:
    sandbox, azurite = cloud.sandbox, cloud.azurite  # type: ignore[attr-defined]
    _enqueue(azurite.connection_string, run)
    since = sandbox.last_seq()
    settings = {f"AzureWebJobs.{name}.Disabled": "true" for name in OTHERS}
    settings["MAIL_DELIVERY_MODE"] = mode
    hosts = [cloud.devhost(f"{run}-{n}", settings=settings) for n in range(processes)]  # type: ignore[attr-defined]
    try:
        cloud.wait_sent(f"{run} ", MAILS)  # type: ignore[attr-defined]
        time.sleep(3)  # anything sent twice would show now
        peak_mb = max(vm_peak_mb(host.process.pid) for host in hosts)
    finally:
        for host in hosts:
            host.stop()
    log = [r for r in sandbox.requests(since) if not str(r["path"]).startswith("/_sandbox")]
    requests = [r for r in log if _is_send(r)]
    accepted = sorted(r["seq"] for r in requests if r["status"] == 202)
    first = next(r for r in log if r["method"] == "POST")
    times = {r["seq"]: r for r in log}
    subjects = Counter(m["subject"] for m in sandbox.sent() if m["subject"].startswith(f"{run} "))
    elapsed = _span(times, first["seq"], accepted[-1])
    return {
        "rate": len(accepted) / elapsed if elapsed else 0.0,
        "sent": len(subjects),
        "duplicates": sum(c - 1 for c in subjects.values()),
        "throttled": sum(1 for r in log if r["status"] == 429) / len(log),
        "requests": len(log),
        "per_mail": len(log) / max(1, len(subjects)),
        "peak_mb": peak_mb,
    }


def _span(entries: dict[int, dict[str, object]], first: int, last: int) -> float:
    """Seconds between two request-log entries (the log records when each request finished)."""
    return float(entries[last]["at"]) - float(entries[first]["at"])  # type: ignore[arg-type]


def main() -> None:
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    raws: dict[str, list[float]] = {}
    for n in range(RUNS):  # a fresh sandbox and Azurite each run, so no run pays for an earlier one's state
        for mode in CEILING:
            for processes in (1, 2):
                with local_cloud() as cloud:
                    cloud.sandbox.set_faults(**FAULTS)
                    if processes == 1:
                        raws.setdefault(mode, []).append(asyncio.run(_raw_loop(cloud, mode)))
                    result = _drain(cloud, processes, f"{mode}{processes}x{n}", mode)
                results.setdefault((mode, processes), []).append(result)
    for (mode, processes), runs in results.items():
        for result in runs:
            print(
                f"{mode}, {processes} process(es): {result['rate']:.1f} mails/s "
                f"({result['rate'] / CEILING[mode]:.0%} of the ceiling), {int(result['sent'])} sent, "
                f"{int(result['duplicates'])} duplicates, {result['per_mail']:.2f} Graph requests a mail, "
                f"{result['throttled']:.1%} of {int(result['requests'])} requests throttled, "
                f"peak RSS {result['peak_mb']:.0f} MB"
            )
        prefix = "drain" if mode == "sendmail" else "drain_draft"
        name = f"{prefix}_{'one_process' if processes == 1 else 'two_processes'}"
        baseline = median(raws[mode])
        loop = "sendMail" if mode == "sendmail" else "draft + send"
        base = f"raw httpx {loop} loop, 4 concurrent: {baseline:.1f} mails/s"
        rate = median([r["rate"] for r in runs])
        met = rate >= 0.95 * baseline
        bench_line(name, rate, "mails/s", base, ratio=rate / baseline, target=">= 0.95x baseline", met=met)
        throttled = median([r["throttled"] * 100 for r in runs])
        bench_line(f"{name}_429", throttled, "% of Graph requests", target="< 1%", met=throttled < 1)
        bench_line(f"{name}_requests_per_mail", median([r["per_mail"] for r in runs]), "requests")
        if processes == 1:
            peak = median([r["peak_mb"] for r in runs])
            bench_line(f"{prefix}_worker_peak_rss", peak, "MB", target="< 150 MB", met=peak < 150)
    if any(r["sent"] < MAILS or r["duplicates"] for runs in results.values() for r in runs):
        sys.exit("mails were lost or duplicated")


if __name__ == "__main__":
    main()
