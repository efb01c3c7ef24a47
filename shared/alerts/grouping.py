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
from dataclasses import dataclass, field

from ..routing_file import NotifyConfig, Receiver
from .model import Alert, AlertGroup, Notification
from .routing import route_matches

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


def passes_through(alert: Alert, receiver: Receiver) -> bool:
    """A pre-grouping source's notification is mailed as it came, unless the receiver regroups or keeps a
    digest."""
    return alert.notification is not None and receiver.mode == "immediate" and not receiver.regroup


@dataclass
class _Gathering:
    receiver: Receiver
    labels: dict[str, str]
    notification: Notification | None
    members: dict[str, Alert] = field(default_factory=dict)
    routes: dict[str, None] = field(default_factory=dict)


def group_alerts(alerts: list[Alert], config: NotifyConfig) -> list[AlertGroup]:
    """Route every alert and gather them into groups (per receiver, source and group labels, or per receiver
    and the source's own group when it passes through), in first-seen order; an alert seen twice (same
    fingerprint) within a group counts once, its latest state winning."""
    groups: dict[str, _Gathering] = {}
    for alert in alerts:
        for receiver, route in route_matches(alert, config):
            if passes_through(alert, receiver):
                assert alert.notification is not None
                notification: Notification | None = alert.notification
                labels = alert.notification.group_labels
                key = group_key(receiver, alert.source, {"groupKey": alert.notification.group_key})
            else:
                notification = None
                labels = group_labels(alert, receiver)
                key = group_key(receiver, alert.source, labels)
            gathering = groups.setdefault(key, _Gathering(receiver, labels, notification))
            gathering.members[alert.fingerprint] = alert
            gathering.routes[route] = None
    return [
        AlertGroup(g.receiver.name, key, g.labels, tuple(g.members.values()), g.notification, tuple(g.routes))
        for key, g in groups.items()
    ]
