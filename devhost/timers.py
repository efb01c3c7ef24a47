"""Timer triggers: six-field NCRONTAB schedules (seconds first), `%SETTING%`, runOnStartup, past_due.

Schedules are evaluated in UTC, as on Azure's Linux plans (Flex Consumption has no time zone setting), or
in `WEBSITE_TIME_ZONE` (an IANA name) where it is set; never in the machine's local time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from azure.functions.timer import TimerRequest
from croniter import croniter

from .host import HostedFunction, HostError, Invoker, resolve

log = logging.getLogger("devhost.timers")
LATE = timedelta(seconds=1)  # an occurrence started later than this is past due


def parse_schedule(function: HostedFunction) -> str:
    schedule = resolve(str(function.trigger["schedule"]))
    if len(schedule.split()) != 6 or not croniter.is_valid(schedule, second_at_beginning=True):
        raise HostError(f"function {function.name}: {schedule!r} is not a six-field NCRONTAB schedule")
    return schedule


def schedule_zone() -> tzinfo:
    """The zone schedules are evaluated in: `WEBSITE_TIME_ZONE` where set, otherwise UTC."""
    name = os.environ.get("WEBSITE_TIME_ZONE", "").strip()
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HostError(
            f"WEBSITE_TIME_ZONE={name!r} is not an IANA time zone name (Linux plans use names such as "
            "Europe/Berlin; leave it unset for UTC)"
        ) from None


class TimerTrigger:
    def __init__(self, function: HostedFunction, invoker: Invoker) -> None:
        self.function = function
        self.invoker = invoker
        self.schedule = parse_schedule(function)
        self.zone = schedule_zone()

    def _now(self) -> datetime:
        return datetime.now(self.zone)

    def next_due(self) -> datetime:
        """The next occurrence after now, in the schedule's zone."""
        due: datetime = croniter(self.schedule, self._now(), second_at_beginning=True).get_next(datetime)
        return due

    def describe(self) -> str:
        zone = os.environ.get("WEBSITE_TIME_ZONE", "").strip() or "UTC"
        return f"timer {self.schedule} ({zone}; next {self.next_due().isoformat(sep=' ')})"

    async def run(self, stop: asyncio.Event) -> None:
        if self.function.trigger.get("runOnStartup"):
            await self._fire(past_due=False)
        times = croniter(self.schedule, self._now(), second_at_beginning=True)
        due: datetime = times.get_next(datetime)
        while not stop.is_set():
            wait = (due - self._now()).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    return
                except TimeoutError:
                    pass
            past_due = self._now() - due > LATE
            await self._fire(past_due)
            due = times.get_next(datetime)
            while due < self._now():  # missed occurrences run once, marked past due
                due = times.get_next(datetime)

    async def _fire(self, past_due: bool) -> None:
        # a failed run is logged by the invoker; the schedule goes on
        with contextlib.suppress(Exception):
            await self.invoker.invoke(self.function, TimerRequest(past_due=past_due))
