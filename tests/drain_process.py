"""A mail-outbox sender in a process of its own, polling as the host does until it is killed: the tests that
kill a sender mid-drain (`kill -9`) run this. The app's settings come from the environment; QUEUE_LOCK_SECONDS
sets how long a received message stays invisible (the host's lock), so a killed run's messages come back soon.
"""

from __future__ import annotations

import asyncio
import os

from devhost.queues import QueueSettings, QueueTrigger


async def main() -> None:
    import function_app

    from .helpers import user_function

    trigger = QueueTrigger(
        os.environ["AzureWebJobsStorage"],  # noqa: SIM112 (the host's own name for it)
        "mail-outbox",
        user_function(function_app.mail_outbox),
        QueueSettings(max_polling_interval=0.2, lock_seconds=float(os.environ["QUEUE_LOCK_SECONDS"])),
    )
    print("draining", flush=True)
    await trigger.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main())
