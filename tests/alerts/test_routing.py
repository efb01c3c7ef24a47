"""Routing: the route tree walked as Alertmanager walks it, and a config file validated with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.alerts import parse_alerts, route_matches
from shared.config import ConfigError
from shared.routing_file import NotifyConfig, load_notify_config, parse_duration, parse_matcher

ROOT = Path(__file__).resolve().parent.parent.parent

TREE = """
receivers:
  - {name: default, to: [ops@contoso.test]}
  - {name: db, to: [dba@contoso.test]}
  - {name: web, to: [web@contoso.test]}
  - {name: audit, to: [audit@contoso.test], mode: digest}
route:
  receiver: default
  routes:
    - matchers: ['severity="info"']
      receiver: audit
      continue: true
    - matchers: ['team=~"db|storage"']
      receiver: db
      routes:
        - matchers: ['env!="prod"']
          receiver: audit
    - matchers: ['team="web"', 'alertname!~"Test.*"']
      receiver: web
"""


@pytest.fixture
def config(tmp_path: Path) -> NotifyConfig:
    path = tmp_path / "notify.yaml"
    path.write_text(TREE)
    return load_notify_config(path)


def _route(config: NotifyConfig, **labels: str) -> list[str]:
    [alert] = parse_alerts(
        {"name": labels.pop("alertname", "Disk"), "labels": labels, "severity": labels.get("severity", "warning")}
    )
    return [r.name for r, _ in route_matches(alert, config)]


def test_first_matching_child_wins_and_continue_lets_siblings_match_too(config: NotifyConfig) -> None:
    assert _route(config, team="db", env="prod") == ["db"]
    assert _route(config, team="storage", env="dev") == ["audit"]  # the deeper route
    assert _route(config, team="db", env="prod", severity="info") == ["audit", "db"]  # continue: true
    assert _route(config, team="web") == ["web"]
    assert _route(config, team="web", alertname="TestAlert") == ["default"]  # !~ excludes it
    assert _route(config, team="mobile") == ["default"]  # nothing matched: the root's receiver


def test_a_missing_label_matches_the_empty_string() -> None:
    assert parse_matcher('team=""').matches({})
    assert not parse_matcher('team!=""').matches({})
    assert parse_matcher('team=~"db|web"').matches({"team": "web"})
    assert not parse_matcher('team=~"db"').matches({"team": "mydb"})  # anchored


def test_the_shipped_default_config_routes_by_severity() -> None:
    config = load_notify_config(ROOT / "config" / "notify.yaml")
    assert _route(config, severity="critical") == ["oncall"]
    assert _route(config, severity="high") == ["oncall"]
    assert _route(config, severity="warning") == ["alert-digest"]
    assert config.receiver("oncall").seconds("group_wait") == 30
    new, waiting = config.digests  # the README's two kinds, neither tagging
    assert (new.name, new.report, new.mailbox, new.tagging) == ("support-new", "new", "support@contoso.test", None)
    assert (waiting.name, waiting.report, waiting.tagging) == ("support-waiting", "waiting", None)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "5m", "4h", "1d", "500ms")] == [30, 300, 14400, 86400, 0.5]
    with pytest.raises(ValueError):
        parse_duration("five minutes")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("receivers: []\nroute: {receiver: x}\n", "line 1: receivers"),
        (TREE.replace("dba@contoso.test", "not-an-address"), "line 4: receivers[1].to"),
        (TREE.replace("receiver: web\n", "receiver: nobody\n"), "no receiver named 'nobody'"),
        (TREE.replace('team=~"db|storage"', 'team=~"(db"'), "line 13: route.routes[1].matchers"),
        (
            TREE.replace(
                "{name: audit, to: [audit@contoso.test], mode: digest}",
                "{name: audit, to: [audit@contoso.test], mode: later}",
            ),
            "line 6: receivers[3].mode",
        ),
        (TREE + "sources:\n  grafana: {bearer_secret: a, hmac_secret: b}\n", "sources.grafana"),
        (TREE + "unknown: 1\n", "unknown"),
        ("receivers: [", "not valid YAML"),
        (
            TREE.replace(
                "{name: web, to: [web@contoso.test]}", "{name: web, to: [web@contoso.test], group_wait: soon}"
            ),
            "line 5: receivers[2].group_wait",
        ),
        (TREE + "digests:\n  - {name: d, mailbox: support, to: [a@contoso.test]}\n", "digests[0].mailbox"),
        (
            TREE + "digests:\n  - {name: d, mailbox: s@contoso.test, folders: [Inbox//Old], to: [a@contoso.test]}\n",
            "digests[0].folders",
        ),
        (TREE + "digests:\n  - {name: d, mailbox: s@contoso.test, folders: [], to: [a@contoso.test]}\n", "folders"),
        (TREE + "digests:\n  - {name: Bad Name, mailbox: s@contoso.test, to: [a@contoso.test]}\n", "digests[0].name"),
        (TREE + "severity_map:\n  blocker: urgent\n", "severity_map.blocker"),
        (TREE + "severity_map:\n  Blocker: critical\n  BLOCKER: high\n", "differ in more than letter case"),
    ],
)
def test_bad_config_fails_with_a_message_naming_the_line_and_path(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_notify_config(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_missing_config_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOTIFY_CONFIG"):
        load_notify_config(tmp_path / "absent.yaml")


def test_receivers_and_digests_must_be_able_to_send_under_the_mail_settings(tmp_path: Path) -> None:
    from shared.config import load_settings
    from shared.routing_file import notify_config

    path = tmp_path / "notify.yaml"
    env = {
        "GRAPH_AUTH_MODE": "managed_identity",
        "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
        "NOTIFY_CONFIG": str(path),
    }
    path.write_text(
        TREE + "digests:\n  - {name: d, mailbox: s@contoso.test, sender: s@contoso.test, to: [a@contoso.test]}\n"
    )
    with pytest.raises(ConfigError, match=r"digest 'd' sends as s@contoso\.test"):
        notify_config(load_settings(env))
    path.write_text(TREE + "sources:\n  grafana: {hmac_secret: g}\n")
    with pytest.raises(ConfigError, match="KEY_VAULT_URL"):
        notify_config(load_settings(env))
    path.write_text(
        TREE + "digests:\n  - {name: d, mailbox: s@contoso.test, sender_pool: bulk, to: [a@contoso.test]}\n"
    )
    with pytest.raises(ConfigError, match="digest 'd' names sender_pool 'bulk', which MAIL_SENDER_POOLS does not"):
        notify_config(load_settings(env))
    pools = {**env, "MAIL_ALLOWED_SENDERS": "s@contoso.test", "MAIL_SENDER_POOLS": "bulk: s@contoso.test"}
    assert notify_config(load_settings(pools)).digests[0].sender_pool == "bulk"


def test_a_digest_that_mails_outside_the_allowed_domains_stops_the_app_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routing file is held to the same recipient policy as every mail, digests included."""
    from shared.config import ConfigError, load_settings
    from shared.routing_file import notify_config

    path = tmp_path / "notify.yaml"
    path.write_text(
        TREE + "digests:\n  - {name: d, mailbox: support@contoso.test, folders: [Inbox], to: [x@evil.test]}\n"
    )
    settings = load_settings(
        {
            "GRAPH_AUTH_MODE": "managed_identity",
            "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
            "MAIL_ALLOWED_RECIPIENT_DOMAINS": "contoso.test",
            "NOTIFY_CONFIG": str(path),
        }
    )
    with pytest.raises(ConfigError, match=r"digest 'd' mails x@evil\.test, outside MAIL_ALLOWED_RECIPIENT_DOMAINS"):
        notify_config(settings)


def test_the_severity_map_maps_a_sources_own_words_in_any_letter_case(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(TREE + "severity_map:\n  Blocker: critical\n  P3: info\n")
    config = load_notify_config(path)
    assert config.severity_map == {"blocker": "critical", "p3": "info"}
    [alert] = parse_alerts({"name": "X", "severity": "BLOCKER"}, severity_map=config.severity_map)
    assert alert.severity == "critical"
