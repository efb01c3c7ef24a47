"""Mailbox digest cost: 10,000 unread messages in 12 folders, sandbox latency 50 ms per request and the throttle of
4 concurrent requests per mailbox on, each digest kind run end to end (read, render, record, submit the mail;
tagging also PATCHes every message through $batch). Graph requests are counted from the sandbox's log; the
sendMail is the outbox's, after the run, so it is added as 1.

Figures (issue 18): `report: new` first run at most folder pages + delta pages + 1 sendMail requests and under
5 s; the next run after 10 new messages at most 15 requests; `report: waiting` at most 25 requests; the
tagging digest keeps its bound (folder pages + message pages + 1 sendMail + ceil(n / 20) batches). Baseline in
the same run: the tagging digest's time (the way every digest worked before).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

from common import ROOT, SUPPORT, bench_line, local_cloud

FOLDERS = [
    "Inbox",
    "Inbox/Escalations",
    "Inbox/Escalations/Tier 3",
    "Inbox/Billing",
    "Inbox/Billing/Refunds",
    "Inbox/Partners",
    "Orders",
    "Orders/Returns",
    "Orders/Returns/Damaged",
    "Projects",
    "Projects/Alpha",
    "Projects/Beta",
]
MESSAGES = 10_000
ROUTING = """
receivers:
  - {name: oncall, to: [alice@contoso.test]}
route: {receiver: oncall}
digests:
  - {name: new, report: new, mailbox: support@contoso.test, folders: [Inbox, Orders, Projects],
     to: [alice@contoso.test]}
  - {name: waiting, report: waiting, mailbox: support@contoso.test, folders: [Inbox, Orders, Projects],
     to: [alice@contoso.test]}
  - {name: tagging, mailbox: support@contoso.test, folders: [Inbox, Orders, Projects], to: [alice@contoso.test]}
"""

RUN = """
import asyncio, json, sys, time
from datetime import UTC, datetime
from shared.routing_file import notify_config
from shared.config import settings
from shared.digests.mailbox import run_mailbox_digest
from shared.functions import shutdown
from shared.graph import graph_client
from shared.store import store

async def main(name):
    config = settings()
    digest = next(d for d in notify_config(config).digests if d.name == name)
    graph = graph_client(config)
    started = time.perf_counter()
    run = await run_mailbox_digest(digest, config, graph, store(config.storage), datetime.now(UTC))
    total = time.perf_counter() - started
    await shutdown()
    return {"total": total, "run": run.answer()}

print(json.dumps(asyncio.run(main(sys.argv[1]))))
"""


def _pages(log: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """(folder pages, message or delta pages, $batch requests, other requests) of a run's Graph requests."""
    paths = [str(r["path"]).lower() for r in log]
    folders = sum(1 for p in paths if p.endswith(("/mailfolders", "/childfolders", "/mailfolders/delta")))
    messages = sum(1 for p in paths if p.endswith(("/messages", "/messages/delta")))
    batches = sum(1 for p in paths if p == "/$batch")
    return folders, messages, batches, len(paths) - folders - messages - batches


def main() -> None:
    results: dict[str, Any] = {}
    with local_cloud() as cloud:
        seed = json.loads((ROOT / "sandbox" / "default_seed.json").read_text())
        for user in seed["users"]:
            user.pop("messages", None)  # exactly the benchmark's messages in support@
        cloud.sandbox.reset(seed)
        per_folder = MESSAGES // len(FOLDERS)
        for index, folder in enumerate(FOLDERS):
            count = per_folder + (MESSAGES % len(FOLDERS) if index == 0 else 0)
            cloud.sandbox.deliver(
                SUPPORT,
                [{"subject": f"{folder} {n}", "from": "c@fabrikam.test", "folder": folder} for n in range(count)],
            )
        routing = cloud.folder / "routing.yaml"
        routing.write_text(ROUTING)
        cloud.sandbox.set_faults(latencyMs=50, throttle={"concurrentPerMailbox": 4})
        env = {**cloud.env, "NOTIFY_CONFIG": str(routing), "PYTHONPATH": str(ROOT)}

        def digest(step: str, name: str) -> None:
            since = cloud.sandbox.last_seq()
            done = subprocess.run(
                [sys.executable, "-c", RUN, name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
            )
            if done.returncode:
                sys.exit(done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            log = cloud.sandbox.requests(since)
            throttled = sum(1 for r in log for s in r.get("requests", []) if s.get("status") == 429)
            results[step] = {
                **result,
                "pages": _pages(log),
                "throttled": throttled + sum(r["status"] == 429 for r in log),
            }

        digest("new, first run", "new")
        cloud.sandbox.deliver(
            SUPPORT, [{"subject": f"late {n}", "from": "d@fabrikam.test", "folder": FOLDERS[n]} for n in range(10)]
        )
        digest("new, after 10 new", "new")
        digest("waiting", "waiting")
        digest("tagging", "tagging")
    for step, result in results.items():
        run = result["run"]
        folders, messages, batches, other = result["pages"]
        requests = folders + messages + batches + other + (1 if run["outcome"] == "sent" else 0)
        print(
            f"{step}: {run['messages']} messages reported in {result['total']:.2f} s; {requests} requests = "
            f"{folders} folder pages + {messages} message/delta pages + {batches} $batch + {other} other + 1 sendMail; "
            f"tagged {run['tagged']}; throttled {result['throttled']}"
        )
    tagging = results["tagging"]
    run = tagging["run"]
    folders, messages, batches, _ = tagging["pages"]
    bound = folders + messages + 1 + math.ceil(run["messages"] / 20)
    print(f"tagging bound: {bound}; spent {folders + messages + batches + 1}")
    first = results["new, first run"]
    seconds, tagging_seconds = float(first["total"]), float(tagging["total"])
    folders, messages, batches, other = first["pages"]
    within = other == 0 and batches == 0 and seconds < 5
    bench_line(
        "digest_new_10000",
        seconds,
        "s",
        f"tagging digest {tagging_seconds:.1f} s",
        ratio=seconds / tagging_seconds,
        target="< 5 s, folder + delta pages + 1 requests",
        met=within,
    )


if __name__ == "__main__":
    main()
