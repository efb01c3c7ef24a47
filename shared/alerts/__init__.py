"""Alerts, in stages as Alertmanager has them: intake (parse a source's payload) -> routing (receivers)
-> grouping -> render -> send. Each stage is a module with a small typed input and output."""

from .intake import detect_source, parse_alerts
from .model import Alert, AlertGroup
from .render import RenderedMail, render_group
from .routing import NotifyConfig, load_notify_config, route_alert

__all__ = [
    "Alert",
    "AlertGroup",
    "NotifyConfig",
    "RenderedMail",
    "detect_source",
    "load_notify_config",
    "parse_alerts",
    "render_group",
    "route_alert",
]
