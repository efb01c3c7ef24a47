"""Timer triggers: six-field NCRONTAB schedules (seconds first), `%SETTING%`, runOnStartup, past_due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

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


class TimerTrigger:
    def __init__(self, function: HostedFunction, invoker: Invoker) -> None:
        self.function = function
        self.invoker = invoker
        self.schedule = parse_schedule(function)

    async def run(self, stop: asyncio.Event) -> None:
        if self.function.trigger.get("runOnStartup"):
            await self._fire(past_due=False)
        times = croniter(self.schedule, datetime.now(), second_at_beginning=True)
        due: datetime = times.get_next(datetime)
        while not stop.is_set():
            wait = (due - datetime.now()).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    return
                except TimeoutError:
                    pass
            past_due = datetime.now() - due > LATE
            await self._fire(past_due)
            due = times.get_next(datetime)
            while due < datetime.now():  # missed occurrences run once, marked past due
                due = times.get_next(datetime)

    async def _fire(self, past_due: bool) -> None:
        # a failed run is logged by the invoker; the schedule goes on
        with contextlib.suppress(Exception):
            await self.invoker.invoke(self.function, TimerRequest(past_due=past_due))
