"""Render: an AlertGroup becomes a mail (subject, HTML, text) from Jinja2 templates with autoescape.

The HTML is built for Outlook (tables, inline CSS, no scripts or external resources). Label and annotation
values are escaped; the subject is one line of at most 255 characters, so nothing in an alert can inject a
header. What a mail shows is bounded, so every group renders a mail the outbox accepts: each alert's texts
are cut (with a marker) to `SHOWN_CHARS`, at most `DISPLAY_CAP` alerts are listed (the most severe and newest)
and fewer when the body would pass `MAIL_BUDGET` characters; the rest are counted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from ..mail import MailRequest, compose_mail
from ..templating import RenderedMail, one_line, render_mail
from .intake import cut_text
from .model import SEVERITIES, Alert, AlertGroup

if TYPE_CHECKING:
    from ..config import Settings
    from ..routing_file import Receiver

__all__ = ["DISPLAY_CAP", "MAIL_BUDGET", "RenderedMail", "fits", "for_display", "render_group", "subject_of"]

DISPLAY_CAP = 50
MAIL_BUDGET = 400_000  # characters of HTML (and of text): far below the outbox's 1,000,000 and Graph's 4 MB
SHOWN_CHARS = {"summary": 300, "description": 2000}  # per annotation shown; others and label values get 500
_SHOWN_OTHER = 500
SEVERITY_COLOURS = {"critical": "#b3261e", "high": "#d9480f", "warning": "#b7791f", "info": "#2b6cb0"}
RESOLVED_COLOUR = "#2f855a"


def _status_tag(group: AlertGroup) -> str:
    """`[FIRING:2]` or `[RESOLVED]`, as Alertmanager's default title has it."""
    return f"[FIRING:{len(group.firing)}]" if group.status == "firing" else "[RESOLVED]"


def subject_of(group: AlertGroup) -> str:
    """One safe line. A passed-through notification gets Alertmanager's default title: the status, the group
    labels' values and, in brackets, the values of the other common labels (`[FIRING:2] DiskFull (critical)`).
    A group the app formed: the status, the alert name and its other group_by values (`[FIRING:3] DiskFull
    (eu-1)`)."""
    if group.notification is not None:
        grouped = group.notification.group_labels
        common = group.notification.common_labels
        values = " ".join(v for _, v in sorted(grouped.items())) or (group.alerts[0].name if group.alerts else "")
        extra = " ".join(v for k, v in sorted(common.items()) if k not in grouped)
        return one_line(f"{_status_tag(group)} {values}" + (f" ({extra})" if extra else ""))
    name = group.labels.get("alertname") or (group.alerts[0].name if group.alerts else "alert")
    others = [v for k, v in group.labels.items() if k != "alertname" and v]
    return one_line(f"{_status_tag(group)} {name}" + (f" ({', '.join(others)})" if others else ""))


def _order(alerts: list[Alert]) -> list[Alert]:
    """Most severe first, then newest."""
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(
        alerts,
        key=lambda a: (
            SEVERITIES.index(a.severity) if a.severity in SEVERITIES else 9,
            -(a.starts_at or oldest).timestamp(),
        ),
    )


def for_display(alert: Alert) -> Alert:
    """The alert as a mail shows it: each annotation and label value cut, with a marker, to its share."""
    return replace(
        alert,
        annotations={k: cut_text(v, SHOWN_CHARS.get(k, _SHOWN_OTHER)) for k, v in alert.annotations.items()},
        labels={k: cut_text(v, _SHOWN_OTHER) for k, v in alert.labels.items()},
    )


def fits(mail: RenderedMail) -> bool:
    return len(mail.html) <= MAIL_BUDGET


# Annotations the template shows in their own places (the headline, the description, the runbook link)
SHOWN_ELSEWHERE = ("summary", "title", "description", "runbook_url", "runbook")
LINK_ORDER = ("source", "runbook", "dashboard", "panel", "silence")


def links_of(alert: Alert) -> list[tuple[str, str]]:
    """An alert's links, the well-known kinds first, then the others (generic titles, Azure's custom
    properties) by name."""
    known = [(kind, alert.links[kind]) for kind in LINK_ORDER if kind in alert.links]
    return known + sorted((k, v) for k, v in alert.links.items() if k not in LINK_ORDER)


def _identities(alerts: list[Alert]) -> dict[str, str]:
    """What tells each alert of a group from the others (its `instance`, else the labels whose values differ),
    so that two alerts with the same summary never read as the same line."""
    names = sorted({k for a in alerts for k in a.labels} - {"alertname", "severity"})
    differing = [n for n in names if len({a.labels.get(n) for a in alerts}) > 1]
    found = {}
    for alert in alerts:
        if alert.labels.get("instance"):
            found[alert.fingerprint] = alert.labels["instance"]
        else:
            found[alert.fingerprint] = ", ".join(f"{n}={alert.labels[n]}" for n in differing if n in alert.labels)
    return found


def render_group(
    group: AlertGroup, template: str = "default", now: datetime | None = None, zone: tzinfo = UTC
) -> RenderedMail:
    """The mail for one group; `template` names `templates/alert_<template>.html.j2` (the one body Graph
    sends); its dates in `zone` (the receiver's)."""
    firing = [for_display(a) for a in _order(group.firing)]
    resolved = [for_display(a) for a in _order(group.resolved)]
    identities = _identities(firing + resolved)
    shown = DISPLAY_CAP
    while True:
        context: dict[str, Any] = {
            "identity": lambda alert: identities.get(alert.fingerprint, ""),
            "links_of": links_of,
            "shown_elsewhere": SHOWN_ELSEWHERE,
            "truncated": group.notification.truncated if group.notification else 0,
            "group": group,
            "firing": firing[:shown],
            "firing_more": max(0, len(firing) - shown),
            "resolved": resolved[:shown],
            "resolved_more": max(0, len(resolved) - shown),
            "colours": SEVERITY_COLOURS,
            "resolved_colour": RESOLVED_COLOUR,
            "now": now or datetime.now(UTC),
            "zone": zone,
        }
        mail = render_mail(f"alert_{template}", subject_of(group), **context)
        if fits(mail) or shown == 1:  # one alert, its texts cut, always fits
            return mail
        shown = max(1, shown // 2)


def receiver_mail(
    receiver: Receiver,
    mail_id: str,
    rendered: RenderedMail,
    settings: Settings,
    *,
    priority: Literal["critical", "alert", "normal", "bulk"],
    importance: Literal["low", "normal", "high"] = "normal",
    headers: dict[str, str] | None = None,
) -> MailRequest:
    """A rendered mail to a receiver's addresses, from its sender or its pool, checked (`compose_mail`)."""
    return compose_mail(
        mail_id,
        receiver.sender,
        receiver.to,
        rendered.subject,
        rendered.html,
        settings,
        cc=receiver.cc,
        importance=importance,
        headers=headers,
        priority=priority,
        sender_pool=receiver.sender_pool,
    )
