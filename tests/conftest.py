"""Session fixtures: a sandbox (reset before each test that asks for it) and Azurite, both on free ports.

Session fixtures belong to one process: under pytest-xdist (`make test`) each worker starts its own sandbox
(in its own temporary folder) and its own Azurite, so workers share no mailbox, queue or table."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from sandbox.seed import DEFAULT_SEED
from sandbox.tls import ensure_tls

from .helpers import (
    CERT_APP_ID,
    MI_GRAPH_ID,
    MI_NOT_READER_ID,
    NO_ROLES_APP_ID,
    NO_ROLES_SECRET,
    READER_APP_ID,
    READER_SECRET,
    SENDER,
)

SANDBOX_DIR = Path(tempfile.mkdtemp(prefix="notifier-sandbox-"))


def pytest_configure(config: pytest.Config) -> None:
    """Trust the session sandbox's CA before anything imports aiohttp, which reads the trust store at import."""
    (SANDBOX_DIR / "state").mkdir(parents=True, exist_ok=True)
    tls = ensure_tls(SANDBOX_DIR / "state")
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(tls.ca_bundle)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first (marked `long`): spread over workers (`make test`), a long test begun last would
    keep one worker busy while the others have finished."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SANDBOX_DIR, ignore_errors=True)


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
    seed["managedIdentities"] += [
        {"clientId": MI_NOT_READER_ID},
        {"clientId": MI_GRAPH_ID, "roles": ["Mail.Send"], "mailboxScope": [SENDER]},
    ]
    seed["keyVault"]["secrets"]["other-secret"] = "other-value"
    seed["exchange"] = {"enabled": False}  # tests that care about Exchange's sending limits turn them on
    return seed


@pytest.fixture(scope="session")
def sandbox_process(test_seed: dict[str, Any]) -> Iterator[SandboxProcess]:
    seed_path = SANDBOX_DIR / "seed.json"
    seed_path.write_text(json.dumps(test_seed))
    process = SandboxProcess(SANDBOX_DIR / "state", seed=seed_path).start()
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


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    process = AzuriteProcess(tmp_path_factory.mktemp("azurite")).start()
    yield process
    process.stop(grace=2)  # throwaway state: no need to wait for Azurite's flush


@pytest.fixture
def app_env(
    sandbox: SandboxProcess, azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The app's settings pointing at the sandbox and Azurite, with the app's queues emptied and no alert
    state left from earlier tests (a leftover flush would otherwise mail someone in a later test)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    from shared.config import settings
    from shared.delivery import forget_delivery_modes
    from shared.store.storage import (
        ALERT_DIGEST_TABLE,
        ALERT_GROUPS_TABLE,
        ALERT_REPLAYS_TABLE,
        APP_QUEUES,
        DIGEST_RUN_CONTAINER,
        DIGEST_SCHEDULE_TABLE,
        DIGEST_STATUS_TABLE,
        NOTICE_CONTAINER,
    )

    env = {
        "GRAPH_AUTH_MODE": "keyvault",
        "GRAPH_TENANT_ID": sandbox.env["GRAPH_TENANT_ID"],
        "GRAPH_CLIENT_ID": sandbox.env["GRAPH_CLIENT_ID"],
        "KEY_VAULT_URL": sandbox.env["KEY_VAULT_URL"],
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "AZURE_AUTHORITY_HOST": sandbox.env["AZURE_AUTHORITY_HOST"],
        "GRAPH_BASE_URL": sandbox.env["GRAPH_BASE_URL"],
        "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
        "MAIL_ALLOWED_SENDERS": "notifications@contoso.test,support@contoso.test,alice@contoso.test",
        "AzureWebJobsStorage": azurite.connection_string,
        # as the test seed turns Exchange's limits off; tests of the budgets turn them on (tests/test_budgets.py)
        "MAIL_BUDGET_MESSAGES_PER_MINUTE": "0",
        "MAIL_BUDGET_RECIPIENTS_PER_DAY": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    for name in APP_QUEUES:
        queue = QueueClient.from_connection_string(azurite.connection_string, name)
        try:
            queue.create_queue()
        except ResourceExistsError:
            queue.clear_messages()
        queue.close()
    with TableServiceClient.from_connection_string(azurite.connection_string) as tables:
        for name in (
            ALERT_GROUPS_TABLE,
            ALERT_DIGEST_TABLE,
            ALERT_REPLAYS_TABLE,
            DIGEST_STATUS_TABLE,
            DIGEST_SCHEDULE_TABLE,
        ):
            with contextlib.suppress(ResourceNotFoundError):
                tables.delete_table(name)
    with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        for name in (NOTICE_CONTAINER, DIGEST_RUN_CONTAINER):
            with contextlib.suppress(ResourceNotFoundError):
                blobs.delete_container(name)
    forget_delivery_modes()  # what an earlier test taught this process about its mailboxes
    yield env
    settings.cache_clear()


@pytest.fixture
def key_vault_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Key Vault secrets the app reads during a test (each read still goes to the vault)."""
    from azure.keyvault.secrets.aio import SecretClient

    reads: list[str] = []
    real_get_secret = SecretClient.get_secret

    async def counted(self: SecretClient, name: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(name)
        return await real_get_secret(self, name, *args, **kwargs)

    monkeypatch.setattr(SecretClient, "get_secret", counted)
    return reads
