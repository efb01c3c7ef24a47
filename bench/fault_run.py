"""Fault runs of the mail path: 300 mails accepted over HTTP and drained by a devhost of the real app while
(a) Azurite is stopped for 20 s mid-drain, (b) Graph answers with 100 ms latency, 20% 503/429 and 5% dropped
connections, and (c) Graph loses answers: 20% of the requests that change state are carried out and their
answer lost (the sandbox's `ambiguousRate`: a 504 or a closed connection after the draft, attachment or send
was done). Checked for each: every accepted mail sent exactly once, none lost, none left `sending` or
`queued`. Not a benchmark: it prints what happened and exits non-zero on a defect.

    .venv/bin/python bench/fault_run.py [storage|graph|ambiguous]
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter

import httpx
from common import LocalCloud, local_cloud

MAILS = 300
OTHERS = ("alerts_inbox", "alerts_flush", "digest_timer")


def _accept(host_url: str, run: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=host_url, timeout=30) as client:
        for n in range(MAILS):
            mail = {"id": f"{run}-{n}", "to": ["alice@contoso.test"], "subject": f"{run} {n}", "text": "fault run"}
            answer = client.post("/api/mail", json=mail)
            answer.raise_for_status()
            ids.append(answer.json()["id"])
    return ids


def _statuses(host_url: str, ids: list[str]) -> Counter[str]:
    with httpx.Client(base_url=host_url, timeout=30) as client:
        return Counter(client.get(f"/api/mail/{i}").json().get("status", "?") for i in ids)


def _restart_storage(cloud: LocalCloud, down_seconds: float) -> float:
    """Stop Azurite (SIGINT: it saves its state), keep it down, start it again on the same ports and folder."""
    azurite = cloud.azurite
    assert azurite.process is not None
    started = time.monotonic()
    azurite.process.send_signal(signal.SIGINT)
    azurite.process.wait(60)
    time.sleep(max(0.0, down_seconds - (time.monotonic() - started)))
    azurite.start()  # the same object: the cloud's clean-up stops this process too
    return time.monotonic() - started


def _run(kind: str) -> bool:
    with local_cloud() as cloud:
        settings = {f"AzureWebJobs.{name}.Disabled": "true" for name in OTHERS}
        host = cloud.devhost(f"fault-{kind}", "--lock-seconds", "30", settings=settings)
        try:
            if kind == "graph":
                cloud.sandbox.set_faults(
                    latencyMs=100, errorRate=0.2, errorStatuses=[503, 429], dropConnectionRate=0.05, randomSeed=11
                )
            elif kind == "ambiguous":
                cloud.sandbox.set_faults(latencyMs=100, ambiguousRate=0.2, randomSeed=13)
            else:
                cloud.sandbox.set_faults(latencyMs=100, throttle={"concurrentPerMailbox": 4})
            ids = _accept(host.url, kind)
            down = 0.0
            if kind == "storage":
                while len(cloud.sandbox.sent()) < MAILS // 3:  # a third delivered: stop Storage mid-drain
                    time.sleep(0.05)
                down = _restart_storage(cloud, 20)
            deadline = time.monotonic() + 600
            statuses: Counter[str] = Counter()
            while time.monotonic() < deadline:
                statuses = _statuses(host.url, ids)
                if statuses["sent"] + statuses["failed"] == MAILS:
                    break
                time.sleep(2)
            time.sleep(5)  # a late second copy would show now
            sent = Counter(m["subject"] for m in cloud.sandbox.sent())
            log = cloud.sandbox.requests()
            requests = [r for r in log if r["path"].endswith("/sendMail") or r["path"].endswith("/send")]
            lost_answers = sum(1 for r in log if r.get("ambiguous"))
        finally:
            host.stop()
    duplicates = sum(c - 1 for c in sent.values())
    lost = MAILS - len(sent)
    outcome = Counter(r["status"] for r in requests)
    print(
        json.dumps(
            {
                "run": kind,
                "accepted": MAILS,
                "delivered": len(sent),
                "duplicates": duplicates,
                "lost": lost,
                "statuses": dict(statuses),
                "sendAnswers": {str(k): v for k, v in sorted(outcome.items(), key=lambda i: str(i[0]))},
                "lostAnswers": lost_answers,
                "storageDownSeconds": round(down, 1),
            }
        )
    )
    return duplicates == 0 and lost == 0 and statuses["sent"] == MAILS


def main() -> None:
    kinds = sys.argv[1:] or ["storage", "graph", "ambiguous"]
    results = [_run(kind) for kind in kinds]
    if not all(results):
        sys.exit("a fault run lost, duplicated or stranded mail")


if __name__ == "__main__":
    main()
