"""The digests' test set-up: a routing file with mailbox digests and a digest-mode alert receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EVERY_MINUTE = "0 * * * * *"
ROUTING = """
receivers:
  - name: oncall
    to: [alice@contoso.test]
  - name: low-priority
    to: [bob@contoso.test]
    mode: digest
route:
  receiver: low-priority
  routes:
    - matchers: ['severity="critical"']
      receiver: oncall
digests:
  - name: support-unread
    mailbox: support@contoso.test
    folders: [Inbox, Orders, Projects]
    include_child_folders: true
    unread_only: true
    to: [alice@contoso.test, bob@contoso.test]
    max_items: 10
  - name: forbidden
    mailbox: alice@contoso.test
    to: [bob@contoso.test]
"""


@pytest.fixture
def digest_app(app_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`function_app` with the test routing file (queues and alert tables emptied by `app_env`), and the global
    digest schedules every minute, so that the digest timer finds this minute's occurrence due."""
    from shared.config import settings
    from shared.routing_file import notify_config

    routing = tmp_path / "notify.yaml"
    routing.write_text(ROUTING)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    monkeypatch.setenv("ALERT_DIGEST_SCHEDULE", EVERY_MINUTE)
    monkeypatch.setenv("MAILBOX_DIGEST_SCHEDULE", EVERY_MINUTE)
    settings.cache_clear()
    notify_config.cache_clear()
    import function_app

    yield function_app
    notify_config.cache_clear()
    settings.cache_clear()
