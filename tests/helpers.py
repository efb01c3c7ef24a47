"""Constants of the test seed, clients for the sandbox, and a devhost child process, shared by the tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from azure.identity.aio import ClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphServiceClient
from msgraph.graph_request_adapter import GraphRequestAdapter

from devhost.process import DevhostProcess as Devhost  # noqa: F401 (the tests' name for it)
from sandbox.launcher import SandboxProcess

ROOT = Path(__file__).resolve().parent.parent

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
MI_GRAPH_ID = "b2b2b2b2-0000-4000-8000-000000000002"  # holds Mail.Send itself (managed_identity mode)
SENDER = "notifications@contoso.test"
SUPPORT = "support@contoso.test"
# the documentation: the README (a map), the reference pages and the tools' manuals beside their code
DOCUMENTATION = ("README.md", "docs/*.md", "sandbox/README.md", "devhost/README.md")


def documentation() -> dict[str, str]:
    """Every documentation page's text by its path from the repository's root, so the tests of the examples check
    them wherever they live."""
    paths = sorted({path for pattern in DOCUMENTATION for path in ROOT.glob(pattern)})
    return {path.relative_to(ROOT).as_posix(): path.read_text() for path in paths}


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
    return {"Authorization": f"Bearer {sandbox.token(client_id, secret, scope)}"}


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    route: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Any:
    """A func.HttpRequest as the host builds it; `body` is sent as JSON unless `raw` bytes are given."""
    import json

    import azure.functions as func

    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return func.HttpRequest(
        method, url, headers=all_headers, params=params or {}, route_params=route or {}, body=content
    )


def run(scenario: Any) -> Any:
    """Run a coroutine on a fresh event loop, then close that loop's cached Storage and Graph clients."""
    import asyncio

    from shared.functions import shutdown

    async def go() -> Any:
        try:
            return await scenario
        finally:
            await shutdown()

    return asyncio.run(go())


def user_function(builder: Any) -> Any:
    """The plain function behind a v2 decorator (`fn.build().get_user_function()`)."""
    return builder.build().get_user_function()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll `condition` every 0.1 s until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def drain_queue(connection_string: str, queue: str, function_builder: Any) -> None:
    """Run a queue-triggered function over everything on its queue (and what it enqueues there), as the
    host would: the devhost's trigger, polling fast."""
    from devhost.queues import QueueSettings, QueueTrigger

    trigger = QueueTrigger(
        connection_string, queue, user_function(function_builder), QueueSettings(max_polling_interval=0.1)
    )
    await trigger.drain()


class NetworkCut:
    """A loopback TCP relay in front of some ports (Azurite's, say) that can be cut: `cut()` drops every
    relayed connection and refuses new ones, as a network partition would, until `mend()`. The service
    behind keeps its state, so a test can cut Storage off mid-delivery and bring it back unchanged."""

    def __init__(self, targets: list[int]) -> None:
        import asyncio
        import threading

        from devhost.azurite import free_port

        self.ports = {free_port(): target for target in targets}  # relay port -> real port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[Any] = []
        self._writers: set[Any] = set()
        self._thread.start()
        self.mend()

    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _relay(self, reader: Any, writer: Any, target: int) -> None:
        import asyncio
        import contextlib

        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pump(source: Any, sink: Any) -> None:
            with contextlib.suppress(Exception):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}

    def mend(self) -> None:
        import asyncio

        async def listen() -> None:
            for port, target in self.ports.items():
                server = await asyncio.start_server(
                    lambda r, w, t=target: self._relay(r, w, t), "127.0.0.1", port, reuse_address=True
                )
                self._servers.append(server)

        self._call(listen())

    def cut(self) -> None:
        async def drop() -> None:
            for server in self._servers:
                server.close()
            self._servers.clear()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(drop())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def audit_rows(connection_string: str) -> list[dict[str, Any]]:
    """Today's rows of the audit table (UTC day), newest first, as Table storage holds them."""
    from azure.data.tables import TableClient

    day = time.strftime("%Y%m%d", time.gmtime())
    with TableClient.from_connection_string(connection_string, "audit") as table:
        return [dict(e) for e in table.query_entities("PartitionKey eq @day", parameters={"day": day})]


async def live_flush(store: Any, key: str) -> str | None:
    """The `alerts-flush` message a group's row names as its live flush (None: no flush pending)."""
    import json

    from shared.alerts.model import stamp

    row = await store.groups.get(key)
    if row is None or row.scheduled_for is None:
        return None
    return json.dumps({"group": key, "due": stamp(row.scheduled_for)})


def dispatch_with(store: Any) -> Any:
    """The alert dispatcher of the test's settings, on `store` (a real one, or one with a repository swapped)."""
    from shared.alerts.dispatch import Dispatcher
    from shared.alerts.notify import Notifier
    from shared.config import settings
    from shared.routing_file import notify_config

    config = settings()
    return Dispatcher(notify_config(config), store, Notifier(config, store))


def mail_sends(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sandbox request log's sends, in either delivery mode: sendMail calls and draft sends."""
    return [
        e for e in entries if e["path"].endswith("/sendMail") or (e["method"] == "POST" and e["path"].endswith("/send"))
    ]
