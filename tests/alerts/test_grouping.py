"""Grouping: alerts gathered per receiver and group_by labels, with stable keys."""

from __future__ import annotations

from pathlib import Path

from shared.alerts import parse_alerts
from shared.alerts.grouping import group_alerts, group_key
from shared.routing_file import NotifyConfig, load_notify_config

CONFIG = """
receivers:
  - {name: oncall, to: [oncall@contoso.test], group_by: [alertname, cluster]}
  - {name: each, to: [each@contoso.test], group_by: ['...']}
  - {name: all, to: [all@contoso.test], group_by: []}
route:
  receiver: oncall
  routes:
    - {matchers: ['team="db"'], receiver: each, continue: true}
    - {matchers: ['team="web"'], receiver: all}
"""


def _config(tmp_path: Path) -> NotifyConfig:
    path = tmp_path / "notify.yaml"
    path.write_text(CONFIG)
    return load_notify_config(path)


def test_alerts_sharing_group_by_values_form_one_group(tmp_path: Path) -> None:
    alerts = parse_alerts(
        [
            {"name": "DiskFilling", "labels": {"cluster": "eu-1", "instance": "db-1"}},
            {"name": "DiskFilling", "labels": {"cluster": "eu-1", "instance": "db-2"}},
            {"name": "DiskFilling", "labels": {"cluster": "us-1", "instance": "db-3"}},
            {"name": "HighLatency", "labels": {"cluster": "eu-1"}},
        ]
    )
    groups = group_alerts(alerts, _config(tmp_path))
    assert [(g.receiver, g.labels, len(g.alerts)) for g in groups] == [
        ("oncall", {"alertname": "DiskFilling", "cluster": "eu-1"}, 2),
        ("oncall", {"alertname": "DiskFilling", "cluster": "us-1"}, 1),
        ("oncall", {"alertname": "HighLatency", "cluster": "eu-1"}, 1),
    ]


def test_ellipsis_groups_each_alert_alone_and_an_empty_list_groups_all(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db = parse_alerts(
        [{"name": "A", "labels": {"team": "db", "n": "1"}}, {"name": "A", "labels": {"team": "db", "n": "2"}}]
    )
    by_receiver: dict[str, list[int]] = {}
    for group in group_alerts(db, config):
        by_receiver.setdefault(group.receiver, []).append(len(group.alerts))
    # continue: true lets siblings be tried too; none matches, and the root does not add its own receiver
    assert by_receiver == {"each": [1, 1]}
    web = parse_alerts([{"name": "A", "labels": {"team": "web"}}, {"name": "B", "labels": {"team": "web"}}])
    [group] = group_alerts(web, config)
    assert group.receiver == "all" and group.labels == {} and len(group.alerts) == 2


def test_the_same_alert_twice_counts_once_with_its_latest_state(tmp_path: Path) -> None:
    alerts = parse_alerts(
        [
            {"name": "A", "fingerprint": "f1", "labels": {"cluster": "x"}},
            {"name": "A", "fingerprint": "f1", "labels": {"cluster": "x"}, "status": "resolved"},
        ]
    )
    [group] = group_alerts(alerts, _config(tmp_path))
    assert [a.status for a in group.alerts] == ["resolved"]
    assert group.status == "resolved"


def test_group_keys_are_stable_and_distinct(tmp_path: Path) -> None:
    config = _config(tmp_path)
    oncall = config.receiver("oncall")
    key = group_key(oncall, "generic", {"alertname": "A", "cluster": "x"})
    assert key == group_key(oncall, "generic", {"cluster": "x", "alertname": "A"})
    assert key != group_key(oncall, "generic", {"alertname": "A", "cluster": "y"})
    assert key != group_key(config.receiver("each"), "generic", {"alertname": "A", "cluster": "x"})
    assert key != group_key(oncall, "grafana", {"alertname": "A", "cluster": "x"})
    assert key.startswith("oncall-") and len(key) == len("oncall-") + 24
