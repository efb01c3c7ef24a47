"""A source whose secret is missing from Key Vault: the caller learns nothing internal, and the vault is not
asked again on every request (issue 11, item 14)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from sandbox.launcher import SandboxProcess

from ..helpers import http, run, user_function


def test_a_missing_source_secret_answers_503_without_naming_it_and_is_read_once_for_many_requests(
    alerts_app: Any, sandbox: SandboxProcess, key_vault_reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    reads = key_vault_reads
    sandbox.reset()  # the vault as seeded: the azuremonitor source's token was never put there
    caplog.set_level(logging.ERROR, logger="notifier")
    headers = {"Authorization": "Bearer some-token"}

    async def five_requests() -> list[Any]:
        function = user_function(alerts_app.post_alerts)
        body = {"name": "CPU", "severity": "critical"}
        return [
            await function(
                http("POST", "/api/alerts/azuremonitor", body, route={"source": "azuremonitor"}, headers=headers)
            )
            for _ in range(5)
        ]

    responses = run(five_requests())
    assert {r.status_code for r in responses} == {503}
    assert all(r.headers["Retry-After"] for r in responses)
    for response in responses:
        text = response.get_body().decode()
        assert "azuremonitor-webhook-token" not in text and "HTTP 404" not in text
        assert json.loads(text)["error"]["code"] == "service_unavailable"
    assert reads == ["azuremonitor-webhook-token"]  # the failure is remembered for a while
    assert "azuremonitor-webhook-token" in caplog.text  # the operator's log says which secret
