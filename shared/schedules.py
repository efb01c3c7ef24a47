"""Per-digest schedules in the reader's time zone: a cron expression read on the wall clock of an IANA zone.

Azure runs timer triggers in UTC only (Flex Consumption has no `WEBSITE_TIME_ZONE`), so one frequent UTC timer
asks `due` what each digest's schedule wants now. A schedule is 5-field cron (`0 7 * * 1-5`) or 6-field
NCRONTAB with seconds first (`0 0 7 * * 1-5`), parsed and stepped by croniter; a day matches when both its
day-of-month and day-of-week fields match, as in NCRONTAB (classic cron takes either). Occurrences are wall-clock
times in the zone, turned into instants DST-correctly:
- a time that exists once runs at that instant (07:00 Europe/Berlin is 06:00 UTC in winter, 05:00 in summer);
- a time skipped by a spring-forward change (02:30 on the day clocks jump from 02:00 to 03:00) runs once, at
  the first instant after the gap (03:00 local); occurrences that land on one instant are one occurrence;
- a time that occurs twice in an autumn fall-back (02:30 when 03:00 goes back to 02:00) runs once, on its
  first pass.

Missed occurrences (the app was down) run once, as the latest of them, when that one is at most `grace` old;
an older one is skipped with a reason. Across instances each occurrence is claimed exactly once (`take_turn`)
through a callback that inserts a row which must not exist yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

from .config import ConfigError

DEFAULT_ZONE = "UTC"
DEFAULT_GRACE = timedelta(hours=1)  # a missed occurrence older than this is skipped, not run late
MAX_COUNTED = 1000  # missed occurrences counted for the reason; beyond it, "1000 or more"
_SECOND = timedelta(seconds=1)
_TICK = timedelta(microseconds=1)
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})  # files in zoneinfo dirs that are not IANA zones
_OCCURRENCE_KEY = "%Y-%m-%dT%H:%M:%SZ"


class ScheduleError(ConfigError):
    """A `schedule` or `timezone` in the routing file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Schedule:
    """A cron expression read in an IANA time zone."""

    cron: str
    zone: ZoneInfo

    @property
    def seconds_first(self) -> bool:
        """Six fields: NCRONTAB's form, seconds first."""
        return len(self.cron.split()) == 6

    def __str__(self) -> str:
        return f"{self.cron} ({self.zone.key})"


def parse_schedule(value: object, timezone: object, where: str = "") -> Schedule | None:
    """The schedule of a mailbox digest or an alert digest receiver from its `schedule` and `timezone` fields,
    or None without a `schedule` (it follows the global UTC setting; a `timezone` alone is the zone of its
    mails' dates, checked here all the same). `where` is the object's path in the routing file (`digests[0]`),
    put before the field's name in the error; "" inside a pydantic validator, which adds the path itself."""
    prefix = f"{where}." if where else ""
    zone = parse_zone(timezone, f"{prefix}timezone")
    if value is None:
        return None
    return Schedule(_cron(value, f"{prefix}schedule"), zone)


def parse_receiver_schedule(mode: str, value: object, timezone: object, where: str = "") -> Schedule | None:
    """`parse_schedule` for an alert receiver: only a `mode: digest` receiver has a schedule (any receiver may
    have a `timezone`, the zone of its mails' dates)."""
    if mode != "digest" and value is not None:
        raise ScheduleError(f"{where + '.' if where else ''}schedule: only a receiver with mode: digest has a schedule")
    return parse_schedule(value, timezone, where)


def global_schedule(cron: str, setting: str) -> Schedule:
    """One of the old global settings (`MAILBOX_DIGEST_SCHEDULE`, `ALERT_DIGEST_SCHEDULE`): NCRONTAB in UTC."""
    return Schedule(_cron(cron, f"setting {setting}"), ZoneInfo(DEFAULT_ZONE))


def parse_zone(value: object, where: str) -> ZoneInfo:
    """An IANA time zone name such as Europe/Berlin; None means UTC."""
    if value is None:
        return ZoneInfo(DEFAULT_ZONE)
    if not isinstance(value, str) or not value or value in _NOT_ZONES:
        raise ScheduleError(f"{where}: {value!r} is not an IANA time zone name such as Europe/Berlin or UTC")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    hint = next((name for name in sorted(_zone_names()) if name.lower() == value.strip().lower()), None)
    suggestion = f" (did you mean {hint}?)" if hint else " such as Europe/Berlin or America/New_York"
    raise ScheduleError(f"{where}: {value!r} is not an IANA time zone name{suggestion}")


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _cron(value: object, where: str) -> str:
    example = "such as '0 7 * * 1-5' (5 fields) or '0 0 7 * * 1-5' (6 fields, seconds first)"
    if not isinstance(value, str):
        raise ScheduleError(f"{where}: {value!r} is not a cron expression {example}; quote it in YAML")
    cron = " ".join(value.split())
    if len(cron.split()) not in (5, 6):
        raise ScheduleError(f"{where}: {value!r} has {len(cron.split())} fields; write a cron expression {example}")
    try:
        next(_walls(cron, datetime(2000, 1, 1), forward=True))
    except CroniterError as error:
        problem = "it never comes due" if "failed to find" in str(error) else str(error)
        raise ScheduleError(f"{where}: {value!r} is not a cron expression {example}: {problem}") from None
    return cron


def _walls(cron: str, start: datetime, forward: bool) -> Iterator[datetime]:
    """Wall-clock times (naive) that match, strictly after (or before) `start`."""
    # Naive on purpose: croniter 7 stepping aware times runs a time repeated by fall-back twice.
    times = croniter(cron, start, day_or=False, second_at_beginning=len(cron.split()) == 6)
    step = times.get_next if forward else times.get_prev
    while True:
        wall: datetime = step(datetime)
        yield wall


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """When a wall-clock occurrence runs (UTC): its instant; the first pass of a time that occurs twice; the
    first instant after the gap for a time a spring-forward change skips."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # a twice-occurring time: its first pass
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap fold=0 reads the time with the offset before the change and fold=1 with the one after, so the
    # change lies between the two readings: find it to the second.
    before, after = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    offset = after.astimezone(zone).utcoffset()
    while after - before > _SECOND:
        middle = before + (after - before) // 2
        if middle.astimezone(zone).utcoffset() == offset:
            after = middle
        else:
            before = middle
    return after


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def occurrences(schedule: Schedule, after: datetime, until: datetime) -> Iterator[datetime]:
    """The instants (UTC) the schedule runs at in (after, until], in order, each once."""
    _aware(after, "after")
    _aware(until, "until")
    previous: datetime | None = None
    # Walls up to after's own wall time map to instants up to `after` (the mapping never goes backwards).
    for wall in _walls(schedule.cron, _wall(after, schedule.zone), forward=True):
        instant = _instant(wall, schedule.zone)
        if instant > until:
            return
        if instant > after and instant != previous:
            previous = instant
            yield instant


def latest(schedule: Schedule, now: datetime) -> datetime:
    """The newest instant (UTC) the schedule runs at, at or before `now`."""
    _aware(now, "now")
    local = now.astimezone(schedule.zone)
    start = local.replace(tzinfo=None)
    if local.fold:  # in the second pass of a repeated hour, later wall times of the first pass lie before now
        start += local.replace(fold=0).utcoffset() - local.utcoffset()  # type: ignore[operator]
    for wall in _walls(schedule.cron, start + _TICK, forward=False):
        instant = _instant(wall, schedule.zone)
        if instant <= now:
            return instant
    raise AssertionError("unreachable: the wall-clock walk is endless")  # pragma: no cover


def next_after(schedule: Schedule, now: datetime) -> datetime:
    """The first instant (UTC) the schedule runs at after `now`."""
    return next(occurrences(schedule, now, datetime.max.replace(tzinfo=UTC)))


@dataclass(frozen=True)
class Due:
    """What a schedule asks for at one moment."""

    occurrence: datetime | None  # the newest occurrence since the last run (UTC); None: none came due
    run: bool  # run it now; False when nothing is due or it is older than the grace (skipped)
    missed: int  # earlier occurrences since the last run that do not run on their own (at most MAX_COUNTED)
    reason: str  # one line for the log and the status row
    next: datetime  # the next occurrence after now (UTC)


def due(schedule: Schedule, last_run: datetime | None, now: datetime, grace: timedelta = DEFAULT_GRACE) -> Due:
    """What is due at `now` given the last occurrence claimed (`last_run`; None for a digest never run, whose
    occurrences count only within the grace). Several missed occurrences run once, as the newest; one older
    than `grace` is skipped, with the reason."""
    _aware(now, "now")
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    since = now - grace if last_run is None else _aware(last_run, "last_run")
    upcoming = next_after(schedule, now)
    newest = latest(schedule, now)
    if newest <= since:
        return Due(None, False, 0, f"not due; next {_show(upcoming, schedule)}", upcoming)
    # a digest never run has missed nothing: the grace only lets it catch the occurrence it was added after
    earlier_ones = occurrences(schedule, since, newest - _TICK) if last_run is not None else iter(())
    missed = sum(1 for _ in itertools.islice(earlier_ones, MAX_COUNTED))
    earlier = "" if not missed else f"; {_count(missed)} earlier occurrence(s) since {_show(since, schedule)}"
    late = now - newest
    if late > grace:
        reason = f"{_show(newest, schedule)} is {late} late, beyond the grace of {grace}: skipped{earlier} skipped too"
        return Due(newest, False, missed, reason, upcoming)
    folded = f"{earlier} not run on their own" if missed else ""
    return Due(newest, True, missed, f"due {_show(newest, schedule)}{folded}", upcoming)


def _count(missed: int) -> str:
    return f"{missed} or more" if missed >= MAX_COUNTED else str(missed)


def _show(instant: datetime, schedule: Schedule) -> str:
    return f"{instant.astimezone(schedule.zone).isoformat()} {schedule.zone.key}"


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (UTC), not {value!r}")
    return value


# Exactly once across instances: the timer claims an occurrence before it runs (or skips) it. The claim is an
# insert into Table `digestschedule` that fails when the row exists (Table storage answers 409 EntityAlreadyExists):
#   PartitionKey  schedule_key(kind, name)   e.g. "mailbox:support-unread", "alerts:ops"
#   RowKey        occurrence_key(occurrence) e.g. "2026-03-29T05:00:00Z" (UTC; sorts in time order)
#   run           true: claimed to run; false: skipped
#   reason        Due.reason
#   claimedAt     when it was claimed
#   instance      which instance claimed it (for the operator)
# `last_run` for `due` is the newest RowKey of the digest's partition (`last_claimed`); rows older than a few
# days can be deleted.
Claim = Callable[[str, Due], Awaitable[bool]]


def schedule_key(kind: str, name: str) -> str:
    """The PartitionKey of a digest's claims: its kind and name, with the characters Table keys refuse
    (`/ \\ # ?`, control characters) percent-encoded."""
    return f"{kind}:{quote(name, safe='')}"


def occurrence_key(occurrence: datetime) -> str:
    """The RowKey of an occurrence's claim: its UTC time to the second, sortable."""
    return _aware(occurrence, "occurrence").astimezone(UTC).strftime(_OCCURRENCE_KEY)


def last_claimed(row_keys: list[str]) -> datetime | None:
    """The newest occurrence among a partition's RowKeys (the `last_run` to pass to `due`)."""
    return max((datetime.strptime(key, _OCCURRENCE_KEY).replace(tzinfo=UTC) for key in row_keys), default=None)


@dataclass(frozen=True)
class Turn:
    """What one instance does about one digest at one tick."""

    key: str
    due: Due
    run: datetime | None  # the occurrence this instance claimed and must run now; None: nothing to run here
    reason: str


async def take_turn(
    key: str, schedule: Schedule, last_run: datetime | None, now: datetime, grace: timedelta, claim: Claim
) -> Turn:
    """Decide what is due and claim it, so that of all instances evaluating the same occurrence exactly one
    runs it (or records it as skipped); the others are told it was claimed."""
    decision = due(schedule, last_run, now, grace)
    if decision.occurrence is None:
        return Turn(key, decision, None, decision.reason)
    if not await claim(key, decision):
        return Turn(key, decision, None, f"{_show(decision.occurrence, schedule)} was claimed by another instance")
    return Turn(key, decision, decision.occurrence if decision.run else None, decision.reason)
