"""Intake: Alertmanager (webhook v4), Grafana (unified alerting webhook), Azure Monitor (common alert schema:
metric, log search, activity log) and a generic JSON alert, mapped to `Alert`s. Unknown or malformed
payloads raise `invalid_request` naming the place and the reason."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ..errors import AppError, Detail, InvalidRequest, NotFound
from .model import Alert, Notification, fingerprint_of, normalise_severity

SOURCES = ("alertmanager", "grafana", "azuremonitor", "generic")
# What one alert may bring. Labels identify an alert, so they are refused (400) rather than changed; text
# that only describes it is cut, with a marker. The stored form must fit a Table property (32 K UTF-16 units)
# and 100 of them a Table transaction (4 MiB), hence MAX_STORED.
MAX_ALERTS = 10_000  # per payload
MAX_NAME = 256  # characters per label, annotation or link name
MAX_LABELS = 64  # labels per alert
MAX_LABEL = 1024  # characters per label value
MAX_LABELS_TOTAL = 8 * 1024  # characters of label names and values per alert
MAX_ANNOTATIONS = 64  # annotations per alert
MAX_ANNOTATION = 4 * 1024  # characters per annotation; longer ones are cut
MAX_ANNOTATIONS_TOTAL = 8 * 1024  # characters of annotation values per alert; the longest are cut to fit
MAX_LINKS = 16  # links per generic alert
MAX_URL = 2048  # characters per link
MAX_FINGERPRINT = 128
MAX_STORED = 16_000  # characters of an alert's stored JSON
CUT = "\u2026"  # the marker that ends a shortened text
_NEVER = "0001-01-01T00:00:00Z"  # Alertmanager's and Grafana's "no end yet"


def _fail(source: str, where: str, reason: str) -> AppError:
    return InvalidRequest(f"{source}: {where}: {reason}", [Detail(where, reason)])


def _severity(value: Any, source: str, where: str, severity_map: Mapping[str, str] | None) -> str:
    """The alert's severity from the source's word; an unknown word is refused naming the known ones."""
    try:
        return normalise_severity(value, severity_map)
    except ValueError as error:
        raise _fail(source, where, str(error)) from None


def _time(value: Any, source: str, where: str) -> datetime | None:
    if value in (None, "", _NEVER):
        return None
    if not isinstance(value, str):
        raise _fail(source, where, "must be an RFC 3339 time")
    text = value.replace("Z", "+00:00")
    if "." in text:  # Azure sends 7 fractional digits; Python reads at most 6
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(source, where, f"{value!r} is not an RFC 3339 time") from None
    if moment.year <= 1:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def web_links(links: dict[str, Any]) -> dict[str, str]:
    """The http(s) links among `links`; script URLs and links longer than MAX_URL are left out."""
    return {
        k: v
        for k, v in links.items()
        if isinstance(v, str) and v.startswith(("https://", "http://")) and len(v) <= MAX_URL
    }


def cut_text(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters ending in the cut marker."""
    return text if len(text) <= limit else text[: limit - 1] + CUT


def _strings(value: Any, source: str, where: str, limit: int, cut: bool = False, most: int = 0) -> dict[str, str]:
    """A map of strings (at most `most` entries, when given); numbers and booleans become text, anything else
    is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(source, where, "must be an object of strings")
    if most and len(value) > most:
        raise _fail(source, where, f"{len(value)} entries; at most {most}")
    result = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, bool):
            item = str(item).lower()
        elif isinstance(item, (int, float)):
            item = str(item)
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise _fail(source, f"{where}.{key}", "must be a string")
        if len(key) > MAX_NAME:
            raise _fail(source, f"{where}.{key[:40]}{CUT}", f"names are at most {MAX_NAME} characters")
        if len(item) > limit:
            if not cut:
                raise _fail(source, f"{where}.{key}", f"longer than {limit} characters")
            item = cut_text(item, limit)
        result[key] = item
    return result


def _labels(value: Any, source: str, where: str) -> dict[str, str]:
    labels = _strings(value, source, where, MAX_LABEL, most=MAX_LABELS)
    total = sum(len(k) + len(v) for k, v in labels.items())
    if total > MAX_LABELS_TOTAL:
        raise _fail(source, where, f"{total} characters of names and values; at most {MAX_LABELS_TOTAL}")
    return labels


def _annotations(value: Any, source: str, where: str) -> dict[str, str]:
    return _strings(value, source, where, MAX_ANNOTATION, cut=True, most=MAX_ANNOTATIONS)


def _stored_size(alert: Alert) -> int:
    return len(json.dumps(alert.as_dict(), separators=(",", ":")))


def bounded(alert: Alert, source: str, where: str) -> Alert:
    """The alert as it will be stored: annotations cut (longest first) until their total and the stored JSON
    fit; 400 naming the alert when what identifies it (labels, links, fingerprint) alone does not fit."""
    if len(alert.fingerprint) > MAX_FINGERPRINT:
        raise _fail(source, f"{where}.fingerprint", f"longer than {MAX_FINGERPRINT} characters")
    annotations = {k: cut_text(v, MAX_ANNOTATION) for k, v in alert.annotations.items()}
    if len(annotations) > MAX_ANNOTATIONS:
        raise _fail(source, f"{where}.annotations", f"{len(annotations)} entries; at most {MAX_ANNOTATIONS}")
    alert = replace(alert, annotations=annotations)
    while annotations and (
        sum(len(v) for v in annotations.values()) > MAX_ANNOTATIONS_TOTAL or _stored_size(alert) > MAX_STORED
    ):
        longest = max(annotations, key=lambda name: len(annotations[name]))
        value = annotations[longest]
        if len(value) > 64:
            annotations[longest] = cut_text(value, len(value) // 2)
        else:
            del annotations[longest]
        alert = replace(alert, annotations=dict(annotations))
    size = _stored_size(alert)
    if size > MAX_STORED:
        raise _fail(source, where, f"{size} characters as stored without annotations; at most {MAX_STORED}")
    return alert


def _status(value: Any, source: str, where: str) -> str:
    text = str(value or "").lower()
    if text in {"firing", "fired", "alerting", "active", "activated", "triggered"}:
        return "firing"
    if text in {"resolved", "ok", "normal", "deactivated", "closed"}:
        return "resolved"
    raise _fail(source, where, f"status {value!r} is neither firing nor resolved")


def _alert_list(body: dict[str, Any], source: str) -> list[Any]:
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise _fail(source, "alerts", "must be an array")
    if len(alerts) > MAX_ALERTS:
        raise _fail(source, "alerts", f"{len(alerts)} alerts; at most {MAX_ALERTS} per request")
    return alerts


def _prometheus_style(body: dict[str, Any], source: str, severity_map: Mapping[str, str] | None) -> list[Alert]:
    """Alertmanager's webhook, which Grafana's extends with per-alert links."""
    common = _annotations(body.get("commonAnnotations"), source, "commonAnnotations")
    notification = _notification(body, source)
    alerts = []
    for index, item in enumerate(_alert_list(body, source)):
        where = f"alerts[{index}]"
        if not isinstance(item, dict):
            raise _fail(source, where, "must be an object")
        labels = _labels(item.get("labels"), source, f"{where}.labels")
        if not labels.get("alertname"):
            raise _fail(source, f"{where}.labels.alertname", "is required")
        annotations = {
            **common,
            **_annotations(item.get("annotations"), source, f"{where}.annotations"),
        }
        links = {
            "source": item.get("generatorURL"),
            "silence": item.get("silenceURL") or _alertmanager_silence(notification, labels, source),
            "dashboard": item.get("dashboardURL"),
            "panel": item.get("panelURL"),
            "runbook": annotations.get("runbook_url") or annotations.get("runbook"),
        }
        if source == "grafana" and item.get("valueString"):
            annotations.setdefault("values", str(item["valueString"]))
        elif source == "grafana" and isinstance(item.get("values"), dict):
            annotations.setdefault("values", ", ".join(f"{k}={v}" for k, v in item["values"].items()))
        alerts.append(
            bounded(
                Alert(
                    source=source,
                    name=labels["alertname"],
                    status=_status(item.get("status") or body.get("status"), source, f"{where}.status"),  # type: ignore[arg-type]
                    severity=_severity(
                        labels.get("severity") or labels.get("priority"),
                        source,
                        f"{where}.labels.{'severity' if labels.get('severity') else 'priority'}",
                        severity_map,
                    ),
                    labels=labels,
                    annotations=annotations,
                    starts_at=_time(item.get("startsAt"), source, f"{where}.startsAt"),
                    ends_at=_time(item.get("endsAt"), source, f"{where}.endsAt"),
                    fingerprint=str(item.get("fingerprint") or fingerprint_of(labels)),
                    links=web_links(links),
                    notification=notification,
                ),
                source,
                where,
            )
        )
    return alerts


def _alertmanager_silence(notification: Notification | None, labels: dict[str, str], source: str) -> str | None:
    """Alertmanager's new-silence form for an alert, its labels as matchers (`<externalURL>/#/silences/new
    ?filter={alertname="X",instance="y"}`), as Alertmanager's own UI links it."""
    if source != "alertmanager" or notification is None or not notification.external_url:
        return None
    matchers = ",".join(
        f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for name, value in sorted(labels.items())
    )
    return f"{notification.external_url.rstrip('/')}/#/silences/new?filter={quote('{' + matchers + '}', safe='')}"


def _notification(body: dict[str, Any], source: str) -> Notification | None:
    """The source's own group, when the payload names one (`groupKey`); None lets the app group its alerts."""
    key = body.get("groupKey")
    if not isinstance(key, str) or not key:
        return None
    if len(key) > MAX_LABELS_TOTAL:
        raise _fail(source, "groupKey", f"longer than {MAX_LABELS_TOTAL} characters")
    truncated = body.get("truncatedAlerts") or 0
    external = body.get("externalURL")
    alerts = body.get("alerts")
    firing = isinstance(alerts, list) and any(
        isinstance(a, dict) and str(a.get("status", "")).lower() == "firing" for a in alerts
    )
    status = body.get("status") or ("firing" if firing else "resolved")
    return Notification(
        group_key=key,
        status=_status(status, source, "status"),  # type: ignore[arg-type]
        group_labels=_labels(body.get("groupLabels"), source, "groupLabels"),
        common_labels=_labels(body.get("commonLabels"), source, "commonLabels"),
        truncated=truncated if isinstance(truncated, int) and truncated > 0 else 0,
        external_url=next(iter(web_links({"x": external}).values()), ""),
    )


def parse_alertmanager(body: dict[str, Any], severity_map: Mapping[str, str] | None = None) -> list[Alert]:
    if str(body.get("version", "4")) != "4":
        raise _fail("alertmanager", "version", f"webhook version {body.get('version')!r} is not 4")
    return _prometheus_style(body, "alertmanager", severity_map)


def parse_grafana(body: dict[str, Any], severity_map: Mapping[str, str] | None = None) -> list[Alert]:
    return _prometheus_style(body, "grafana", severity_map)


def parse_azure_monitor(body: dict[str, Any], severity_map: Mapping[str, str] | None = None) -> list[Alert]:
    """The common alert schema: `essentials` for every signal, `alertContext` by signal type."""
    source = "azuremonitor"
    if body.get("schemaId") != "azureMonitorCommonAlertSchema":
        raise _fail(
            source,
            "schemaId",
            "must be azureMonitorCommonAlertSchema (enable the common alert schema on the action group)",
        )
    data = body.get("data")
    essentials = data.get("essentials") if isinstance(data, dict) else None
    if not isinstance(essentials, dict):
        raise _fail(source, "data.essentials", "must be an object")
    rule = essentials.get("alertRule")
    if not isinstance(rule, str) or not rule:
        raise _fail(source, "data.essentials.alertRule", "is required")
    severity = str(essentials.get("severity") or "")
    signal = str(essentials.get("signalType") or "")
    targets = essentials.get("alertTargetIDs") or []
    items = essentials.get("configurationItems") or []
    labels = {
        "alertname": rule,
        "severity": _severity(severity, source, "data.essentials.severity", severity_map),
        "azure_severity": severity,
        "signal_type": signal,
        "monitoring_service": str(essentials.get("monitoringService") or ""),
    }
    if targets and isinstance(targets, list):
        labels["resource"] = str(targets[0])
    if items and isinstance(items, list):
        labels["target"] = ", ".join(str(i) for i in items)
    custom = data.get("customProperties") if isinstance(data, dict) else None
    properties = _strings(custom, source, "data.customProperties", MAX_URL, most=MAX_LABELS)
    custom_links = web_links(properties)  # a URL among the custom properties is a link, not a label
    for name, value in properties.items():
        if name not in custom_links:
            if len(value) > MAX_LABEL:
                raise _fail(source, f"data.customProperties.{name}", f"longer than {MAX_LABEL} characters")
            labels[name] = value
    labels = {k: v for k, v in labels.items() if v}
    annotations = {"description": str(essentials.get("description") or "")}
    context = data.get("alertContext") if isinstance(data, dict) else None
    annotations.update(_azure_context(signal, context if isinstance(context, dict) else {}))
    links = {}
    alert_id = essentials.get("alertId")
    if isinstance(alert_id, str) and alert_id:
        links["source"] = (
            "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/"
            f"AlertDetails.ReactView/alertId~/{quote(alert_id, safe='')}"
        )
    search = _azure_search_link(context if isinstance(context, dict) else {})
    if search:
        links["dashboard"] = search
    links.update({name: url for name, url in custom_links.items() if name not in links})
    links = web_links(links)  # the portal and search links too: http(s) only, at most MAX_URL characters
    alert = Alert(
        source=source,
        name=rule,
        status=_status(
            essentials.get("monitorCondition"),
            source,  # type: ignore[arg-type]
            "data.essentials.monitorCondition",
        ),
        severity=labels["severity"],
        labels=labels,
        annotations={k: v for k, v in annotations.items() if v},
        starts_at=_time(essentials.get("firedDateTime"), source, "data.essentials.firedDateTime"),
        ends_at=_time(essentials.get("resolvedDateTime"), source, "data.essentials.resolvedDateTime"),
        fingerprint=str(essentials.get("originAlertId") or alert_id or fingerprint_of(labels))[:MAX_FINGERPRINT],
        links=links,
    )
    if sum(len(k) + len(v) for k, v in labels.items()) > MAX_LABELS_TOTAL:
        raise _fail(source, "data.customProperties", f"labels over {MAX_LABELS_TOTAL} characters in all")
    return [bounded(alert, source, "data")]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _azure_context(signal: str, context: dict[str, Any]) -> dict[str, str]:
    """What caused the alert, in words, per signal type."""
    condition = _object(context.get("condition"))
    criteria = condition.get("allOf") if isinstance(condition.get("allOf"), list) else []
    notes: dict[str, str] = {}
    if signal.lower() == "metric" and criteria:
        first = criteria[0] if isinstance(criteria[0], dict) else {}
        notes["summary"] = (
            f"{first.get('metricName', 'metric')} {first.get('operator', '')} "
            f"{first.get('threshold', '')} (value {first.get('metricValue', '?')})"
        ).strip()
    elif signal.lower() == "log":
        first = criteria[0] if criteria and isinstance(criteria[0], dict) else {}
        query = first.get("searchQuery") or context.get("SearchQuery")
        if query:
            notes["query"] = str(query)[:MAX_ANNOTATION]
        value = first.get("metricValue", context.get("ResultCount"))
        if value is not None:
            notes["summary"] = (
                f"log search returned {value} (threshold {first.get('operator', '')} "
                f"{first.get('threshold', context.get('Threshold', '?'))})"
            )
    elif signal.lower() == "activity log":
        operation, status, caller = context.get("operationName"), context.get("status"), context.get("caller")
        if operation:
            notes["summary"] = f"{operation}: {status or 'unknown status'}" + (f" by {caller}" if caller else "")
    return {k: v.strip() for k, v in notes.items() if isinstance(v, str)}


def _azure_search_link(context: dict[str, Any]) -> str | None:
    condition = _object(context.get("condition"))
    for criterion in condition.get("allOf") or []:
        if isinstance(criterion, dict):
            for key in ("linkToFilteredSearchResultsUI", "linkToSearchResultsUI"):
                if str(criterion.get(key, "")).startswith("https://"):
                    return str(criterion[key])
    link = context.get("LinkToSearchResults")
    return str(link) if isinstance(link, str) and link.startswith("https://") else None


GENERIC_FIELDS = frozenset(
    {
        "name",
        "alertname",
        "status",
        "severity",
        "summary",
        "description",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "links",
    }
)


def _unknown_fields(item: dict[str, Any], known: frozenset[str], source: str, where: str) -> None:
    """Refuse fields the format does not have, as `/api/mail` does: a typo must not be dropped silently."""
    unknown = sorted(str(k) for k in item if k not in known)
    if unknown:
        raise _fail(source, f"{where}.{unknown[0]}", f"unknown field; the fields are {', '.join(sorted(known))}")


def _generic_links(value: Any, source: str, where: str) -> dict[str, str]:
    """Links as a map `{"runbook": url}` or a list `[{"title": "runbook", "url": url}]`."""
    if not isinstance(value, list):
        return _strings(value, source, where, MAX_URL, most=MAX_LINKS)
    if len(value) > MAX_LINKS:
        raise _fail(source, where, f"{len(value)} entries; at most {MAX_LINKS}")
    links: dict[str, str] = {}
    for index, entry in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise _fail(source, at, 'must be an object like {"title": "runbook", "url": "https://..."}')
        _unknown_fields(entry, frozenset({"title", "url"}), source, at)
        title, url = entry.get("title"), entry.get("url")
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_NAME:
            raise _fail(source, f"{at}.title", f"must be a text of 1-{MAX_NAME} characters")
        if not isinstance(url, str) or len(url) > MAX_URL:
            raise _fail(source, f"{at}.url", f"must be a URL of at most {MAX_URL} characters")
        if title.strip() in links:
            raise _fail(source, f"{at}.title", f"{title!r} is given twice")
        links[title.strip()] = url
    return links


def parse_generic(body: Any, severity_map: Mapping[str, str] | None = None) -> list[Alert]:
    """`{"name", "status", "severity", "summary", "description", "labels", "annotations", "startsAt", "endsAt",
    "fingerprint", "links"}`, one or a list of them, or `{"alerts": [...]}`. Unknown fields are refused."""
    source = "generic"
    wrapped = isinstance(body, dict) and "alerts" in body
    if wrapped:
        _unknown_fields(body, frozenset({"alerts"}), source, "body")
    items = body.get("alerts") if wrapped else body
    items = items if isinstance(items, list) else [items]
    if len(items) > MAX_ALERTS:
        raise _fail(source, "alerts", f"{len(items)} alerts; at most {MAX_ALERTS} per request")
    alerts = []
    for index, item in enumerate(items):
        where = f"alerts[{index}]" if len(items) > 1 or isinstance(body, list) else "alert"
        if not isinstance(item, dict):
            raise _fail(source, where, "must be an object")
        _unknown_fields(item, GENERIC_FIELDS, source, where)
        labels = _labels(item.get("labels"), source, f"{where}.labels")
        name = item.get("name") or item.get("alertname") or labels.get("alertname")
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, f"{where}.name", "is required")
        given = "severity" if item.get("severity") else "labels.severity"
        severity = _severity(item.get("severity") or labels.get("severity"), source, f"{where}.{given}", severity_map)
        labels = {**labels, "alertname": name.strip(), "severity": severity}
        annotations = _annotations(item.get("annotations"), source, f"{where}.annotations")
        for key in ("summary", "description"):
            if isinstance(item.get(key), str):
                annotations[key] = cut_text(item[key], MAX_ANNOTATION)
        links = _generic_links(item.get("links"), source, f"{where}.links")
        alerts.append(
            bounded(
                Alert(
                    source=source,
                    name=name.strip(),
                    severity=severity,
                    labels=labels,
                    annotations=annotations,
                    status=_status(item.get("status", "firing"), source, f"{where}.status"),  # type: ignore[arg-type]
                    starts_at=_time(item.get("startsAt"), source, f"{where}.startsAt"),
                    ends_at=_time(item.get("endsAt"), source, f"{where}.endsAt"),
                    fingerprint=str(item.get("fingerprint") or fingerprint_of(labels)),
                    links=web_links(links),
                ),
                source,
                where,
            )
        )
    return alerts


PARSERS: dict[str, Callable[[Any, Mapping[str, str] | None], list[Alert]]] = {
    "alertmanager": parse_alertmanager,
    "grafana": parse_grafana,
    "azuremonitor": parse_azure_monitor,
    "generic": parse_generic,
}


# What only Grafana's webhook carries beside Alertmanager's fields (top level, and per alert)
_GRAFANA_FIELDS = frozenset({"orgId", "state", "title", "message"})
_GRAFANA_ALERT_FIELDS = frozenset({"silenceURL", "dashboardURL", "panelURL", "values", "valueString", "imageURL"})


def _looks_like_grafana(body: dict[str, Any]) -> bool:
    if _GRAFANA_FIELDS & body.keys() or str(body.get("version")) == "1":
        return True
    alerts = body.get("alerts")
    return isinstance(alerts, list) and any(isinstance(a, dict) and _GRAFANA_ALERT_FIELDS & a.keys() for a in alerts)


def apparent_sources(body: Any) -> set[str]:
    """Every source a payload looks as if it came from, by the fields only that source sends. A request must
    pass the authentication of each of them, so reshaping or re-addressing a payload never weakens the check."""
    found = set()
    if isinstance(body, dict):
        if body.get("schemaId") == "azureMonitorCommonAlertSchema" or isinstance(
            _object(body.get("data")).get("essentials"), dict
        ):
            found.add("azuremonitor")
        if _looks_like_grafana(body):
            found.add("grafana")
        if "groupKey" in body and "grafana" not in found:
            found.add("alertmanager")
    return found


# the top-level fields each format has, to find the closest one for a payload no marker identifies
_FORMAT_FIELDS = {
    "generic": GENERIC_FIELDS | {"alerts"},
    "alertmanager": frozenset(
        {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels"}
        | {"commonAnnotations", "externalURL", "alerts"}
    ),
    "azuremonitor": frozenset({"schemaId", "data"}),
}


def detect_source(body: Any) -> str:
    """Which source sent a payload, from its shape. A payload no format's marker identifies goes to the format
    whose fields it shares most, whose parser then names what it lacks (`alert.name: is required`); one that
    shares none is refused naming each format's marks."""
    if isinstance(body, dict):
        if body.get("schemaId") == "azureMonitorCommonAlertSchema":
            return "azuremonitor"
        if "groupKey" in body and "alerts" in body:
            return "grafana" if _looks_like_grafana(body) else "alertmanager"
        if "name" in body or "alertname" in body or isinstance(body.get("alerts"), list):
            return "generic"
        shared = {name: len(fields & body.keys()) for name, fields in _FORMAT_FIELDS.items()}
        closest = max(shared, key=lambda name: shared[name])  # ties: the first, generic
        if shared[closest]:
            return closest
    if isinstance(body, list) and body and all(isinstance(i, dict) for i in body):
        return "generic"
    raise InvalidRequest(
        "The payload is not an alert from Alertmanager, Grafana, Azure Monitor (common alert schema) or the "
        "generic format: it has none of their fields (generic: name, severity, labels ...; Alertmanager and "
        "Grafana: groupKey, alerts; Azure Monitor: schemaId, data); name the source in the URL if it is one "
        "of them.",
        [Detail("body", "unknown alert format: none of the formats' fields")],
    )


def parse_alerts(body: Any, source: str | None = None, severity_map: Mapping[str, str] | None = None) -> list[Alert]:
    """Alerts from a payload, of the named source or the detected one; severity words as SEVERITY_WORDS and
    the routing file's `severity_map` say."""
    chosen = source or detect_source(body)
    if chosen not in PARSERS:
        raise NotFound(f"Unknown alert source {chosen!r}; one of {', '.join(SOURCES)}.")
    if chosen != "generic" and not isinstance(body, dict):
        raise _fail(chosen, "body", "must be a JSON object")
    return PARSERS[chosen](body, severity_map)
