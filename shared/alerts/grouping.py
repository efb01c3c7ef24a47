"""Grouping, the stateless half: which group each routed alert joins, and the group's stable key.

A group is a receiver's alerts that share the values of its `group_by` labels (`...` groups by every
label, so each alert is its own group; an empty list puts all of a receiver's alerts in one group), as
in Alertmanager. The key is stable across processes and runs, so group state (timers, what was sent) can be
stored under it. The stateful half (group_wait, group_interval, repeat and resolved notices) builds on this.
"""

from __future__ import annotations

import hashlib
import json
import re

from .model import Alert, AlertGroup
from .routing import NotifyConfig, Receiver, route_alert

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")  # Table keys refuse slashes, #, ? and control characters


def group_labels(alert: Alert, receiver: Receiver) -> dict[str, str]:
    """The labels that decide an alert's group under a receiver (missing labels are left out)."""
    if "..." in receiver.group_by:
        return dict(sorted(alert.labels.items()))
    return {name: alert.labels[name] for name in receiver.group_by if name in alert.labels}


def receiver_key(name: str) -> str:
    """A receiver's name made safe as a Table key (the digest buffer's partition)."""
    return _KEY_UNSAFE.sub("_", name)[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def group_key(receiver: Receiver, source: str, labels: dict[str, str]) -> str:
    """A stable id for (receiver, source, group labels): safe as a Table storage key and a queue message id
    part. The source is part of it, so one source's alerts never share a group with another's."""
    digest = hashlib.sha256(json.dumps([receiver.name, source, sorted(labels.items())]).encode()).hexdigest()
    return f"{_KEY_UNSAFE.sub('_', receiver.name)[:40]}-{digest[:24]}"


def group_alerts(alerts: list[Alert], config: NotifyConfig) -> list[AlertGroup]:
    """Route every alert and gather them into groups (per receiver, source and group labels), in first-seen
    order; an alert seen twice (same fingerprint) within a group counts once, its latest state winning."""
    groups: dict[str, tuple[Receiver, dict[str, str], dict[str, Alert]]] = {}
    for alert in alerts:
        for receiver in route_alert(alert, config):
            labels = group_labels(alert, receiver)
            key = group_key(receiver, alert.source, labels)
            groups.setdefault(key, (receiver, labels, {}))[2][alert.fingerprint] = alert
    return [
        AlertGroup(receiver.name, key, labels, tuple(members.values()))
        for key, (receiver, labels, members) in groups.items()
    ]
