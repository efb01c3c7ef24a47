"""A sandbox per test session (reset before each test), a test seed, and msgraph-sdk clients for it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from azure.identity.aio import ClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphServiceClient
from msgraph.graph_request_adapter import GraphRequestAdapter

from sandbox.launcher import SandboxProcess
from sandbox.seed import DEFAULT_SEED

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
APP_ID = "3c9b1e7a-5f2d-4a8e-b6c1-9d0e4f7a2b58"  # the default seed's app: scoped to notifications@, support@
APP_SECRET = "sandbox-graph-client-secret"
CERT_APP_ID = "c3c3c3c3-0000-4000-8000-000000000001"  # certificate credential, unscoped, Mail.Send + ReadWrite
READER_APP_ID = "c3c3c3c3-0000-4000-8000-000000000002"  # Mail.Read only
READER_SECRET = "reader-secret"
NO_ROLES_APP_ID = "c3c3c3c3-0000-4000-8000-000000000003"
NO_ROLES_SECRET = "no-roles-secret"
MI_ID = "a1e5c3d7-9b2f-4e6a-8c0d-1f3b5a7c9e24"  # may read the vault
MI_NOT_READER_ID = "b2b2b2b2-0000-4000-8000-000000000001"
SENDER = "notifications@contoso.test"
SUPPORT = "support@contoso.test"


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A client certificate for the certificate app: the PEM to seed, the cert+key file for the SDK."""
    leaf = trustme.CA().issue_cert("notifier-client.contoso.test", key_type=trustme.KeyType.RSA)
    path = tmp_path_factory.mktemp("cert") / "client.pem"
    path.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    return {"public": leaf.cert_chain_pems[0].bytes().decode(), "path": path}


@pytest.fixture(scope="session")
def test_seed(certificate: dict[str, Any]) -> dict[str, Any]:
    seed = json.loads(DEFAULT_SEED.read_text())
    seed["apps"] += [
        {"clientId": CERT_APP_ID, "certificates": [certificate["public"]], "roles": ["Mail.Send", "Mail.ReadWrite"]},
        {"clientId": READER_APP_ID, "secrets": [READER_SECRET], "roles": ["Mail.Read"]},
        {"clientId": NO_ROLES_APP_ID, "secrets": [NO_ROLES_SECRET], "roles": []},
    ]
    seed["managedIdentities"].append({"clientId": MI_NOT_READER_ID})
    seed["keyVault"]["secrets"]["other-secret"] = "other-value"
    return seed


@pytest.fixture(scope="session")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory, test_seed: dict[str, Any]) -> Iterator[SandboxProcess]:
    data = tmp_path_factory.mktemp("sandbox")
    seed_path = data / "seed.json"
    seed_path.write_text(json.dumps(test_seed))
    process = SandboxProcess(data / "state", seed=seed_path).start()
    saved = {name: os.environ.get(name) for name in process.env}
    os.environ.update(process.env)  # the SDKs read the CA bundle and managed identity endpoint from here
    yield process
    process.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> SandboxProcess:
    """The session's sandbox, reset to its seed with faults off."""
    sandbox_process.reset()
    return sandbox_process


@asynccontextmanager
async def graph_client(
    sandbox: SandboxProcess, client_id: str = APP_ID, secret: str = APP_SECRET, credential: Any = None
) -> AsyncIterator[GraphServiceClient]:
    """msgraph-sdk's GraphServiceClient against the sandbox, with the async client-secret credential."""
    credential = credential or ClientSecretCredential(
        sandbox.env["GRAPH_TENANT_ID"], client_id, secret, authority=sandbox.env["AZURE_AUTHORITY_HOST"]
    )
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=["127.0.0.1"])
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = sandbox.env["GRAPH_BASE_URL"]
    try:
        yield GraphServiceClient(request_adapter=adapter)
    finally:
        await credential.close()
        await adapter._http_client.aclose()


def bearer(
    sandbox: SandboxProcess, client_id: str = APP_ID, secret: str = APP_SECRET, scope: str = GRAPH_SCOPE
) -> dict[str, str]:
    """An Authorization header from the token endpoint, for raw-HTTP tests."""
    token_url = f"{sandbox.url}/{sandbox.env['GRAPH_TENANT_ID']}/oauth2/v2.0/token"
    assert sandbox.control is not None
    answer = sandbox.control.post(
        token_url,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope},
    )
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def seed_path(sandbox: SandboxProcess) -> Path:
    assert sandbox.seed is not None
    return sandbox.seed
