"""Sending budgets and priority lanes: the pure policy, no I/O.

Exchange Online lets a mailbox send about 30 messages a minute (the excess is delivered late) and 10,000
recipients in a rolling 24 hours (beyond: NDRs `5.1.90` and a blocked mailbox). So, per sending mailbox:
- **pacing**: mail goes to Graph no faster than `per_minute` in any 60 seconds. The lower lanes (`normal`,
  `bulk`) are spaced evenly and leave a headroom of the minute to the alert lanes, so a critical alert never
  waits behind a backlog; lanes are served in order (`critical`, `alert`, `normal`, `bulk`), and a mail that
  must wait gets a ticket in its lane, so it keeps its place when it comes back;
- **reserve**: the lower lanes may use the daily recipients only up to `1 - alert_reserve` of them, so alert
  mail still goes out after a mailing used up the rest;
- **deferral**: mail that would break the daily budget waits until enough recipients leave the window;
  mail with more recipients than its lane may ever use is refused.

`decide` takes a mailbox's `Budget` (the shared counters, kept in `shared.store.mail_budgets`) and one mail,
and answers what to do with it, updating the budget as if that were done; the caller writes it back under
its ETag. Times are epoch seconds of the pacer's clock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

MINUTE = 60.0
DAY = 86_400.0
DAY_BUCKET = 600  # recipients are counted in 10-minute buckets: a bucket leaves the window 24 h after its end
PACE_TOLERANCE = 2.0  # seconds a paced mail may go before its even turn: queue delays are whole seconds
IDLE_GRACE = 60.0  # a lane whose waiting mail should all have come back this long ago has nobody waiting
WARN_SHARE = 0.8  # crossing this share of the daily recipients is logged and audited


class Lane(StrEnum):
    """Priority lanes, served in this order."""

    CRITICAL = "critical"  # alert mail with a critical alert firing
    ALERT = "alert"  # other alert notices and summaries
    NORMAL = "normal"  # callers' mail
    BULK = "bulk"  # digests, mailings


LANES = tuple(Lane)
ALERT_LANES = frozenset({Lane.CRITICAL, Lane.ALERT})  # may use the minute's headroom and the daily reserve


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True)
class Limits:
    """A mailbox's budget: messages in any 60 seconds (0: not paced), recipients in a rolling 24 hours (0: not
    counted), and the share of those reserved for the alert lanes."""

    per_minute: int
    per_day: int
    alert_reserve_percent: int = 20

    @property
    def headroom(self) -> int:
        """Messages of each minute that only the alert lanes may use: a fifth, at least one when there is room."""
        return min(max(1, self.per_minute // 5), self.per_minute - 1) if self.per_minute > 1 else 0

    def day_cap(self, lane: Lane) -> int:
        """Recipients in 24 h a lane may fill the mailbox up to."""
        if lane in ALERT_LANES:
            return self.per_day
        return self.per_day - self.per_day * self.alert_reserve_percent // 100

    def minute_cap(self, lane: Lane) -> int:
        return self.per_minute if lane in ALERT_LANES else self.per_minute - self.headroom

    def spacing(self, lane: Lane) -> float:
        """Seconds between two mails of a lane when it has a backlog."""
        return MINUTE / max(1, self.minute_cap(lane))


@dataclass
class LaneLine:
    """Tickets of mail waiting in one lane: issued so far, and taken out of the line (sent, deferred)."""

    issued: int = 0
    served: int = 0
    until: float = 0.0  # the latest time a waiting mail was told to come back

    def waiting(self, now: float) -> int:
        return self.issued - self.served if now <= self.until + IDLE_GRACE else 0


@dataclass
class Budget:
    """A sending mailbox's shared counters."""

    mailbox: str
    sent: list[float] = field(default_factory=list)  # times mail was handed to Graph in the last minute
    paced_at: float = 0.0  # the even turn of the next lower-lane mail (a generic cell rate's arrival time)
    day: list[tuple[int, int]] = field(default_factory=list)  # (bucket start, recipients), oldest first
    lines: dict[Lane, LaneLine] = field(default_factory=dict)
    etag: str | None = None

    def line(self, lane: Lane) -> LaneLine:
        return self.lines.setdefault(lane, LaneLine())

    def forget_before(self, now: float) -> None:
        """Drop what has left the windows, and realign lines nobody waits in any more."""
        self.sent = [t for t in self.sent if t > now - MINUTE]
        self.day = [(start, n) for start, n in self.day if start + DAY_BUCKET > now - DAY]
        for line in self.lines.values():
            if line.waiting(now) == 0:
                line.served = line.issued

    def day_used(self) -> int:
        return sum(n for _, n in self.day)

    def count(self, now: float, recipients: int) -> None:
        start = int(now // DAY_BUCKET * DAY_BUCKET)
        if self.day and self.day[-1][0] == start:
            self.day[-1] = (start, self.day[-1][1] + recipients)
        else:
            self.day.append((start, recipients))

    def day_free_at(self, most: int) -> float:
        """When the recipients counted fall to at most `most` (buckets leaving the window, oldest first)."""
        used = self.day_used()
        for start, n in self.day:
            if used <= most:
                break
            used -= n
            if used <= most:
                return start + DAY_BUCKET + DAY
        return 0.0

    def use(self, limits: Limits, now: float) -> dict[str, object]:
        """What health shows: this minute's and this day's use, and mail waiting per lane."""
        self.forget_before(now)
        answer: dict[str, object] = {"minute": len(self.sent), "perMinute": limits.per_minute}
        answer.update(day=self.day_used(), perDay=limits.per_day)
        if limits.per_day:
            answer["dayPercent"] = round(100 * self.day_used() / limits.per_day, 1)
        answer["waiting"] = {str(lane): line.waiting(now) for lane, line in self.lines.items() if line.waiting(now)}
        return answer


class Verdict(StrEnum):
    ADMIT = "admit"  # hand it to Graph now, from `mailbox`
    HOLD = "hold"  # back to the queue until `at`; status stays queued, its ticket keeps its place
    DEFER = "defer"  # the daily budget is short: status `deferred` until `at`
    REFUSE = "refuse"  # more recipients than the lane may ever use from this mailbox


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    mailbox: str
    at: float = 0.0
    ticket: int | None = None
    reason: str = ""
    crossed_warning: bool = False  # this admission took the day's use over WARN_SHARE


def decide(budget: Budget, limits: Limits, lane: Lane, recipients: int, ticket: int | None, now: float) -> Decision:
    """What to do with one mail of `lane` with `recipients` from this mailbox now; `ticket` is the place it
    took in its lane when it was held before. Updates `budget` to match the answer."""
    budget.forget_before(now)
    mailbox = budget.mailbox
    line = budget.line(lane)
    if limits.per_day:
        cap = limits.day_cap(lane)
        if recipients > cap:
            _leave_line(line, ticket)
            reason = f"{recipients} recipients; {mailbox} may send {lane} mail to at most {cap} in 24 hours"
            return Decision(Verdict.REFUSE, mailbox, reason=reason)
        used = budget.day_used()
        if used + recipients > cap:
            _leave_line(line, ticket)
            at = budget.day_free_at(cap - recipients)
            reason = f"{mailbox} has sent to {used} of the {cap} recipients its {lane} mail may reach in 24 hours"
            return Decision(Verdict.DEFER, mailbox, at=at, reason=reason)
    higher = sum(budget.line(other).waiting(now) for other in LANES[: LANES.index(lane)])
    ahead_in_line = line.waiting(now) if ticket is None else max(0, ticket - line.served)
    free_at = _slot_at(budget, limits, lane, now)
    if free_at <= now and higher == 0 and (ticket is not None or ahead_in_line == 0):
        before = budget.day_used()
        budget.sent.append(now)
        if lane not in ALERT_LANES:
            budget.paced_at = max(budget.paced_at, now) + limits.spacing(lane)
        if limits.per_day:
            budget.count(now, recipients)
        if ticket is not None:
            line.served = min(line.issued, line.served + 1)
        crossed = bool(limits.per_day) and before < WARN_SHARE * limits.per_day <= budget.day_used()
        return Decision(Verdict.ADMIT, mailbox, at=now, crossed_warning=crossed)
    if ticket is None:
        ticket = line.issued
        line.issued += 1
    at = max(free_at, now) + (higher + ahead_in_line) * limits.spacing(lane)
    line.until = max(line.until, at)
    reason = f"paced: {higher + ahead_in_line} {lane} or higher mails go first from {mailbox}"
    return Decision(Verdict.HOLD, mailbox, at=at, ticket=ticket, reason=reason)


def _leave_line(line: LaneLine, ticket: int | None) -> None:
    if ticket is not None:
        line.served = min(line.issued, line.served + 1)


def _slot_at(budget: Budget, limits: Limits, lane: Lane, now: float) -> float:
    """When the next mail of `lane` may go to Graph (at or before `now`: at once)."""
    if not limits.per_minute:
        return now
    cap = limits.minute_cap(lane)
    at = now
    if len(budget.sent) >= cap:
        at = max(at, budget.sent[len(budget.sent) - cap] + MINUTE)
    if lane not in ALERT_LANES:
        at = max(at, budget.paced_at - PACE_TOLERANCE)
    return at


def pool_order(members: Iterable[str], sticky_key: str | None) -> list[str]:
    """The pool's members in the order to try them: the one a sticky key (an alert group) maps to first, so
    a thread of notices comes from one address while that mailbox has room."""
    ordered = list(members)
    if sticky_key and ordered:
        first = int(hashlib.sha256(sticky_key.encode()).hexdigest()[:8], 16) % len(ordered)
        ordered = ordered[first:] + ordered[:first]
    return ordered


def choose(decisions: list[Decision], sticky: bool) -> Decision:
    """Among a pool's answers (in `pool_order`), the one to act on: the sticky member unless it must defer or
    refuse; otherwise the first that admits, else the earliest hold, else the earliest deferral."""
    if sticky and decisions and decisions[0].verdict in (Verdict.ADMIT, Verdict.HOLD):
        return decisions[0]
    for verdict in (Verdict.ADMIT, Verdict.HOLD, Verdict.DEFER):
        found = [d for d in decisions if d.verdict == verdict]
        if found:
            return min(found, key=lambda d: d.at)
    return decisions[0]


def copy_budget(budget: Budget) -> Budget:
    """A copy `decide` may change while the pool's members are compared."""
    return replace(
        budget,
        sent=list(budget.sent),
        day=list(budget.day),
        lines={lane: replace(line) for lane, line in budget.lines.items()},
    )
