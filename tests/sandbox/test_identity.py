"""Entra ID tokens, the managed identity endpoint and Key Vault, driven by the real azure-identity SDKs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
import trustme
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from azure.keyvault.secrets import SecretClient

from sandbox.launcher import SandboxProcess

from ..helpers import (
    APP_ID,
    APP_SECRET,
    CERT_APP_ID,
    GRAPH_SCOPE,
    MI_NOT_READER_ID,
    SUPPORT,
    bearer,
)

VAULT_SCOPE = "https://vault.azure.net/.default"


def _vault(sandbox: SandboxProcess, credential: Any) -> SecretClient:
    return SecretClient(sandbox.env["KEY_VAULT_URL"], credential, verify_challenge_resource=False)


def _graph_status(sandbox: SandboxProcess, token: str, mailbox: str = SUPPORT) -> int:
    assert sandbox.control is not None
    return sandbox.control.get(
        f"/v1.0/users/{mailbox}/messages", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def test_managed_identity_reads_the_vault_secret(sandbox: SandboxProcess) -> None:
    secret = _vault(sandbox, ManagedIdentityCredential()).get_secret("graph-client-secret")
    assert secret.value == APP_SECRET
    assert secret.properties.version


def test_a_managed_identity_that_is_not_a_reader_gets_403(sandbox: SandboxProcess) -> None:
    with pytest.raises(HttpResponseError) as raised:
        _vault(sandbox, ManagedIdentityCredential(client_id=MI_NOT_READER_ID)).get_secret("graph-client-secret")
    assert raised.value.status_code == 403


def test_a_missing_secret_is_404_secret_not_found(sandbox: SandboxProcess) -> None:
    with pytest.raises(ResourceNotFoundError) as raised:
        _vault(sandbox, ManagedIdentityCredential()).get_secret("no-such-secret")
    assert "SecretNotFound" in str(raised.value)


def test_a_rotated_vault_secret_is_the_new_latest_version_and_old_versions_stay_readable(
    sandbox: SandboxProcess,
) -> None:
    vault = _vault(sandbox, ManagedIdentityCredential())
    old = vault.get_secret("graph-client-secret")
    assert sandbox.control is not None
    sandbox.control.post("/_sandbox/keyvault/secrets/graph-client-secret", json={"value": "next"}).raise_for_status()
    assert vault.get_secret("graph-client-secret").value == "next"
    assert vault.get_secret("graph-client-secret", old.properties.version).value == APP_SECRET


def test_sync_client_secret_credential_gets_a_graph_token_that_graph_accepts(sandbox: SandboxProcess) -> None:
    credential = ClientSecretCredential(
        sandbox.env["GRAPH_TENANT_ID"],
        APP_ID,
        APP_SECRET,
        authority=sandbox.env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    token = credential.get_token(GRAPH_SCOPE)
    assert token.expires_on > time.time() + 3000
    assert _graph_status(sandbox, token.token) == 200


def test_async_client_secret_credential_gets_a_graph_token(sandbox: SandboxProcess) -> None:
    async def fetch() -> str:
        async with AsyncClientSecretCredential(
            sandbox.env["GRAPH_TENANT_ID"], APP_ID, APP_SECRET, authority=sandbox.env["AZURE_AUTHORITY_HOST"]
        ) as credential:
            return (await credential.get_token(GRAPH_SCOPE)).token

    assert _graph_status(sandbox, asyncio.run(fetch())) == 200


def test_a_wrong_client_secret_is_refused_with_invalid_client(sandbox: SandboxProcess) -> None:
    credential = ClientSecretCredential(
        sandbox.env["GRAPH_TENANT_ID"],
        APP_ID,
        "not-the-secret",
        authority=sandbox.env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    with pytest.raises(ClientAuthenticationError) as raised:
        credential.get_token(GRAPH_SCOPE)
    assert "AADSTS7000215" in str(raised.value)
    assert "not-the-secret" not in str(raised.value)


def test_a_rotated_app_secret_replaces_the_old_one(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    sandbox.control.post(f"/_sandbox/apps/{APP_ID}/secrets", json={"secret": "rotated"}).raise_for_status()
    with pytest.raises(httpx.HTTPStatusError):
        bearer(sandbox, APP_ID, APP_SECRET)
    assert bearer(sandbox, APP_ID, "rotated")["Authorization"].startswith("Bearer ")


def test_certificate_credential_works_for_an_app_seeded_with_a_certificate(
    sandbox: SandboxProcess, certificate: dict[str, Any]
) -> None:
    credential = CertificateCredential(
        sandbox.env["GRAPH_TENANT_ID"],
        CERT_APP_ID,
        certificate_path=str(certificate["path"]),
        authority=sandbox.env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    token = credential.get_token(GRAPH_SCOPE)
    assert _graph_status(sandbox, token.token, "alice@contoso.test") == 200  # that app is not mailbox-scoped


def test_a_certificate_the_app_does_not_hold_is_refused(sandbox: SandboxProcess, tmp_path: Any) -> None:
    stranger = trustme.CA().issue_cert("stranger.test", key_type=trustme.KeyType.RSA)
    path = tmp_path / "stranger.pem"
    path.write_bytes(stranger.private_key_pem.bytes() + stranger.cert_chain_pems[0].bytes())
    credential = CertificateCredential(
        sandbox.env["GRAPH_TENANT_ID"],
        CERT_APP_ID,
        certificate_path=str(path),
        authority=sandbox.env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    with pytest.raises(ClientAuthenticationError) as raised:
        credential.get_token(GRAPH_SCOPE)
    assert "AADSTS700027" in str(raised.value)


def test_the_token_answer_has_entras_fields(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.post(
        f"/{sandbox.env['GRAPH_TENANT_ID']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "scope": GRAPH_SCOPE,
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://graph.microsoft.com"
    assert set(claims["roles"]) == {"Mail.Send", "Mail.ReadWrite"}


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"client_id": "unknown-app"}, 400, "unauthorized_client"),
        ({"scope": "https://graph.microsoft.com/Mail.Send"}, 400, "invalid_scope"),
        ({"scope": "https://example.test/.default"}, 400, "invalid_scope"),
        ({"client_secret": None}, 401, "invalid_client"),
    ],
)
def test_bad_token_requests_get_oauth_errors(
    sandbox: SandboxProcess, form: dict[str, Any], status: int, code: str
) -> None:
    data = {
        "grant_type": "client_credentials",
        "client_id": APP_ID,
        "client_secret": APP_SECRET,
        "scope": GRAPH_SCOPE,
        **form,
    }
    assert sandbox.control is not None
    answer = sandbox.control.post(
        f"/{sandbox.env['GRAPH_TENANT_ID']}/oauth2/v2.0/token", data={k: v for k, v in data.items() if v is not None}
    )
    assert answer.status_code == status
    assert answer.json()["error"] == code


def test_an_unknown_tenant_is_refused(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.get("/nowhere.test/v2.0/.well-known/openid-configuration")
    assert answer.status_code == 400


def test_the_managed_identity_endpoint_wants_its_header(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    assert sandbox.control.get("/msi/token", params=params).status_code == 401
    answer = sandbox.control.get(
        "/msi/token", params=params, headers={"X-IDENTITY-HEADER": sandbox.env["IDENTITY_HEADER"]}
    )
    assert answer.status_code == 200
    assert set(answer.json()) >= {"access_token", "expires_on", "resource", "token_type", "client_id"}


def test_expired_tokens_get_401_from_graph_and_key_vault(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> None:
    sandbox.reset({**test_seed, "tokenLifetimeSeconds": 1})
    graph_token = bearer(sandbox)
    vault_token = bearer(sandbox, scope=VAULT_SCOPE)
    time.sleep(2.1)
    assert sandbox.control is not None
    graph = sandbox.control.get(f"/v1.0/users/{SUPPORT}/messages", headers=graph_token)
    assert graph.status_code == 401
    assert graph.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "expired" in graph.json()["error"]["message"]
    vault = sandbox.control.get("/secrets/graph-client-secret", params={"api-version": "7.6"}, headers=vault_token)
    assert vault.status_code == 401
    assert "WWW-Authenticate" in vault.headers


def test_foreign_and_wrong_audience_tokens_get_401(sandbox: SandboxProcess) -> None:
    foreign = jwt.encode(
        {"aud": "https://graph.microsoft.com", "appid": APP_ID, "exp": time.time() + 600, "roles": ["Mail.Send"]},
        "another-sandbox-key-of-32-bytes!",
        algorithm="HS256",
    )
    assert sandbox.control is not None
    for headers in (
        {"Authorization": f"Bearer {foreign}"},
        bearer(sandbox, scope=VAULT_SCOPE),
        {"Authorization": "Bearer not.a.jwt"},
        {},
    ):
        answer = sandbox.control.get(f"/v1.0/users/{SUPPORT}/messages", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    vault = sandbox.control.get(
        "/secrets/graph-client-secret", params={"api-version": "7.6"}, headers={"Authorization": f"Bearer {foreign}"}
    )
    assert vault.status_code == 401
