"""Per-digest schedules: cron in the reader's time zone, DST-correct, missed runs within a grace, one claim
per occurrence across instances. The clock is a parameter: no test sleeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from shared.config import ConfigError
from shared.schedules import (
    MAX_COUNTED,
    Due,
    Schedule,
    ScheduleError,
    Turn,
    due,
    global_schedule,
    last_claimed,
    latest,
    occurrence_key,
    occurrences,
    parse_receiver_schedule,
    parse_schedule,
    schedule_key,
    take_turn,
)

HOUR = timedelta(hours=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def schedule(cron: str, zone: str | None = None) -> Schedule:
    parsed = parse_schedule(cron, zone, "digests[0]")
    assert parsed is not None
    return parsed


def runs(plan: Schedule, start: datetime, days: float) -> list[datetime]:
    return list(occurrences(plan, start, start + timedelta(days=days)))


class Claims:
    """The Table's insert-if-absent, in memory: the first claim of a key and occurrence wins."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Due] = {}

    async def claim(self, key: str, decision: Due) -> bool:
        await asyncio.sleep(0)  # let a racing instance reach its claim too
        assert decision.occurrence is not None
        row = (key, occurrence_key(decision.occurrence))
        if row in self.rows:
            return False
        self.rows[row] = decision
        return True

    def last_run(self, key: str) -> datetime | None:
        return last_claimed([row for partition, row in self.rows if partition == key])


def tick_every_minute(plan: Schedule, start: datetime, end: datetime, grace: timedelta = HOUR) -> list[datetime]:
    """A UTC timer firing each minute from start to end, as Azure runs it; the occurrences it ran."""
    claims, ran = Claims(), []
    now = start
    while now <= end:
        turn = asyncio.run(take_turn("mailbox:x", plan, claims.last_run("mailbox:x"), now, grace, claims.claim))
        if turn.run is not None:
            ran.append(turn.run)
        now += timedelta(minutes=1)
    return ran


# Forms of the expression


def test_five_fields_are_minute_hour_day_month_weekday_in_utc_by_default() -> None:
    weekdays = schedule("0 7 * * 1-5")
    assert weekdays.zone.key == "UTC"
    assert runs(weekdays, utc(2026, 11, 20, 8), days=4) == [utc(2026, 11, 23, 7), utc(2026, 11, 24, 7)]


def test_six_fields_put_seconds_first_as_ncrontab_does() -> None:
    assert runs(schedule("30 0 7 * * *"), utc(2026, 11, 23), days=1) == [utc(2026, 11, 23, 7, 0, 30)]
    every_five_minutes = runs(schedule("0 */5 * * * *"), utc(2026, 11, 23), days=1 / 24)
    assert every_five_minutes == [utc(2026, 11, 23, 0, minute) for minute in range(5, 60, 5)] + [utc(2026, 11, 23, 1)]


def test_a_day_must_match_both_day_of_month_and_weekday_as_in_ncrontab() -> None:
    friday_the_13th = schedule("0 9 13 * 5")
    assert runs(friday_the_13th, utc(2026, 1, 1), days=365) == [
        utc(2026, 2, 13, 9),
        utc(2026, 3, 13, 9),
        utc(2026, 11, 13, 9),
    ]


def test_the_old_global_settings_keep_working_in_utc() -> None:
    mailbox = global_schedule("0 0 7 * * 1-5", "MAILBOX_DIGEST_SCHEDULE")
    assert str(mailbox) == "0 0 7 * * 1-5 (UTC)"
    assert runs(mailbox, utc(2026, 3, 27, 8), days=3) == [utc(2026, 3, 30, 7)]  # Monday; no DST shift in UTC


def test_a_digest_without_schedule_follows_the_global_setting() -> None:
    assert parse_schedule(None, None, "digests[0]") is None


# The reader's time zone across DST changes (2026: Europe 29 March and 25 October, US 8 March and 1 November)


def test_a_7_00_berlin_digest_runs_at_7_00_local_on_both_sides_of_each_change() -> None:
    berlin = schedule("0 7 * * *", "Europe/Berlin")
    assert runs(berlin, utc(2026, 3, 27, 12), days=3) == [utc(2026, 3, 28, 6), utc(2026, 3, 29, 5), utc(2026, 3, 30, 5)]
    assert runs(berlin, utc(2026, 10, 23, 12), days=3) == [
        utc(2026, 10, 24, 5),
        utc(2026, 10, 25, 6),
        utc(2026, 10, 26, 6),
    ]


def test_a_7_00_new_york_digest_runs_at_7_00_local_on_both_sides_of_each_change() -> None:
    new_york = schedule("0 7 * * *", "America/New_York")
    assert runs(new_york, utc(2026, 3, 6, 14), days=3) == [
        utc(2026, 3, 7, 12),
        utc(2026, 3, 8, 11),
        utc(2026, 3, 9, 11),
    ]
    assert runs(new_york, utc(2026, 10, 30, 14), days=3) == [
        utc(2026, 10, 31, 11),
        utc(2026, 11, 1, 12),
        utc(2026, 11, 2, 12),
    ]


def test_a_time_skipped_by_spring_forward_runs_once_at_the_first_instant_after_the_gap() -> None:
    # Berlin jumps from 02:00 to 03:00 (01:00 UTC); New York from 02:00 to 03:00 (07:00 UTC)
    assert runs(schedule("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), days=2) == [
        utc(2026, 3, 29, 1),  # 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    assert runs(schedule("30 2 * * *", "America/New_York"), utc(2026, 3, 7, 12), days=2) == [
        utc(2026, 3, 8, 7),  # 03:00 EDT
        utc(2026, 3, 9, 6, 30),
    ]


def test_occurrences_that_fall_into_one_gap_run_once() -> None:
    quarter_hourly = schedule("*/15 * * * *", "Europe/Berlin")
    night = runs(quarter_hourly, utc(2026, 3, 29, 0, 30), days=1 / 24)  # 01:30 CET to 03:30 CEST
    # 01:45 CET; then 02:00-02:45 (skipped by the clocks) and 03:00 CEST are one run at 01:00 UTC; then 03:15 CEST
    assert night == [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 15), utc(2026, 3, 29, 1, 30)]


def test_a_time_repeated_by_fall_back_runs_once_on_its_first_pass() -> None:
    # Berlin goes back from 03:00 CEST to 02:00 CET (01:00 UTC); New York from 02:00 EDT to 01:00 EST (06:00 UTC)
    assert runs(schedule("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), days=2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST; not again at 02:30 CET
        utc(2026, 10, 26, 1, 30),
    ]
    assert runs(schedule("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), days=2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 01:30 EST
        utc(2026, 11, 2, 6, 30),
    ]


def test_the_newest_occurrence_seen_from_the_second_pass_of_a_repeated_hour_is_its_first_pass() -> None:
    quarter_hourly = schedule("*/15 * * * *", "Europe/Berlin")
    assert latest(quarter_hourly, utc(2026, 10, 25, 1, 20)) == utc(2026, 10, 25, 0, 45)  # 02:20 CET -> 02:45 CEST
    assert latest(quarter_hourly, utc(2026, 10, 25, 2)) == utc(2026, 10, 25, 2)  # 03:00 CET


@pytest.mark.parametrize(
    ("zone", "cron", "night", "expected"),
    [
        ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 28, 22), [utc(2026, 3, 29, 1)]),
        ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 24, 22), [utc(2026, 10, 25, 0, 30)]),
        ("America/New_York", "30 1 * * *", utc(2026, 11, 1, 3), [utc(2026, 11, 1, 5, 30)]),
        ("America/New_York", "0 7 * * *", utc(2026, 3, 8, 4), [utc(2026, 3, 8, 11)]),
        ("UTC", "0 0 7 * * *", utc(2026, 3, 29, 4), [utc(2026, 3, 29, 7)]),
    ],
)
def test_a_timer_ticking_every_minute_in_utc_runs_each_occurrence_once_across_a_dst_night(
    zone: str, cron: str, night: datetime, expected: list[datetime]
) -> None:
    assert tick_every_minute(schedule(cron, zone), night, night + timedelta(hours=8)) == expected


# Missed occurrences and the grace


def test_an_occurrence_missed_while_the_app_was_down_runs_once_when_it_is_back_within_the_grace() -> None:
    berlin = schedule("0 7 * * *", "Europe/Berlin")
    back = due(berlin, last_run=utc(2026, 11, 23, 6), now=utc(2026, 11, 24, 6, 40), grace=HOUR)  # 07:40 CET
    assert (back.occurrence, back.run, back.missed) == (utc(2026, 11, 24, 6), True, 0)
    assert back.reason == "due 2026-11-24T07:00:00+01:00 Europe/Berlin"


def test_several_missed_occurrences_run_once_as_the_newest() -> None:
    hourly = schedule("0 * * * *", "Europe/Berlin")
    back = due(hourly, last_run=utc(2026, 11, 24, 6), now=utc(2026, 11, 24, 9, 10), grace=HOUR)
    assert (back.occurrence, back.run, back.missed) == (utc(2026, 11, 24, 9), True, 2)
    assert "2 earlier occurrence(s) since 2026-11-24T07:00:00+01:00 Europe/Berlin not run on their own" in back.reason


def test_an_occurrence_older_than_the_grace_is_skipped_with_the_reason() -> None:
    berlin = schedule("0 7 * * *", "Europe/Berlin")
    back = due(berlin, last_run=utc(2026, 11, 20, 6), now=utc(2026, 11, 24, 9), grace=HOUR)  # 10:00 CET
    assert (back.occurrence, back.run, back.missed) == (utc(2026, 11, 24, 6), False, 3)
    assert back.reason.startswith(
        "2026-11-24T07:00:00+01:00 Europe/Berlin is 3:00:00 late, beyond the grace of 1:00:00"
    )
    assert back.next == utc(2026, 11, 25, 6)


def test_a_skipped_occurrence_is_recorded_so_that_the_next_one_runs_as_usual() -> None:
    berlin, claims = schedule("0 7 * * *", "Europe/Berlin"), Claims()
    asyncio.run(claims.claim("mailbox:x", due(berlin, None, utc(2026, 11, 20, 6), HOUR)))
    skipped = asyncio.run(
        take_turn("mailbox:x", berlin, claims.last_run("mailbox:x"), utc(2026, 11, 24, 9), HOUR, claims.claim)
    )
    assert skipped.run is None and "skipped" in skipped.reason
    assert claims.last_run("mailbox:x") == utc(2026, 11, 24, 6)
    quiet = asyncio.run(
        take_turn("mailbox:x", berlin, claims.last_run("mailbox:x"), utc(2026, 11, 24, 9, 1), HOUR, claims.claim)
    )
    assert quiet.run is None and quiet.reason == "not due; next 2026-11-25T07:00:00+01:00 Europe/Berlin"
    tomorrow = asyncio.run(
        take_turn("mailbox:x", berlin, claims.last_run("mailbox:x"), utc(2026, 11, 25, 6), HOUR, claims.claim)
    )
    assert tomorrow.run == utc(2026, 11, 25, 6)


def test_missed_occurrences_are_counted_up_to_a_bound() -> None:
    every_second = schedule("* * * * * *")
    back = due(every_second, last_run=utc(2026, 11, 24), now=utc(2026, 11, 25), grace=HOUR)
    assert back.missed == MAX_COUNTED and f"{MAX_COUNTED} or more earlier" in back.reason


def test_a_digest_never_run_counts_only_the_occurrence_within_the_grace() -> None:
    berlin = schedule("0 7 * * *", "Europe/Berlin")
    assert due(berlin, None, utc(2026, 11, 24, 6, 30), HOUR).run  # added at 07:30: today's 07:00 runs
    late = due(berlin, None, utc(2026, 11, 24, 8), HOUR)  # added at 09:00: nothing is due, nothing was missed
    assert (late.occurrence, late.run, late.missed) == (None, False, 0)
    quarter_hourly = due(schedule("*/15 * * * *", "Europe/Berlin"), None, utc(2026, 11, 24, 6, 40), HOUR)
    assert (quarter_hourly.occurrence, quarter_hourly.missed) == (utc(2026, 11, 24, 6, 30), 0)
    assert quarter_hourly.reason == "due 2026-11-24T07:30:00+01:00 Europe/Berlin"


def test_nothing_is_due_between_occurrences() -> None:
    berlin = schedule("0 7 * * *", "Europe/Berlin")
    quiet = due(berlin, last_run=utc(2026, 11, 24, 6), now=utc(2026, 11, 24, 12), grace=HOUR)
    assert (quiet.occurrence, quiet.run, quiet.next) == (None, False, utc(2026, 11, 25, 6))


# Exactly once across instances


def test_two_instances_racing_for_one_occurrence_run_it_once() -> None:
    berlin, claims = schedule("0 7 * * *", "Europe/Berlin"), Claims()

    async def race() -> tuple[Turn, Turn]:
        now = utc(2026, 11, 24, 6, 0, 2)
        first, second = await asyncio.gather(
            take_turn("mailbox:x", berlin, utc(2026, 11, 23, 6), now, HOUR, claims.claim),
            take_turn("mailbox:x", berlin, utc(2026, 11, 23, 6), now, HOUR, claims.claim),
        )
        return first, second

    turns = asyncio.run(race())
    assert sorted(turn.run is not None for turn in turns) == [False, True]
    loser = next(turn for turn in turns if turn.run is None)
    assert loser.reason == "2026-11-24T07:00:00+01:00 Europe/Berlin was claimed by another instance"
    assert list(claims.rows) == [("mailbox:x", "2026-11-24T06:00:00Z")]


def test_the_documented_table_row_lets_one_of_two_instances_claim_an_occurrence(azurite: AzuriteProcess) -> None:
    """The claim as `shared/schedules.py` documents it, against Azurite: an insert that fails when the row
    exists (409 EntityAlreadyExists)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables.aio import TableServiceClient

    berlin = schedule("0 7 * * *", "Europe/Berlin")
    key = schedule_key("mailbox", "support/unread#1")

    async def race() -> tuple[list[Turn], list[dict[str, Any]]]:
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            table = await service.create_table_if_not_exists("digestscheduletest")

            async def claim(partition: str, decision: Due) -> bool:
                assert decision.occurrence is not None
                row = {"PartitionKey": partition, "RowKey": occurrence_key(decision.occurrence)}
                try:
                    await table.create_entity({**row, "run": decision.run, "reason": decision.reason})
                except ResourceExistsError:
                    return False
                return True

            now = utc(2026, 11, 24, 6, 0, 1)
            turns = await asyncio.gather(*(take_turn(key, berlin, None, now, HOUR, claim) for _ in range(2)))
            rows = [dict(row) async for row in table.query_entities("PartitionKey eq @p", parameters={"p": key})]
            await service.delete_table("digestscheduletest")
            return list(turns), rows

    turns, rows = asyncio.run(race())
    assert [turn.run for turn in turns].count(utc(2026, 11, 24, 6)) == 1
    assert [(row["RowKey"], row["run"]) for row in rows] == [("2026-11-24T06:00:00Z", True)]
    assert last_claimed([row["RowKey"] for row in rows]) == utc(2026, 11, 24, 6)


def test_claim_keys_are_valid_table_keys() -> None:
    assert schedule_key("alerts", "ops/db#1?x\\y") == "alerts:ops%2Fdb%231%3Fx%5Cy"
    assert occurrence_key(datetime(2026, 3, 29, 3, 0, tzinfo=schedule("0 3 * * *", "Europe/Berlin").zone)) == (
        "2026-03-29T01:00:00Z"
    )
    assert last_claimed(["2026-03-28T06:00:00Z", "2026-03-29T05:00:00Z"]) == utc(2026, 3, 29, 5)
    assert last_claimed([]) is None


# Bad input


@pytest.mark.parametrize(
    ("cron", "zone", "field", "problem"),
    [
        ("0 7 * * *", "Europe/Berln", "timezone", "'Europe/Berln' is not an IANA time zone name such as Europe/Berlin"),
        (
            "0 7 * * *",
            "europe/berlin",
            "timezone",
            "'europe/berlin' is not an IANA time zone name (did you mean Europe/Berlin?)",
        ),
        ("0 7 * * *", "localtime", "timezone", "'localtime' is not an IANA time zone name"),
        ("0 7 * * *", "../etc/passwd", "timezone", "'../etc/passwd' is not an IANA time zone name"),
        ("0 7 * * *", 1, "timezone", "1 is not an IANA time zone name"),
        ("61 7 * * *", None, "schedule", "'61 7 * * *' is not a cron expression such as '0 7 * * 1-5' (5 fields)"),
        ("0 7 * *", None, "schedule", "'0 7 * *' has 4 fields; write a cron expression such as '0 7 * * 1-5'"),
        ("0 0 7 * * * 2026", None, "schedule", "'0 0 7 * * * 2026' has 7 fields"),
        ("@daily", None, "schedule", "'@daily' has 1 fields"),
        ("0 7 31 2 *", None, "schedule", "(6 fields, seconds first): it never comes due"),
        (700, None, "schedule", "700 is not a cron expression such as '0 7 * * 1-5'"),
        (700, None, "schedule", "; quote it in YAML"),
        (None, "Europe/Berln", "timezone", "'Europe/Berln' is not an IANA time zone name"),
    ],
)
def test_a_bad_schedule_or_zone_is_refused_naming_the_field(
    cron: object, zone: object, field: str, problem: str
) -> None:
    with pytest.raises(ScheduleError) as refused:
        parse_schedule(cron, zone, "digests[0]")
    assert str(refused.value).startswith(f"digests[0].{field}: ")
    assert problem in str(refused.value)
    assert isinstance(refused.value, ConfigError)  # the routing file's errors stop the start-up the same way


def test_an_error_raised_inside_a_model_validator_names_the_field_alone() -> None:
    with pytest.raises(ScheduleError, match=r"^timezone: 'Mars/Base' is not an IANA time zone name"):
        parse_schedule("0 7 * * *", "Mars/Base")


def test_only_a_digest_receiver_has_a_schedule() -> None:
    digest = parse_receiver_schedule("digest", "0 7 * * 1-5", "America/New_York", "receivers[2]")
    assert str(digest) == "0 7 * * 1-5 (America/New_York)"
    assert parse_receiver_schedule("immediate", None, None, "receivers[0]") is None
    with pytest.raises(ScheduleError, match=r"^receivers\[0\]\.schedule: only a receiver with mode: digest"):
        parse_receiver_schedule("immediate", "0 7 * * *", None, "receivers[0]")
    assert parse_receiver_schedule("immediate", None, "Europe/Berlin", "receivers[0]") is None  # its mails' dates
    with pytest.raises(ScheduleError, match=r"^receivers\[0\]\.timezone: 'Mars/Base' is not an IANA"):
        parse_receiver_schedule("immediate", None, "Mars/Base", "receivers[0]")


def test_times_without_a_zone_are_refused() -> None:
    with pytest.raises(ValueError, match="now must be an aware datetime"):
        due(schedule("0 7 * * *"), None, datetime(2026, 11, 24, 7), HOUR)
