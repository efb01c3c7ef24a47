"""The digest timer's tick: which digests are due now, each occurrence claimed once across instances, then run.

Every mailbox digest and every `mode: digest` alert receiver has a schedule: its own (`schedule` +
`timezone` in the routing file) or the global UTC setting (`MAILBOX_DIGEST_SCHEDULE`, `ALERT_DIGEST_SCHEDULE`).
Per digest and tick: read its claims (`digestschedule`), ask `shared.schedules.take_turn` what is due, and if
this instance claimed an occurrence to run, run the digest. A digest that fails is logged and noted on its
claim; the others still run. Evaluating costs no Graph request.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ..config import Settings
from ..routing_file import MailboxDigest, NotifyConfig, Receiver
from ..schedules import Due, Schedule, Turn, global_schedule, last_claimed, schedule_key, take_turn
from ..store import Store
from .alerts import run_alert_digest
from .mailbox import run_mailbox_digest

if TYPE_CHECKING:
    from ..graph import GraphClient

log = logging.getLogger("notifier.digests")

INSTANCE = f"{socket.gethostname()}:{os.getpid()}"
STALE_CLAIM = timedelta(minutes=15)  # a claim this old with no outcome: its instance died running it


@dataclass(frozen=True)
class Ticked:
    """One digest at one tick: its key, what was decided, and what the run (if any) came to."""

    key: str
    reason: str
    ran: datetime | None = None
    outcome: str = ""


async def run_due_digests(
    config: NotifyConfig,
    settings: Settings,
    store: Store,
    graph: Callable[[], GraphClient],
    now: datetime,
) -> list[Ticked]:
    """Run every digest whose schedule has an occurrence due at `now` that no instance has claimed yet."""
    grace = timedelta(minutes=settings.digest_grace_minutes)
    mailbox_default = global_schedule(settings.mailbox_digest_schedule, "MAILBOX_DIGEST_SCHEDULE")
    alert_default = global_schedule(settings.alert_digest_schedule, "ALERT_DIGEST_SCHEDULE")
    ticks: list[Ticked] = []
    for digest in config.digests:
        key = schedule_key("mailbox", digest.name)
        run = functools.partial(_mailbox_digest, digest, settings, store, graph, now)
        ticks.append(await _tick(store, key, digest.own_schedule() or mailbox_default, now, grace, run))
    for receiver in config.receivers:
        if receiver.mode == "digest":
            key = schedule_key("alerts", receiver.name)
            run = functools.partial(_alert_digest, receiver, settings, store, now)
            ticks.append(await _tick(store, key, receiver.own_schedule() or alert_default, now, grace, run))
    return ticks


async def _mailbox_digest(
    digest: MailboxDigest, settings: Settings, store: Store, graph: Callable[[], GraphClient], now: datetime
) -> str:
    return str((await run_mailbox_digest(digest, settings, graph(), store, now)).outcome)


async def _alert_digest(receiver: Receiver, settings: Settings, store: Store, now: datetime) -> str:
    return str((await run_alert_digest(receiver, settings, store, now)).outcome)


async def _tick(
    store: Store,
    key: str,
    schedule: Schedule,
    now: datetime,
    grace: timedelta,
    run: Callable[[], Awaitable[str]],
) -> Ticked:
    try:
        claims = await store.digest_claims.claims(key)
        claimed = [str(row["RowKey"]) for row in claims]

        async def claim(key: str, due: Due) -> bool:
            return await store.digest_claims.claim(key, due, INSTANCE)

        turn: Turn = await take_turn(key, schedule, last_claimed(claimed), now, grace, claim)
        resumed = None
        if turn.run is None and claims and now - (last_claimed(claimed) or now) <= grace:
            stale_before = datetime.now(UTC) - STALE_CLAIM  # claims carry the real time they were made
            if await store.digest_claims.take_over(key, claims[-1], INSTANCE, stale_before):
                resumed = claims[-1]
    except Exception:
        log.exception("digest %s: its schedule could not be evaluated; the others go on", key)
        return Ticked(key, "schedule not evaluated", outcome="failed")
    if turn.due.occurrence is not None:
        log.info("digest %s: %s", key, turn.reason)
        await store.digest_claims.prune(key, claimed)
    if turn.run is None and resumed is None:
        return Ticked(key, turn.reason)
    reason = turn.reason
    if resumed is not None:  # its instance died mid-run: the digest's run record lets this finish it, one mail
        reason = f"occurrence {resumed['RowKey']} claimed at {resumed.get('claimedAt')} never finished: run again"
        log.warning("digest %s: %s", key, reason)
    try:
        outcome = await run()
    except Exception as error:  # one failing digest does not stop the others
        log.exception("digest %s failed; the others go on", key)
        outcome = f"failed: {type(error).__name__}"
    occurrence = turn.run if turn.run is not None else str(claims[-1]["RowKey"])
    await store.digest_claims.note_outcome(key, occurrence, outcome)
    return Ticked(key, reason, turn.run or last_claimed(claimed), outcome)
