"""The Graph credential in its three shapes, each sending a real mail through the sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.launcher import SandboxProcess
from shared.config import load_settings
from shared.credentials import CredentialError, KeyVaultGraphCredential, graph_scope
from shared.graph import GraphClient

from .helpers import CERT_APP_ID, MI_GRAPH_ID, SENDER, run

BODY = {
    "message": {"subject": "credential check", "toRecipients": [{"emailAddress": {"address": "bob@contoso.test"}}]},
    "saveToSentItems": False,
}


def _send(env: dict[str, str]) -> None:
    async def go() -> None:
        client = GraphClient(load_settings(env))
        try:
            await client.send_mail(SENDER, BODY)
        finally:
            await client.close()

    run(go())


def test_keyvault_mode_with_a_client_secret(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    _send(app_env)
    assert [m["subject"] for m in sandbox.mailbox("bob@contoso.test")] == ["credential check"]


def test_keyvault_mode_with_a_certificate_stored_as_a_pem_secret(
    app_env: dict[str, str], sandbox: SandboxProcess, certificate: dict[str, Any]
) -> None:
    assert sandbox.control is not None
    sandbox.control.post(
        "/_sandbox/keyvault/secrets/graph-client-cert", json={"value": certificate["path"].read_text()}
    ).raise_for_status()
    _send(
        {
            **app_env,
            "GRAPH_CLIENT_ID": CERT_APP_ID,
            "GRAPH_CREDENTIAL_KIND": "certificate",
            "GRAPH_CREDENTIAL_SECRET_NAME": "graph-client-cert",
        }
    )
    assert len(sandbox.mailbox("bob@contoso.test")) == 1


def test_managed_identity_mode_uses_the_identitys_own_graph_role(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    _send({**app_env, "GRAPH_AUTH_MODE": "managed_identity", "AZURE_CLIENT_ID": MI_GRAPH_ID})
    assert len(sandbox.mailbox("bob@contoso.test")) == 1


def test_a_missing_vault_secret_is_a_clear_error_without_the_secret(app_env: dict[str, str]) -> None:
    async def go() -> str:
        credential = KeyVaultGraphCredential(load_settings({**app_env, "GRAPH_CREDENTIAL_SECRET_NAME": "gone"}))
        try:
            with pytest.raises(CredentialError) as raised:
                await credential.get_token(graph_scope(load_settings(app_env)))
            return str(raised.value)
        finally:
            await credential.close()

    message = run(go())
    assert "'gone'" in message and "404" in message


def test_the_graph_scope_follows_the_graph_root() -> None:
    base = {"MAIL_DEFAULT_SENDER": "n@contoso.test", "GRAPH_AUTH_MODE": "managed_identity"}
    assert graph_scope(load_settings(base)) == "https://graph.microsoft.com/.default"
    assert (
        graph_scope(load_settings({**base, "GRAPH_BASE_URL": "https://graph.microsoft.us/v1.0"}))
        == "https://graph.microsoft.us/.default"
    )
