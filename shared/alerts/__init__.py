"""Alerts, in stages as Alertmanager has them: intake (parse a source's payload) -> routing (receivers)
-> grouping -> render -> send. Each stage is a module with a small typed input and output."""

from .intake import detect_source, parse_alerts
from .model import Alert
from .routing import NotifyConfig, load_notify_config, route_alert

__all__ = ["Alert", "NotifyConfig", "detect_source", "load_notify_config", "parse_alerts", "route_alert"]
