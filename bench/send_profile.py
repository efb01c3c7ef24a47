"""Where a delivered mail's CPU goes, in process: the `mail_outbox` function called as the worker calls it (a
`func.QueueMessage`, 4 at a time), for each delivery mode, with the sandbox at full speed. Printed per mode: CPU
per mail, the Storage and Graph requests per mail, and with `--profile` a cProfile (top functions by own time,
and the share of the SDK pipelines). The queue's own receive and delete are the host's, so they are not here.

Not a `make bench` figure: a profile docs/benchmarks.md's "What limits each figure" quotes.

    python bench/send_profile.py [--profile] [--mails 600]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import local_cloud

RESULTS = Path(__file__).resolve().parent / "results"

MODES = ("sendmail", "draft")
_ENTRIES = ("run", "send_primitive_async", "send_no_response_content_async", "deliver")


async def _drain(run: str, mails: int, profile: cProfile.Profile | None) -> tuple[float, Counter[str]]:
    """CPU seconds per mail of delivering `mails` queue messages in this process, and the Storage requests by
    method, counted at azure-core's transport."""
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.functions.queue import QueueMessage

    import function_app
    from shared.functions import shutdown

    function = function_app.mail_outbox.build().get_user_function()
    requests: Counter[str] = Counter()
    send = AioHttpTransport.send

    async def counted(self: AioHttpTransport, request: Any, **kwargs: Any) -> Any:
        requests[f"{request.method} {request.url.split('?')[0].rsplit('/', 1)[-1][:24]}"] += 1
        return await send(self, request, **kwargs)

    def message(n: int) -> QueueMessage:
        mail = {"id": f"{run}-{n}", "to": ["alice@contoso.test"], "subject": f"{run} {n}", "text": "profile"}
        return QueueMessage(id=f"{run}-{n}", body=json.dumps(mail).encode(), dequeue_count=1)

    try:
        for n in range(20):  # warm: clients made, tables listed, token fetched, modules imported
            await function(message(n))
        AioHttpTransport.send = counted  # type: ignore[method-assign]
        counter = iter(range(20, 20 + mails))

        async def worker() -> None:
            for n in counter:
                await function(message(n))

        if profile is not None:
            profile.enable()
        started = time.process_time()
        await asyncio.gather(*(worker() for _ in range(4)))
        spent = time.process_time() - started
        if profile is not None:
            profile.disable()
        return spent / mails, requests
    finally:
        AioHttpTransport.send = send  # type: ignore[method-assign]
        await shutdown()


def _shares(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative time of the outermost calls into each layer, as a share of the profile's total."""
    raw: Any = stats.stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in raw.values())
    layers = {
        "azure-core pipeline (Storage)": "azure/core/pipeline/_base_async.py",
        "kiota/msgraph (Graph)": "kiota_http/httpx_request_adapter.py",
        "the app's sender (shared/outbox.py)": "shared/outbox.py",
    }
    shares: dict[str, float] = {}
    for name, path in layers.items():
        tops = [(key, entry) for key, entry in raw.items() if key[0].endswith(path) and key[2] in _ENTRIES]
        shares[name] = max((entry[3] for _, entry in tops), default=0.0) / total
    return shares


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true", help="cProfile each mode's drain")
    parser.add_argument("--mails", type=int, default=600)
    args = parser.parse_args()
    with local_cloud() as cloud:
        os.environ.update(cloud.env)
        for mode in MODES:
            os.environ["MAIL_DELIVERY_MODE"] = mode
            from shared.config import settings

            settings.cache_clear()  # type: ignore[attr-defined]
            profile = cProfile.Profile() if args.profile else None
            since = cloud.sandbox.last_seq()
            per_mail, storage = asyncio.run(_drain(mode, args.mails, profile))
            graph = Counter(
                f"{r['method']} {str(r['path']).rsplit('/', 1)[-1][:24]}"
                for r in cloud.sandbox.requests(since)
                if not str(r["path"]).startswith("/_sandbox")
            )
            print(f"== {mode}: {per_mail * 1000:.2f} ms CPU per mail ({args.mails} mails, 4 at a time)")
            print(f"Storage requests per mail: {sum(storage.values()) / args.mails:.2f}  {dict(storage.most_common())}")
            print(f"Graph requests (incl. warm-up): {dict(graph.most_common())}")
            if profile is not None:
                profile.dump_stats(RESULTS / f"send_profile_{mode}.prof")  # for pstats or snakeviz
                stats = pstats.Stats(profile)
                for layer, share in _shares(stats).items():
                    print(f"{layer}: {share:.0%} of the profiled time")
                stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
