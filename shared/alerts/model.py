"""The one typed Alert every source is mapped to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["firing", "resolved"]
SEVERITIES = ("critical", "high", "warning", "info")
# the words of common sources and scales (syslog, Opsgenie's P1-P5, Azure's Sev0-4, Zabbix, PagerDuty's urgent)
# and the severity each means; docs/alerts.md lists them, a routing file's severity_map adds more
SEVERITY_WORDS = {
    "critical": "critical",
    "urgent": "critical",
    "emerg": "critical",
    "alert": "critical",
    "crit": "critical",
    "fatal": "critical",
    "emergency": "critical",
    "page": "critical",
    "disaster": "critical",
    "sev0": "critical",
    "p1": "critical",
    "high": "high",
    "error": "high",
    "err": "high",
    "major": "high",
    "sev1": "high",
    "p2": "high",
    "warning": "warning",
    "warn": "warning",
    "medium": "warning",
    "minor": "warning",
    "average": "warning",
    "sev2": "warning",
    "p3": "warning",
    "info": "info",
    "informational": "info",
    "information": "info",
    "low": "info",
    "notice": "info",
    "verbose": "info",
    "debug": "info",
    "none": "info",
    "sev3": "info",
    "sev4": "info",
    "p4": "info",
    "p5": "info",
}


def normalise_severity(value: Any, severity_map: Mapping[str, str] | None = None) -> str:
    """Map a source's severity word (any letter case) onto critical/high/warning/info: the routing file's
    `severity_map` first, then SEVERITY_WORDS; `warning` when none is given. A word neither knows is a
    ValueError naming the known ones: an alert is never filed under a guessed severity."""
    if value is None or not str(value).strip():
        return "warning"
    word = str(value).strip().lower()
    mapped = (severity_map or {}).get(word) or SEVERITY_WORDS.get(word)
    if mapped is None:
        words = sorted({*SEVERITY_WORDS, *(severity_map or {})} - set(SEVERITIES))
        raise ValueError(
            f"{value!r} is not a known severity: use {', '.join(SEVERITIES)} or one of {', '.join(words)}, "
            "or map it in the routing file's severity_map"
        )
    return mapped


def stamp(moment: datetime) -> str:
    """The second-resolution UTC form the pipeline stores times in (`2026-11-23T08:01:30Z`)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime:
    """A time `stamp` wrote; ValueError for anything else."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def fingerprint_of(labels: dict[str, str]) -> str:
    """A stable identity of a label set, for sources that send none (16 hex digits, like Alertmanager's)."""
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Notification:
    """A group as a pre-grouping source (Alertmanager, a Grafana contact point) formed and notified it: the
    payload's `groupKey`, `status`, `groupLabels`, `commonLabels`, `truncatedAlerts` and `externalURL`."""

    group_key: str
    status: Status
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    truncated: int = 0
    external_url: str = ""


@dataclass(frozen=True)
class Alert:
    """One alert, whatever sent it. `labels` identify it (and carry `alertname` and `severity`);
    `annotations` describe it; `links` point back to the source, runbook, dashboard, silence."""

    source: str
    name: str
    status: Status
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    fingerprint: str = ""
    links: dict[str, str] = field(default_factory=dict)
    notification: Notification | None = field(default=None, compare=False)  # set by pre-grouping sources

    def as_dict(self) -> dict[str, Any]:
        """The JSON form an alert is stored in (group rows, the digest buffer, notices)."""
        return {
            "source": self.source,
            "name": self.name,
            "status": self.status,
            "severity": self.severity,
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at.isoformat() if self.starts_at else None,
            "endsAt": self.ends_at.isoformat() if self.ends_at else None,
            "fingerprint": self.fingerprint,
            "links": self.links,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            source=data["source"],
            name=data["name"],
            status="resolved" if data["status"] == "resolved" else "firing",
            severity=data["severity"],
            labels=dict(data["labels"]),
            annotations=dict(data.get("annotations") or {}),
            starts_at=moment(data.get("startsAt")),
            ends_at=moment(data.get("endsAt")),
            fingerprint=data.get("fingerprint", ""),
            links=dict(data.get("links") or {}),
        )

    def status_at(self, moment: datetime) -> Status:
        """Resolved when the source said so, or when its announced end has passed."""
        if self.status == "resolved" or (self.ends_at is not None and self.ends_at <= moment):
            return "resolved"
        return "firing"

    @property
    def summary(self) -> str:
        return (
            self.annotations.get("summary")
            or self.annotations.get("title")
            or self.annotations.get("description", "")[:200]
            or self.name
        )


@dataclass(frozen=True)
class AlertGroup:
    """What one notification is about: a receiver's alerts that share the values of its group_by labels."""

    receiver: str
    key: str
    labels: dict[str, str]  # the group_by labels and their values (the source's groupLabels when passed through)
    alerts: tuple[Alert, ...]
    notification: Notification | None = None  # the source's notification a passed-through group mails as is
    routes: tuple[str, ...] = ()  # the routes (`route.routes[1]`) its alerts matched

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "resolved"]

    @property
    def status(self) -> Status:
        return "firing" if self.firing else "resolved"
