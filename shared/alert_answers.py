"""The alert API's answers: a receipt per group an alert went to (route, receiver, grouping) and, for a dry
run, the mail each group would get now. Nothing here stores or sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .alerts.model import AlertGroup
from .alerts.notify import alert_mail
from .config import Settings
from .mail import app_mail_id
from .routing_file import NotifyConfig, Receiver


@dataclass(frozen=True)
class GroupReceipt:
    """What intake tells the caller about one group an alert went to: which routes chose which receiver,
    in which mode, and how it is mailed (`grouping`: `source` passes a pre-grouping source's notification
    through at once, `app` groups by group_by after group_wait, `digest` keeps it for the alert digest)."""

    key: str
    receiver: str
    mode: str
    grouping: str
    routes: tuple[tuple[str, tuple[str, ...]], ...]  # (path, matchers) of each route that chose the receiver
    labels: dict[str, str]
    alerts: int
    mail: str | None = None  # the mail's id, when one was submitted at once

    def answer(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "key": self.key,
            "receiver": self.receiver,
            "mode": self.mode,
            "grouping": self.grouping,
            "routes": [{"path": path, "matchers": list(matchers)} for path, matchers in self.routes],
            "labels": self.labels,
            "alerts": self.alerts,
        }
        if self.mail is not None:
            answer["mail"] = self.mail
        return answer


def _route_at(config: NotifyConfig, path: str) -> tuple[str, ...]:
    """The matchers of the route at `path` (`route.routes[1].routes[0]`)."""
    route = config.route
    for part in path.split(".")[1:]:
        route = route.routes[int(part.removeprefix("routes[").removesuffix("]"))]
    return tuple(route.matchers)


def receipts(groups: list[AlertGroup], config: NotifyConfig, mails: dict[str, str] | None = None) -> list[GroupReceipt]:
    answered = []
    for g in groups:
        mode = config.receiver(g.receiver).mode
        grouping = "digest" if mode == "digest" else "source" if g.notification is not None else "app"
        routes = tuple((path, _route_at(config, path)) for path in g.routes)
        answered.append(
            GroupReceipt(g.key, g.receiver, mode, grouping, routes, g.labels, len(g.alerts), (mails or {}).get(g.key))
        )
    return answered


def preview(group: AlertGroup, receiver: Receiver, settings: Settings, now: datetime) -> dict[str, Any]:
    """The mail a group would get if it were flushed now (a dry run): nothing is stored or sent."""
    mail = alert_mail(group, receiver, settings, app_mail_id("alert", "dry-run"), now)  # the app's own, as sent
    fields = mail.model_dump(by_alias=True, include={"sender", "to", "cc", "subject", "html"})
    return {
        "group": group.key,
        "receiver": receiver.name,
        **fields,
        "to": [m["address"] for m in fields["to"]],
        "cc": [m["address"] for m in fields["cc"]],
    }
