"""`python -m sandbox`: start-up, the client environment it prints, persistence, reset, the default seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from sandbox.launcher import SandboxProcess

from ..helpers import SENDER, SUPPORT

CLIENT_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "AZURE_AUTHORITY_HOST",
    "GRAPH_BASE_URL",
    "KEY_VAULT_URL",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
)


def test_default_seed_starts_fast_prints_client_environment_and_ships_the_design_mailboxes(
    tmp_path: Path, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxProcess(tmp_path / "default") as default:
        for name, value in default.env.items():
            monkeypatch.setenv(name, value)
        assert default.startup_seconds < 3
        for name in CLIENT_VARIABLES:
            assert f"export {name}=" in default.banner
        assert (tmp_path / "default" / "ca.pem").exists()
        assert (tmp_path / "default" / "ca-bundle.pem").read_text().count("BEGIN CERTIFICATE") > 10

        health = default.control.get("/_sandbox/health").json() if default.control else {}
        assert health["users"] == 4
        assert {m["subject"] for m in default.mailbox(SUPPORT, "Inbox/Escalations")} == {
            "Outage in region West",
            "Data export stuck at 90%",
        }
        assert any(not m["isRead"] for m in default.mailbox(SUPPORT, "inbox"))
        assert default.mailbox(SENDER) == []

        # the default managed identity reads the vault secret that is the default app's client secret
        credential = ManagedIdentityCredential()
        vault = SecretClient(default.env["KEY_VAULT_URL"], credential, verify_challenge_resource=False)
        assert vault.get_secret("graph-client-secret").value == "sandbox-graph-client-secret"


def test_state_survives_a_restart_and_reset_restores_the_seed(tmp_path: Path, sandbox: SandboxProcess) -> None:
    with SandboxProcess(tmp_path / "state") as process:
        process.deliver("alice@contoso.test", [{"subject": "kept across restarts", "from": "x@example.test"}])
        process.restart()
        assert [m["subject"] for m in process.mailbox("alice@contoso.test")] == ["kept across restarts"]

        process.reset()
        assert process.mailbox("alice@contoso.test") == []
        assert len(process.mailbox(SUPPORT)) == 5


def test_bad_seed_file_fails_with_a_message_naming_the_field(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text('{"tenant": {"id": "t"}, "users": []}')
    process = SandboxProcess(tmp_path / "bad", seed=seed)
    try:
        process.start()
    except RuntimeError as error:
        assert "seed tenant.domain" in str(error)
    else:
        process.stop()
        raise AssertionError("a seed without tenant.domain was accepted")
