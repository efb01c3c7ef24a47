"""The pacer: before the sender hands a mail to Graph, it asks the sending mailbox's budget (or, for a sender
pool, its members' budgets) whether the mail may go now, and acts on the answer (`shared.budgets.decide`):
admit (from the chosen mailbox), hold (back to the queue with a visibility delay, status `queued`, its ticket
kept), defer (status `deferred` until the budget allows) or refuse (status `failed`, code `over_budget`).

Nothing waits in a function invocation. A mail is counted when it is admitted; if Graph then refuses it, or
throttles it and it is admitted again later, it stays counted (the budget errs on the safe side).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .audit import audit
from .budgets import (
    LANES,
    PACE_TOLERANCE,
    WARN_SHARE,
    Budget,
    Clock,
    Decision,
    Lane,
    Limits,
    SystemClock,
    Verdict,
    choose,
    copy_budget,
    decide,
    pool_order,
)
from .config import Settings
from .mail import MailRequest
from .store import StatusChanged, Store
from .store.mail_status import MailState, MailStatus

log = logging.getLogger("notifier.budgets")

DEFER_RECHECK_SECONDS = 900.0  # a deferred mail looks again at least this often (settings or pools may change)
STICKY_HEADER = "x-notifier-alert-group"  # shared.alerts.notify.GROUP_HEADER: notices of a group share a sender


def lane_of(mail: MailRequest) -> Lane:
    return Lane(mail.priority or Lane.NORMAL)


def senders_of(mail: MailRequest, settings: Settings) -> tuple[str, ...]:
    """The mailboxes a checked mail may go from: its pool's members, or its one sender."""
    if mail.sender_pool is not None:
        return settings.sender_pool(mail.sender_pool) or (settings.mail_default_sender,)
    return ((mail.sender or settings.mail_default_sender).lower(),)


def sticky_key(mail: MailRequest) -> str | None:
    return next((v for k, v in mail.headers.items() if k.lower() == STICKY_HEADER), None)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        settings.budget_messages_per_minute, settings.budget_recipients_per_day, settings.budget_alert_reserve_percent
    )


@dataclass(frozen=True)
class Pacing:
    """The pacer's answer for one mail: `ADMIT` from `mailbox`, or what was done instead and why."""

    verdict: Verdict
    mailbox: str
    detail: str = ""


class Pacer:
    """Budgets and lanes for the sender; given the settings, the store and a clock (tests move theirs)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock | None = None,
        recheck_seconds: float = DEFER_RECHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or SystemClock()
        self.limits = limits_of(settings)
        self.recheck_seconds = recheck_seconds

    async def pace(self, mail: MailRequest, status: MailStatus, text: str, payload: dict[str, Any]) -> Pacing:
        """Decide for a checked mail whose status the sender is about to claim; hold, defer or refuse it here."""
        lane = lane_of(mail)
        status.lane = str(lane)
        members = senders_of(mail, self.settings)
        key = sticky_key(mail)
        if not (self.limits.per_minute or self.limits.per_day):
            return Pacing(Verdict.ADMIT, pool_order(members, key or status.id)[0])
        try:
            decision = await self._decide(mail, status, lane, members, key)
        except StatusChanged:  # the budget row stayed contended: try again shortly, without spending a dequeue
            await self.store.outbox.send_again(text, 1)
            return Pacing(Verdict.HOLD, members[0], "the sending budget was busy; again in 1 s")
        if decision.verdict is Verdict.ADMIT:
            status.ticket, status.held_on, status.deferred_until = None, "", None
            if decision.crossed_warning:
                await self._warn(decision.mailbox, status, mail)
            return Pacing(Verdict.ADMIT, decision.mailbox)
        if decision.verdict is Verdict.HOLD:
            return await self._hold(decision, status, text)
        if decision.verdict is Verdict.DEFER:
            return await self._defer(decision, status, text, mail)
        return await self._refuse(decision, status, payload, mail)

    async def _decide(
        self, mail: MailRequest, status: MailStatus, lane: Lane, members: tuple[str, ...], key: str | None
    ) -> Decision:
        recipients = len(mail.recipients())
        now = self.clock.now()

        def on(mailbox: str, ticket: int | None) -> Any:
            return lambda budget: decide(budget, self.limits, lane, recipients, ticket, now)

        if status.held_on in members and status.ticket is not None:  # it keeps its place where it waits
            decision: Decision = await self.store.budgets.change(status.held_on, on(status.held_on, status.ticket))
            return decision
        ordered = pool_order(members, key)
        if len(ordered) > 1:
            budgets: list[Budget] = await asyncio.gather(*(self.store.budgets.get(m) for m in ordered))
            guesses = [decide(copy_budget(b), self.limits, lane, recipients, None, now) for b in budgets]
            ordered = [choose(guesses, sticky=key is not None).mailbox]
        decision = await self.store.budgets.change(ordered[0], on(ordered[0], None))
        return decision

    async def _hold(self, decision: Decision, status: MailStatus, text: str) -> Pacing:
        # queue delays are whole seconds: back a little before its turn, which the pace's tolerance lets in, so a
        # mail is ready when its turn comes (a turn nobody takes is lost)
        delay = max(1.0, round(decision.at - self.clock.now() - PACE_TOLERANCE / 2))
        status.status, status.ticket, status.held_on = MailState.QUEUED, decision.ticket, decision.mailbox
        await self._save(status)
        await self.store.outbox.send_again(text, delay)
        return Pacing(Verdict.HOLD, decision.mailbox, f"{decision.reason}; again in {delay:.0f} s")

    async def _defer(self, decision: Decision, status: MailStatus, text: str, mail: MailRequest) -> Pacing:
        now = self.clock.now()
        until = max(decision.at, now)
        first = status.status != MailState.DEFERRED
        status.status, status.ticket, status.held_on = MailState.DEFERRED, None, ""
        status.deferred_until = datetime.fromtimestamp(until, UTC)
        await self._save(status)
        await self.store.outbox.send_again(text, max(1.0, math.ceil(min(until - now, self.recheck_seconds))))
        detail = f"{decision.reason}; deferred until {status.deferred_until:%Y-%m-%dT%H:%M:%SZ}"
        if first:
            log.warning("mail %s deferred: %s", status.id, detail)
            await audit(
                self.store,
                self.settings,
                operation="budget",
                mailbox=decision.mailbox,
                outcome="deferred",
                caller="mail-outbox",
                correlation_id=status.id,
                recipients=mail.recipients(),
                detail=detail,
            )
        return Pacing(Verdict.DEFER, decision.mailbox, detail)

    async def _refuse(
        self, decision: Decision, status: MailStatus, payload: dict[str, Any], mail: MailRequest
    ) -> Pacing:
        status.status, status.ticket, status.held_on, status.lease_until = MailState.FAILED, None, "", None
        status.error_code, status.error_message = "over_budget", decision.reason[:500]
        status.etag = None  # an outcome we own: nothing else can send a mail that can never fit
        await self.store.statuses.save(status)
        await self.store.outbox.delete_payload(payload)
        log.warning("mail %s refused: %s", status.id, decision.reason)
        await audit(
            self.store,
            self.settings,
            operation="budget",
            mailbox=decision.mailbox,
            outcome="over_budget",
            caller="mail-outbox",
            correlation_id=status.id,
            recipients=mail.recipients(),
            detail=decision.reason,
        )
        return Pacing(Verdict.REFUSE, decision.mailbox, f"over_budget: {decision.reason}")

    async def _warn(self, mailbox: str, status: MailStatus, mail: MailRequest) -> None:
        share = f"{WARN_SHARE:.0%}"
        detail = f"{mailbox} crossed {share} of its {self.limits.per_day} recipients in 24 hours"
        log.warning("sending budget: %s", detail)
        await audit(
            self.store,
            self.settings,
            operation="budget",
            mailbox=mailbox,
            outcome="budget_warning",
            caller="mail-outbox",
            correlation_id=status.id,
            recipients=mail.recipients(),
            detail=detail,
        )

    async def _save(self, status: MailStatus) -> None:
        """Keep the status's lane, ticket or deferral; another instance having changed the row meanwhile (it
        holds the mail now) is left to win."""
        try:
            await self.store.statuses.save(status)
        except StatusChanged:
            log.info("mail %s changed while it was paced; its other delivery decides", status.id)


async def intake_warning(settings: Settings, store: Store, mail: MailRequest) -> dict[str, str] | None:
    """What `POST /api/mail` tells a caller whose mail will wait: the lane's daily budget is nearly used up (the
    mail may be deferred), or many minutes of mail wait before it. None when its budget is fine, or cannot be
    read now (the intake does not fail for it)."""
    limits = limits_of(settings)
    if not (limits.per_minute or limits.per_day):
        return None
    lane = lane_of(mail)
    members = senders_of(mail, settings)
    try:
        budgets = await asyncio.gather(*(store.budgets.get(m) for m in members))
    except Exception as error:
        log.warning("budget of %s not read at intake: %s", ", ".join(members), type(error).__name__)
        return None
    now = SystemClock().now()
    for budget in budgets:
        budget.forget_before(now)
    if limits.per_day:
        cap = limits.day_cap(lane)
        best = min(budgets, key=lambda b: b.day_used())
        used = best.day_used() + len(mail.recipients())
        if used > WARN_SHARE * cap:
            return {
                "code": "budget_short",
                "message": f"{best.mailbox} has {max(0, cap - best.day_used())} of its {cap} recipients for "
                f"{lane} mail left in 24 hours; mail beyond them is deferred until the window frees up",
            }
    if limits.per_minute:
        waiting = min(sum(b.line(other).waiting(now) for other in LANES[: LANES.index(lane) + 1]) for b in budgets)
        minutes = waiting * limits.spacing(lane) / 60 / len(budgets)
        if minutes >= 5:
            return {
                "code": "backlog",
                "message": f"about {minutes:.0f} minutes of {lane} or higher mail wait before this one "
                f"({limits.minute_cap(lane)} a minute per sending mailbox)",
            }
    return None


async def budget_use(settings: Settings, store: Store) -> dict[str, Any]:
    """Health's view of the budgets: each sending mailbox's use (allowed senders and pool members), and the
    highest share of a day's recipients any of them has used (the one figure anonymous callers see)."""
    mailboxes = sorted(settings.mail_allowed_senders | {m for _, pool in settings.mail_sender_pools for m in pool})
    limits = limits_of(settings)
    budgets = await asyncio.gather(*(store.budgets.get(m) for m in mailboxes))
    now = SystemClock().now()
    use = {b.mailbox: b.use(limits, now) for b in budgets}
    shares = [float(str(u["dayPercent"])) for u in use.values() if "dayPercent" in u]
    return {"mailboxes": use, "highestDayPercent": max(shares, default=0.0)}
