"""The sending budget's policy (`shared.budgets`): pacing, lanes, reserve, deferral and pools, without I/O."""

from __future__ import annotations

from shared.budgets import (
    DAY,
    DAY_BUCKET,
    PACE_TOLERANCE,
    Budget,
    Lane,
    Limits,
    Verdict,
    choose,
    decide,
    pool_order,
)

T0 = 1_800_000_000.0  # a time on a 10-minute bucket boundary
LIMITS = Limits(per_minute=25, per_day=9000, alert_reserve_percent=20)


def _drain(budget: Budget, limits: Limits, lane: Lane, count: int, start: float, step: float = 0.1) -> list[float]:
    """Offer `count` mails of one lane, each coming back when told; the times they were admitted."""
    waiting: list[tuple[float, int | None]] = [(start, None)] * count
    admitted: list[float] = []
    while waiting:
        waiting.sort(key=lambda w: w[0])
        at, ticket = waiting.pop(0)
        decision = decide(budget, limits, lane, 1, ticket, at)
        if decision.verdict is Verdict.ADMIT:
            admitted.append(at)
        else:
            waiting.append((max(decision.at, at + step), decision.ticket))
    return admitted


def test_bulk_mail_is_spaced_evenly_and_never_more_than_the_minute_allows_less_the_alert_headroom() -> None:
    budget = Budget("notifications@contoso.test")
    admitted = _drain(budget, LIMITS, Lane.BULK, 100, T0)
    assert len(admitted) == 100
    cap = LIMITS.per_minute - LIMITS.headroom  # 20 a minute: 5 of each minute stay free for alerts
    assert cap == 20
    assert max(sum(1 for t in admitted if start <= t < start + 60) for start in admitted) <= cap
    # evenly: the k-th mail after any other goes k turns later, less at most the tolerance for whole-second delays
    spacing = 60 / cap
    for i, start in enumerate(admitted):
        assert all(t - start >= (k + 1) * spacing - PACE_TOLERANCE - 1e-6 for k, t in enumerate(admitted[i + 1 :]))


def test_a_critical_mail_goes_at_once_while_a_bulk_backlog_waits() -> None:
    budget = Budget("notifications@contoso.test")
    for _ in range(500):  # a mailing arrives: one goes, the rest take tickets
        decide(budget, LIMITS, Lane.BULK, 1, None, T0)
    decision = decide(budget, LIMITS, Lane.CRITICAL, 1, None, T0 + 1)
    assert decision.verdict is Verdict.ADMIT


def test_held_mail_keeps_its_place_and_comes_back_in_ticket_order() -> None:
    budget = Budget("notifications@contoso.test")
    decisions = [decide(budget, LIMITS, Lane.NORMAL, 1, None, T0) for _ in range(10)]
    assert decisions[0].verdict is Verdict.ADMIT
    held = decisions[1:]
    assert [d.ticket for d in held] == list(range(9))
    times = [d.at for d in held]
    assert times == sorted(times) and times[-1] - times[0] >= 8 * 60 / 20 - 1e-6


def test_lanes_are_served_in_order_normal_mail_before_bulk() -> None:
    budget = Budget("notifications@contoso.test")
    decide(budget, LIMITS, Lane.NORMAL, 1, None, T0)  # takes the slot
    normal = decide(budget, LIMITS, Lane.NORMAL, 1, None, T0)
    bulk = decide(budget, LIMITS, Lane.BULK, 1, None, T0)
    assert normal.verdict is bulk.verdict is Verdict.HOLD
    assert bulk.at > normal.at
    # the bulk mail, back when the slot is free, still waits while the normal one has not gone
    assert decide(budget, LIMITS, Lane.BULK, 1, bulk.ticket, normal.at).verdict is Verdict.HOLD
    assert decide(budget, LIMITS, Lane.NORMAL, 1, normal.ticket, normal.at).verdict is Verdict.ADMIT


def test_alert_mail_uses_the_reserve_that_ordinary_mail_may_not() -> None:
    budget = Budget("notifications@contoso.test")
    limits = Limits(per_minute=0, per_day=100, alert_reserve_percent=20)
    assert decide(budget, limits, Lane.NORMAL, 80, None, T0).verdict is Verdict.ADMIT
    deferred = decide(budget, limits, Lane.NORMAL, 1, None, T0 + 5)
    assert deferred.verdict is Verdict.DEFER
    assert deferred.at == T0 + DAY_BUCKET + DAY  # when the bucket holding the 80 leaves the window
    assert decide(budget, limits, Lane.ALERT, 20, None, T0 + 5).verdict is Verdict.ADMIT
    assert decide(budget, limits, Lane.CRITICAL, 1, None, T0 + 6).verdict is Verdict.DEFER
    assert decide(budget, limits, Lane.NORMAL, 1, None, deferred.at).verdict is Verdict.ADMIT


def test_a_mail_with_more_recipients_than_its_lane_may_ever_reach_is_refused() -> None:
    limits = Limits(per_minute=0, per_day=100, alert_reserve_percent=20)
    refused = decide(Budget("n@contoso.test"), limits, Lane.BULK, 81, None, T0)
    assert refused.verdict is Verdict.REFUSE and "at most 80" in refused.reason
    assert decide(Budget("n@contoso.test"), limits, Lane.ALERT, 81, None, T0).verdict is Verdict.ADMIT


def test_crossing_80_percent_of_the_day_is_flagged_once() -> None:
    budget = Budget("n@contoso.test")
    limits = Limits(per_minute=0, per_day=100, alert_reserve_percent=0)
    flags = [decide(budget, limits, Lane.NORMAL, 10, None, T0 + i).crossed_warning for i in range(10)]
    assert flags == [False] * 7 + [True, False, False]


def test_a_pool_member_is_sticky_per_alert_group_and_a_mail_without_one_goes_where_there_is_room() -> None:
    members = ["a@contoso.test", "b@contoso.test", "c@contoso.test"]
    assert pool_order(members, "group-1") == pool_order(members, "group-1")
    firsts = {pool_order(members, f"group-{i}")[0] for i in range(30)}
    assert firsts == set(members)  # groups spread over the pool
    full, free = Budget("a@contoso.test"), Budget("b@contoso.test")
    decide(full, LIMITS, Lane.NORMAL, 1, None, T0)
    guesses = [decide(b, LIMITS, Lane.NORMAL, 1, None, T0 + 0.5) for b in (full, free)]
    assert choose(guesses, sticky=False).mailbox == "b@contoso.test"
    assert choose(guesses, sticky=True).mailbox == "a@contoso.test"  # a short hold keeps the thread together
