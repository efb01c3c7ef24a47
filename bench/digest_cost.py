"""Mailbox digest cost: a digest of 10,000 unread messages in 12 folders, sandbox latency 50 ms per request and
the throttle of 4 concurrent requests per mailbox on, run end to end (list, render, record, submit the mail,
tag every message through $batch). Reported: the time, and the Graph requests against the digest issue's
bound (folder pages + message pages + 1 sendMail + ceil(n / 20) batches; the sendMail is the outbox's, after
the run). Baseline in the same run: the time of the listing alone (the part no tagging strategy can avoid).

Target: at most 15 s end to end within that request bound.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

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
  - name: bench
    mailbox: support@contoso.test
    folders: [Inbox, Orders, Projects]
    include_child_folders: true
    to: [alice@contoso.test]
"""

RUN = """
import asyncio, json, time
from datetime import UTC, datetime
from shared.routing_file import notify_config
from shared.config import settings
from shared.digests.mailbox import _collect, run_mailbox_digest
from shared.functions import shutdown
from shared.graph import graph_client
from shared.store import store

async def main():
    config = settings()
    digest = notify_config(config).digests[0]
    graph = graph_client(config)
    started = time.perf_counter()
    await _collect(digest, graph, "1900-01-01T00:00:00Z")
    listing = time.perf_counter() - started
    started = time.perf_counter()
    run = await run_mailbox_digest(digest, config, graph, store(config.storage), datetime.now(UTC))
    total = time.perf_counter() - started
    await shutdown()
    return {"listing": listing, "total": total, "run": run.answer()}

print(json.dumps(asyncio.run(main())))
"""


def main() -> None:
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
        since = cloud.sandbox.last_seq()
        done = subprocess.run(
            [sys.executable, "-c", RUN],
            cwd=ROOT,
            env={**cloud.env, "NOTIFY_CONFIG": str(routing), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        log = [r for r in cloud.sandbox.requests(since)]
    run = result["run"]
    tagged_messages = run["messages"]
    listing_requests = [r for r in log if r["method"] == "GET"]
    folder_pages = [r for r in listing_requests if r["path"].lower().endswith(("/mailfolders", "/childfolders"))]
    message_pages = [r for r in listing_requests if r["path"].lower().endswith("/messages")]
    batches = [r for r in log if r["path"] == "/$batch"]
    throttled = sum(1 for b in batches for s in b.get("requests", []) if s.get("status") == 429)
    run_pages = (len(folder_pages) + len(message_pages)) // 2  # the listing ran twice: the baseline, then the run
    bound = run_pages + 1 + math.ceil(MESSAGES / 20)
    print(
        f"digest of {tagged_messages} messages in {len(run['folders'])} folders: {result['total']:.1f} s end to end, "
        f"listing alone {result['listing']:.1f} s; tagged {run['tagged']}, left {run['untagged']}"
    )
    print(
        f"requests of the run: {run_pages} listing pages + 1 sendMail (outbox) + {len(batches)} $batch "
        f"= {run_pages + 1 + len(batches)} (bound {bound}); throttled sub-requests: {throttled}"
    )
    bench_line("digest_10000", result["total"], "s", f"listing alone {result['listing']:.1f} s")


if __name__ == "__main__":
    main()
