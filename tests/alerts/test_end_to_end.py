"""Alerts end to end through the devhost: a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`,
driven with `amtool`) posting to the app, and a 10,000-alert storm against a throttling Graph."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.azurite import free_port
from sandbox.launcher import SandboxProcess

from ..helpers import ROOT, Devhost, wait_for

ROUTING = """
receivers:
  - name: oncall
    to: [alice@contoso.test]
    group_by: [alertname]
    group_wait: {group_wait}
    group_interval: {group_interval}
    repeat_interval: 1h
    max_groups_per_interval: 50  # the storm's 50 groups each get their mail (the default cap is 20)
route:
  receiver: oncall
"""
ALERTMANAGER_CONFIG = """
route:
  receiver: notifier
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: notifier
    webhook_configs:
      - url: {url}/api/alerts/alertmanager
        send_resolved: true
"""


def _alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alert_host(
    alerts_app: Any, app_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Devhost]:
    """The real app in a devhost, with a routing file whose waits the test chooses (`group_wait`,
    `group_interval` via indirect parametrisation; 2 s and 4 s by default)."""
    waits = getattr(request, "param", {"group_wait": "2s", "group_interval": "4s"})
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING.format(**waits))
    env = {**os.environ, **app_env, "NOTIFY_CONFIG": str(routing)}
    host = Devhost(ROOT, env, tmp_path / "devhost.log", "--settings", str(ROOT / "local.settings.json.example"))
    yield host
    host.stop()


class Alertmanager:
    """`prometheus-alertmanager` on a free loopback port, clustering off, state in a temporary folder."""

    def __init__(self, binary: str, folder: Path, webhook_base: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "alertmanager.yml"
        config.write_text(ALERTMANAGER_CONFIG.format(url=webhook_base))
        self.log = (folder / "alertmanager.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 20, "Alertmanager to start")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def amtool(self, *args: str) -> None:
        subprocess.run(["amtool", f"--alertmanager.url={self.url}", *args], check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.mark.parametrize("alert_host", [{"group_wait": "30s", "group_interval": "5m"}], indirect=True)
def test_issue12_5_alertmanagers_notifications_pass_through_at_once_with_its_subjects(
    alert_host: Devhost, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Alertmanager groups, waits and resolves itself: each of its notifications is one mail at once, even
    though the receiver's own group_wait (30 s) and group_interval (5 m) would have held them back."""
    binary = _alertmanager_binary()
    if binary is None or shutil.which("amtool") is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus-alertmanager is not installed; `make test` installs it (Debian package)")
        pytest.skip("prometheus-alertmanager is not installed (make test installs it where it can)")
    alertmanager = Alertmanager(binary, tmp_path, alert_host.url)
    try:
        for instance in ("db-1:9100", "db-2:9100"):
            alertmanager.amtool(
                "alert",
                "add",
                "alertname=DiskFilling",
                "severity=critical",
                f"instance={instance}",
                f"--annotation=summary=/var on {instance} is 95% full",
                "--annotation=runbook_url=https://runbooks.contoso.test/disk",
            )
        wait_for(lambda: len(sandbox.sent()) >= 1, 15, "the firing mail, well before the app's group_wait")
        time.sleep(1)  # nothing else may follow it
        [firing] = sandbox.sent()
        assert firing["subject"] == "[FIRING:2] DiskFilling (critical)"  # Alertmanager's own title
        assert "/var on db-1:9100 is 95% full" in firing["body"]["content"]
        assert "/var on db-2:9100 is 95% full" in firing["body"]["content"]
        assert "https://runbooks.contoso.test/disk" in firing["body"]["content"]

        ended = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for instance in ("db-1:9100", "db-2:9100"):
            alertmanager.amtool(
                "alert", "add", "alertname=DiskFilling", "severity=critical", f"instance={instance}", f"--end={ended}"
            )
        wait_for(lambda: len(sandbox.sent()) >= 2, 20, "the resolved notice, well before the app's group_interval")
        resolved = sandbox.sent()[1]
        assert resolved["subject"] == "[RESOLVED] DiskFilling (critical)"
        assert "db-1:9100" in resolved["body"]["content"] and "db-2:9100" in resolved["body"]["content"]
        assert [r["emailAddress"]["address"] for r in resolved["toRecipients"]] == ["alice@contoso.test"]
    finally:
        alertmanager.stop()


GROUPS = 50
PER_GROUP = 200


async def _storm(url: str) -> float:
    """10,000 alerts in 50 groups, posted as Alertmanager would: one webhook per group, 50 alerts each."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        gate = asyncio.Semaphore(8)

        async def post(group: int, part: int) -> None:
            alerts = [
                {
                    "name": f"Storm{group:02d}",
                    "severity": "critical",
                    "labels": {"instance": f"host-{part * 50 + n:03d}"},
                    "summary": f"Storm{group:02d} on host-{part * 50 + n:03d}",
                }
                for n in range(50)
            ]
            async with gate:
                answer = await client.post(f"{url}/api/alerts/generic", json={"alerts": alerts})
            assert answer.status_code == 202, answer.text

        await asyncio.gather(*(post(g, p) for p in range(PER_GROUP // 50) for g in range(GROUPS)))
    return time.monotonic() - started


@pytest.mark.long
@pytest.mark.parametrize("alert_host", [{"group_wait": "30s", "group_interval": "5m"}], indirect=True)
def test_a_storm_of_10000_alerts_becomes_one_mail_per_group_and_none_is_lost_while_graph_throttles(
    alert_host: Devhost, sandbox: SandboxProcess
) -> None:
    sandbox.set_faults(throttle={"concurrentPerMailbox": 2, "requestsPerWindow": 10, "windowSeconds": 5})
    since = sandbox.last_seq()
    took = asyncio.run(_storm(alert_host.url))
    assert took < 30  # under a minute, and inside group_wait, so each group's first mail has all its alerts
    wait_for(lambda: len(sandbox.sent()) >= GROUPS, 150, f"{GROUPS} mails")
    time.sleep(2)
    sent = sandbox.sent()
    assert sorted(m["subject"] for m in sent) == [f"[FIRING:{PER_GROUP}] Storm{g:02d}" for g in range(GROUPS)]
    for mail in sent:
        body = mail["body"]["content"]
        listed = set(re.findall(r"Storm\d\d on host-(\d{3})", body))
        assert len(listed) == 50 and f"and {PER_GROUP - 50} more firing" in body
    throttled = [e for e in sandbox.requests(since) if e["status"] == 429]
    assert throttled, "the sandbox's throttle should have refused some sends"
