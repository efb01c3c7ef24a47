"""The alert pipeline's test set-up: a routing file with sources that authenticate, and clean alert state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess

ROUTING = """
receivers:
  - name: oncall
    to: [alice@contoso.test]
    group_by: [alertname]
    group_wait: 30s
    group_interval: 5m
    repeat_interval: 10m
    send_resolved: true
  - name: quiet
    to: [bob@contoso.test]
    group_by: [alertname]
    send_resolved: false
  - name: digest
    to: [bob@contoso.test]
    mode: digest
route:
  receiver: digest
  routes:
    - matchers: ['team="quiet"']
      receiver: quiet
    - matchers: ['severity=~"critical|high"']
      receiver: oncall
sources:
  grafana:
    hmac_secret: grafana-webhook-hmac
    timestamp_header: X-Grafana-Alerting-Timestamp
    replay_window: 5m
  azuremonitor:
    bearer_secret: azuremonitor-webhook-token
severity_map:
  Blocker: critical
"""
GRAFANA_SECRET = "grafana-hmac-value"
AZURE_MONITOR_TOKEN = "azure-monitor-token-value"


@pytest.fixture
def alerts_app(
    app_env: dict[str, str],
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """`function_app` with the test routing file and its source secrets in the vault (`app_env` has emptied
    the queues and the alert tables)."""
    from shared.routing_file import notify_config

    routing = tmp_path / "notify.yaml"
    routing.write_text(ROUTING)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    sandbox.control.post("/_sandbox/keyvault/secrets/grafana-webhook-hmac", json={"value": GRAFANA_SECRET})
    sandbox.control.post("/_sandbox/keyvault/secrets/azuremonitor-webhook-token", json={"value": AZURE_MONITOR_TOKEN})
    notify_config.cache_clear()
    import function_app

    yield function_app
    notify_config.cache_clear()
