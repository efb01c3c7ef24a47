"""Alerts, in stages as Alertmanager has them: intake (parse a source's payload) -> routing (receivers)
-> grouping -> dispatch (group state) -> render -> notify (the outbox); the routing file itself is
`shared.routing_file`. Each stage is a module with a small typed input and output."""

from .intake import detect_source, parse_alerts
from .model import Alert, AlertGroup
from .render import RenderedMail, render_group
from .routing import route_matches

__all__ = [
    "Alert",
    "AlertGroup",
    "RenderedMail",
    "detect_source",
    "parse_alerts",
    "render_group",
    "route_matches",
]
