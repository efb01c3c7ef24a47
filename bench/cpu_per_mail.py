"""CPU per delivered mail in the app process: the devhost's CPU time (user + system, from /proc) while it
drains 1,000 queued mails, divided by the mails, with the sandbox at full speed (no latency, no throttle).
Baseline in the same run: the CPU per mail of a raw httpx sendMail loop (4 concurrent) in this process.

Target (issue 19): at most 4x the baseline, sendMail mode.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import httpx
from common import SENDER, bench_line, local_cloud, median
from drain import OTHERS, _enqueue

MAILS = 1000
RUNS = 3  # the figures are medians over the runs


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _raw(cloud: object) -> float:
    sandbox = cloud.sandbox  # type: ignore[attr-defined]
    token = sandbox.token(sandbox.env["GRAPH_CLIENT_ID"], "sandbox-graph-client-secret")
    context = ssl.create_default_context(cafile=sandbox.env["SSL_CERT_FILE"])
    body = {
        "message": {
            "subject": "raw",
            "body": {"contentType": "text", "content": "cpu"},
            "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
        }
    }
    async with httpx.AsyncClient(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        url = f"{sandbox.url}/v1.0/users/{SENDER}/sendMail"
        await client.post(url, json=body)
        counter = iter(range(MAILS))
        started = time.process_time()

        async def worker() -> None:
            for _ in counter:
                assert (await client.post(url, json=body)).status_code == 202

        await asyncio.gather(*(worker() for _ in range(4)))
        return (time.process_time() - started) / MAILS


def _drained_cpu(cloud: object, run: str) -> float:
    """CPU seconds per mail of a devhost draining MAILS queued mails."""
    settings = {f"AzureWebJobs.{name}.Disabled": "true" for name in OTHERS}
    host = cloud.devhost(f"cpu-{run}", settings=settings)  # type: ignore[attr-defined]
    try:
        idle = _cpu_seconds(host.process.pid)
        _enqueue(cloud.azurite.connection_string, run, MAILS)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 300
        while len([m for m in cloud.sandbox.sent() if m["subject"].startswith(f"{run} ")]) < MAILS:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit("the drain did not finish")
            time.sleep(0.5)
        time.sleep(1)
        return (_cpu_seconds(host.process.pid) - idle) / MAILS
    finally:
        host.stop()


def main() -> None:
    with local_cloud() as cloud:
        raws = [asyncio.run(_raw(cloud)) for _ in range(RUNS)]
        apps = [_drained_cpu(cloud, f"cpu{n}") for n in range(RUNS)]
    raw, per_mail = median(raws), median(apps)
    print(f"app process: {[round(a * 1000, 1) for a in apps]} ms CPU per mail ({MAILS} mails a run)")
    print(f"raw httpx sendMail loop: {[round(r * 1000, 2) for r in raws]} ms CPU per mail; ratio {per_mail / raw:.1f}x")
    bench_line(
        "cpu_per_mail",
        per_mail * 1000,
        "ms",
        f"raw httpx sendMail loop {raw * 1000:.2f} ms",
        ratio=per_mail / raw,
        target="<= 4x baseline",
        met=per_mail <= 4 * raw,
    )


if __name__ == "__main__":
    main()
