"""Render: an AlertGroup becomes a mail (subject, HTML, text) from Jinja2 templates with autoescape.

The HTML is built for Outlook (tables, inline CSS, no scripts or external resources). Label and annotation
values are escaped; the subject is one line of at most 255 characters, so nothing in an alert can inject a
header. Above `DISPLAY_CAP` alerts a mail lists the most severe and newest ones and counts the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .model import SEVERITIES, Alert, AlertGroup

DISPLAY_CAP = 50
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SEVERITY_COLOURS = {"critical": "#b3261e", "high": "#d9480f", "warning": "#b7791f", "info": "#2b6cb0"}
RESOLVED_COLOUR = "#2f855a"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# HTML templates are escaped; text ones are not (a text part must not show &amp;); anything else: escaped
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(
        enabled_extensions=("html.j2",), disabled_extensions=("txt.j2",), default=True, default_for_string=True
    ),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    html: str
    text: str


def one_line(text: str, limit: int = 255) -> str:
    """Control characters (CR, LF ...) folded into spaces, trimmed to `limit` characters."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


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
    context = {
        "group": group,
        "subject": subject_of(group),
        "firing": firing[:DISPLAY_CAP],
        "firing_more": max(0, len(firing) - DISPLAY_CAP),
        "resolved": resolved[:DISPLAY_CAP],
        "resolved_more": max(0, len(resolved) - DISPLAY_CAP),
        "colours": SEVERITY_COLOURS,
        "resolved_colour": RESOLVED_COLOUR,
        "now": now or datetime.now(UTC),
    }
    html = _env.get_template(f"alert_{template}.html.j2").render(**context)
    text = _env.get_template(f"alert_{template}.txt.j2").render(**context)
    return RenderedMail(context["subject"], html, text)  # type: ignore[arg-type]
