"""The Graph client: the one module that imports msgraph, and only when a Graph call is first made.

One client per worker process (per event loop): msgraph-sdk's middleware (auth, redirects, retries),
with in-process retries kept to short waits; a longer `Retry-After` comes back as a `GraphError` so the
caller can re-enqueue with that delay instead of sleeping. At most `MAILBOX_CONCURRENCY` requests per
mailbox are in flight at once, Outlook's own limit. Bodies are sent and read as JSON, so what Graph gets
is exactly what `shared.mail` rendered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .config import Settings
from .credentials import graph_credential, graph_scope
from .errors import GraphError
from .loop_cache import LoopCache

if TYPE_CHECKING:
    from kiota_abstractions.request_information import RequestInformation
    from msgraph.graph_service_client import GraphServiceClient

MAILBOX_CONCURRENCY = 4  # Outlook: 4 concurrent requests per app per mailbox
MAX_IN_PROCESS_WAIT = 10.0  # seconds the SDK may sleep for a Retry-After before we hand it back
BATCH_LIMIT = 20  # requests per JSON batch


class MailboxSlots:
    """How many requests to one mailbox this process may have in flight; the number can change at run time
    (when other instances start or stop sending, they split Outlook's 4 between them)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._busy = 0
        self._freed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self._busy < self.capacity)
            self._busy += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._freed:
            self._busy -= 1
            self._freed.notify_all()

    async def resize(self, capacity: int) -> None:
        async with self._freed:
            self.capacity = capacity
            self._freed.notify_all()


class GraphClient:
    """Graph mail operations for the app: send, list messages, list folders, update, batch updates."""

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self._settings = settings
        self._credential = credential or graph_credential(settings)
        self._service: GraphServiceClient | None = None
        self._http: Any = None
        self._slots: dict[str, MailboxSlots] = {}
        self._share = MAILBOX_CONCURRENCY

    # -- plumbing -------------------------------------------------------------------------------------
    def _client(self) -> GraphServiceClient:
        if self._service is None:
            self._service, self._http = _build_service(self._settings, self._credential)
        return self._service

    def _slot(self, mailbox: str) -> MailboxSlots:
        return self._slots.setdefault(mailbox.lower(), MailboxSlots(self._share))

    async def share_mailboxes(self, position: int, instances: int) -> None:
        """Take this instance's share of Outlook's per-mailbox limit: with n instances sending, each gets
        4 // n slots per mailbox (the first 4 % n one more), at least one."""
        instances = max(1, instances)
        share = MAILBOX_CONCURRENCY // instances + (1 if position < MAILBOX_CONCURRENCY % instances else 0)
        self._share = max(1, share)
        for slots in self._slots.values():
            if slots.capacity != self._share:
                await slots.resize(self._share)

    async def _send(self, mailbox: str, info: RequestInformation, *, expect_body: bool = True) -> Any:
        from httpx import HTTPError
        from kiota_abstractions.api_error import APIError
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        adapter = self._client().request_adapter
        async with self._slot(mailbox):
            try:
                if expect_body:
                    # kiota's abstract RequestAdapter annotates this as returning None; it returns the bytes
                    raw = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})  # type: ignore[func-returns-value]
                else:
                    await adapter.send_no_response_content_async(info, {"XXX": ODataError})
                    raw = None
            except APIError as error:
                raise _graph_error(error) from None
            except HTTPError as error:
                raise GraphError(0, "network_error", f"{type(error).__name__}: no answer from Graph") from None
        return json.loads(raw) if raw else None

    def _request(self, method: str, url: str, body: Any = None) -> RequestInformation:
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation

        info = RequestInformation(Method[method])
        info.url = url
        info.headers.try_add("Accept", "application/json")
        if body is not None:
            info.set_stream_content(json.dumps(body).encode(), "application/json")
        return info

    def _url(self, path: str) -> str:
        from urllib.parse import quote

        return self._settings.graph_base_url + quote(path, safe="/@$=&?,'():")

    # -- operations -----------------------------------------------------------------------------------
    async def send_mail(self, mailbox: str, body: dict[str, Any]) -> None:
        """POST /users/{mailbox}/sendMail with a rendered sendMail body; 202 means accepted."""
        info = self._request("POST", self._url(f"/users/{mailbox}/sendMail"), body)
        await self._send(mailbox, info, expect_body=False)

    async def list_messages(
        self,
        mailbox: str,
        *,
        folder_id: str | None = None,
        select: list[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int = 100,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching message, following @odata.nextLink as Graph gives it."""
        from urllib.parse import urlencode

        path = f"/users/{mailbox}" + (f"/mailFolders/{folder_id}" if folder_id else "") + "/messages"
        query = {"$top": str(top)}
        if select:
            query["$select"] = ",".join(select)
        if filter:
            query["$filter"] = filter
        if orderby:
            query["$orderby"] = orderby
        url: str | None = self._url(path) + "?" + urlencode(query, safe="$,'():/")
        while url:
            page = await self._send(mailbox, self._request("GET", url))
            for message in page.get("value", []):
                yield message
            url = page.get("@odata.nextLink")

    async def list_folders(self, mailbox: str, *, include_hidden: bool = False) -> list[dict[str, Any]]:
        """Every folder of a mailbox, children after their parent, each with a `path` like `Inbox/Escalations`."""
        hidden = "&includeHiddenFolders=true" if include_hidden else ""
        folders: list[dict[str, Any]] = []
        pending: list[tuple[str, str]] = [(self._url(f"/users/{mailbox}/mailFolders?$top=100{hidden}"), "")]
        while pending:
            url, parent_path = pending.pop(0)
            next_url: str | None = url
            while next_url:
                page = await self._send(mailbox, self._request("GET", next_url))
                for folder in page.get("value", []):
                    folder["path"] = f"{parent_path}/{folder['displayName']}" if parent_path else folder["displayName"]
                    folders.append(folder)
                    if folder.get("childFolderCount"):
                        child_url = self._url(
                            f"/users/{mailbox}/mailFolders/{folder['id']}/childFolders?$top=100{hidden}"
                        )
                        pending.append((child_url, folder["path"]))
                next_url = page.get("@odata.nextLink")
        return folders

    async def batch_update(self, mailbox: str, updates: dict[str, dict[str, Any]]) -> dict[str, GraphError | None]:
        """PATCH up to 20 messages in one JSON batch; per message id, None on success or the GraphError."""
        if len(updates) > BATCH_LIMIT:
            raise ValueError(f"a batch holds at most {BATCH_LIMIT} requests")
        ids = list(updates)
        body = {
            "requests": [
                {
                    "id": str(n),
                    "method": "PATCH",
                    "url": f"/users/{mailbox}/messages/{message_id}",
                    "headers": {"Content-Type": "application/json"},
                    "body": updates[message_id],
                }
                for n, message_id in enumerate(ids)
            ]
        }
        answer = await self._send(mailbox, self._request("POST", self._url("/$batch"), body))
        outcome: dict[str, GraphError | None] = {}
        for response in answer.get("responses", []):
            message_id = ids[int(response["id"])]
            status = int(response.get("status", 0))
            if 200 <= status < 300:
                outcome[message_id] = None
            else:
                error = (response.get("body") or {}).get("error") or {}
                retry = (response.get("headers") or {}).get("Retry-After")
                outcome[message_id] = GraphError(
                    status, error.get("code", "unknown"), error.get("message", ""), _seconds(retry)
                )
        return outcome

    async def read_credential(self) -> None:
        """Read the Graph credential from Key Vault (the health check); the value is dropped at once, and the
        credential in use is left alone (replacing it would close it under a send that is using it)."""
        read = getattr(self._credential, "read_secret", None)
        if read is not None:
            await read()

    async def token_check(self) -> None:
        """Get a Graph token (the health check): proves the credential chain end to end."""
        await self._credential.get_token(graph_scope(self._settings))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        await self._credential.close()


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _graph_error(error: Any) -> GraphError:
    status = int(getattr(error, "response_status_code", 0) or 0)
    inner = getattr(error, "error", None)
    code = getattr(inner, "code", None) or "unknown"
    message = getattr(inner, "message", None) or str(error)
    headers = getattr(error, "response_headers", None) or {}
    retry_after = next((v for k, v in dict(headers).items() if k.lower() == "retry-after"), None)
    if isinstance(retry_after, list):
        retry_after = retry_after[0] if retry_after else None
    return GraphError(status, str(code), str(message), _seconds(retry_after))


def _build_service(settings: Settings, credential: Any) -> tuple[GraphServiceClient, Any]:
    """GraphServiceClient on the configured Graph root, with in-process retries bounded; and its httpx client."""
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RetryHandler
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory
    from msgraph_core.middleware import GraphTelemetryHandler

    class BoundedRetryHandler(RetryHandler):
        """Retries in process only for short waits; longer ones go back to the queue as a delay."""

        def get_delay_time(self, retry_count: int, response: Any = None, delay: float = 3) -> float:
            wait = float(super().get_delay_time(retry_count, response, delay))
            return wait if wait <= MAX_IN_PROCESS_WAIT else float(RetryHandlerOption.MAX_DELAY)

    middleware = [
        BoundedRetryHandler() if isinstance(m, RetryHandler) else m
        for m in KiotaClientFactory.get_default_middleware(None)
    ]
    middleware.append(GraphTelemetryHandler())
    http_client = GraphClientFactory.create_with_custom_middleware(
        middleware, client=KiotaClientFactory.get_default_client()
    )
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[graph_scope(settings)], allowed_hosts=[settings.graph_host]
    )
    adapter = GraphRequestAdapter(auth, client=http_client)
    adapter.base_url = settings.graph_base_url
    return GraphServiceClient(request_adapter=adapter), http_client


_clients: LoopCache[GraphClient] = LoopCache()


def graph_client(settings: Settings) -> GraphClient:
    """The cached client of this process's event loop (the Functions worker runs one loop)."""
    return _clients.get(settings, lambda: GraphClient(settings))
