"""The one Jinja2 environment of the app's mail templates (`shared/templates/`), and the one-line rule for
subjects. HTML templates autoescape; text templates do not (a text part must not show `&amp;`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .text import CONTROL_RUN

if TYPE_CHECKING:  # Jinja2 loads with the first mail rendered: importing it costs every cold start ~20 ms
    from jinja2 import Environment

TEMPLATES = Path(__file__).resolve().parent / "templates"
TIME_FORMAT = "%Y-%m-%d %H:%M %Z"  # 2026-12-04 17:08 CET; in UTC it says UTC


def when(moment: datetime, zone: tzinfo) -> str:
    """The one way every mail writes a date and time: in the reader's zone (`timezone` in the routing file,
    else UTC), which it names. The templates' `when` filter."""
    return moment.astimezone(zone).strftime(TIME_FORMAT)


@functools.cache
def templates() -> Environment:
    """The environment, made on first use."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(
            enabled_extensions=("html.j2",), disabled_extensions=("txt.j2",), default=True, default_for_string=True
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = when
    return environment


@dataclass(frozen=True)
class RenderedMail:
    """A rendered mail: its subject and its HTML body. Graph's sendMail carries one body, so each kind has one
    template, HTML (Outlook and every other client show it; a text part would never be delivered)."""

    subject: str
    html: str


def one_line(text: str, limit: int = 255) -> str:
    """Control characters (CR, LF ...) folded into spaces, trimmed to `limit` characters: a safe subject."""
    flat = CONTROL_RUN.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def render_mail(kind: str, subject: str, **context: Any) -> RenderedMail:
    """`templates/<kind>.html.j2` with the context (and the subject)."""
    return RenderedMail(subject, templates().get_template(f"{kind}.html.j2").render(subject=subject, **context))
