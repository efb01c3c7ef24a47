"""Render: an AlertGroup becomes a mail (subject, HTML, text) from Jinja2 templates with autoescape.

The HTML is built for Outlook (tables, inline CSS, no scripts or external resources). Label and annotation
values are escaped; the subject is one line of at most 255 characters, so nothing in an alert can inject a
header. Above `DISPLAY_CAP` alerts a mail lists the most severe and newest ones and counts the rest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..templating import RenderedMail, one_line, render_mail
from .model import SEVERITIES, Alert, AlertGroup

__all__ = ["DISPLAY_CAP", "RenderedMail", "render_group", "subject_of"]

DISPLAY_CAP = 50
SEVERITY_COLOURS = {"critical": "#b3261e", "high": "#d9480f", "warning": "#b7791f", "info": "#2b6cb0"}
RESOLVED_COLOUR = "#2f855a"


def subject_of(group: AlertGroup) -> str:
    """`[FIRING:3] DiskFilling (db-1, /var)` like Alertmanager's, one safe line."""
    status = "FIRING" if group.status == "firing" else "RESOLVED"
    count = len(group.firing) if group.status == "firing" else len(group.resolved)
    name = group.labels.get("alertname") or (group.alerts[0].name if group.alerts else "alert")
    others = [v for k, v in group.labels.items() if k != "alertname" and v]
    return one_line(f"[{status}:{count}] {name}" + (f" ({', '.join(others)})" if others else ""))


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


def render_group(group: AlertGroup, template: str = "default", now: datetime | None = None) -> RenderedMail:
    """The mail for one group; `template` names `templates/alert_<template>.html.j2` and `.txt.j2`."""
    firing, resolved = _order(group.firing), _order(group.resolved)
    context: dict[str, Any] = {
        "group": group,
        "firing": firing[:DISPLAY_CAP],
        "firing_more": max(0, len(firing) - DISPLAY_CAP),
        "resolved": resolved[:DISPLAY_CAP],
        "resolved_more": max(0, len(resolved) - DISPLAY_CAP),
        "colours": SEVERITY_COLOURS,
        "resolved_colour": RESOLVED_COLOUR,
        "now": now or datetime.now(UTC),
    }
    return render_mail(f"alert_{template}", subject_of(group), **context)
