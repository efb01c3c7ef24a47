"""The adapter between Azure Functions and the app: bindings in, plain calls into `shared`, answers out.

The only module besides `function_app.py` that knows Azure Functions types. Collaborators (settings,
store, Graph client, sender) are built once per worker process and event loop.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from . import api
from .alerts.dispatch import flush, ingest_message
from .alerts.routing import notify_config
from .config import ConfigError, settings
from .digests.alerts import run_alert_digests
from .digests.mailbox import check_digest, run_mailbox_digest
from .logs import quiet_libraries
from .loop_cache import LoopCache
from .store import ALERTS_FLUSH, store

log = logging.getLogger("notifier")


def start_up() -> None:
    """At import of the app: check the settings and the routing file (a bad one stops the app with a message
    naming it) and set the libraries' log level."""
    config = settings()
    quiet_libraries(config.library_log_level)
    notify_config(config)


def _query(req: func.HttpRequest) -> dict[str, str]:
    """The query as the caller wrote it: the host drops empty values (`?dryRun` would vanish) and joins
    repeated ones with `,`; the URL keeps both, so it is read from there when it has a query."""
    query = urlsplit(req.url).query
    if not query:
        return dict(req.params)
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return params


def _request(req: func.HttpRequest) -> api.ApiRequest:
    return api.ApiRequest(
        method=req.method,
        url=req.url,
        headers={k.lower(): v for k, v in req.headers.items()},
        params=_query(req),
        route=dict(req.route_params),
        body=req.get_body() or b"",
    )


def _response(answer: api.ApiAnswer) -> func.HttpResponse:
    if answer.body is None:
        return func.HttpResponse(status_code=answer.status, headers=answer.headers)
    return func.HttpResponse(
        json.dumps(answer.body),
        status_code=answer.status,
        headers=answer.headers,
        mimetype="application/json",
        charset="utf-8",
    )


async def post_mail(req: func.HttpRequest) -> func.HttpResponse:
    config = settings()
    request = _request(req)
    return _response(await api.answer(lambda r: api.post_mail(r, config, store(config.storage_connection)), request))


async def post_alerts(req: func.HttpRequest) -> func.HttpResponse:
    config = settings()
    request = _request(req)

    def secrets() -> Any:  # Key Vault code is loaded only for sources that authenticate
        from .credentials import vault_secrets

        return vault_secrets(config)

    return _response(
        await api.answer(
            lambda r: api.post_alerts(r, config, notify_config(config), store(config.storage_connection), secrets),
            request,
        )
    )


async def alerts_inbox(message: func.QueueMessage) -> None:
    config = settings()
    outcome = await ingest_message(
        message.get_body().decode("utf-8", "replace"),
        message.id or "",
        notify_config(config),
        config,
        store(config.storage_connection),
        datetime.now(UTC),
    )
    log.info(json.dumps({"alertsInbox": {"id": message.id, "outcome": outcome.outcome, "alerts": outcome.alerts}}))


async def alerts_flush(message: func.QueueMessage) -> None:
    config = settings()
    text = message.get_body().decode("utf-8", "replace")
    try:
        done = await flush(text, notify_config(config), config, store(config.storage_connection))
    except ValueError as error:  # not a flush message: nothing can ever come of it
        await store(config.storage_connection).poison(ALERTS_FLUSH, text)
        log.warning("alerts-flush message %s poisoned: %s", message.id, error)
        return
    log.info(json.dumps({"alertsFlush": {"group": done.group, "outcome": done.outcome, "mail": done.mail_id}}))


async def run_digest(req: func.HttpRequest) -> func.HttpResponse:
    config = settings()

    def graph() -> Any:
        from .graph import graph_client

        return graph_client(config)

    return _response(
        await api.answer(
            lambda r: api.run_digest(r, config, notify_config(config), store(config.storage_connection), graph),
            _request(req),
        )
    )


async def alert_digest(timer: func.TimerRequest) -> None:
    config = settings()
    runs = await run_alert_digests(notify_config(config), config, store(config.storage_connection), datetime.now(UTC))
    log.info(json.dumps({"alertDigest": [run.__dict__ for run in runs], "pastDue": timer.past_due}))


async def mailbox_digest(timer: func.TimerRequest) -> None:
    from .graph import graph_client

    config = settings()
    for digest in notify_config(config).digests:  # one failing digest does not stop the others
        run = await run_mailbox_digest(
            digest, config, graph_client(config), store(config.storage_connection), datetime.now(UTC)
        )
        log.info(json.dumps({"mailboxDigest": run.answer(), "pastDue": timer.past_due}))


async def get_mail(req: func.HttpRequest) -> func.HttpResponse:
    config = settings()
    return _response(await api.answer(lambda r: api.get_mail(r, store(config.storage_connection)), _request(req)))


_health: LoopCache[api.HealthCache] = LoopCache()


async def _health_results() -> dict[str, Any]:
    try:
        config = settings()
    except ConfigError as error:
        return await api.run_health_checks(error, {})
    from .graph import graph_client  # health checks Graph on purpose; intake paths never import it

    graph = graph_client(config)
    checks: dict[str, Any] = {"storage": store(config.storage_connection).ping}
    if config.graph_auth_mode == "keyvault":
        checks["keyVault"] = graph.read_credential
    checks["graphToken"] = graph.token_check
    for digest in notify_config(config).digests:
        checks[f"digest:{digest.name}"] = functools.partial(check_digest, digest, graph)
    return await api.run_health_checks(config, checks)


async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await _health_answer(req, detailed=False)


async def health_details(req: func.HttpRequest) -> func.HttpResponse:
    return await _health_answer(req, detailed=True)


async def _health_answer(req: func.HttpRequest, *, detailed: bool) -> func.HttpResponse:
    async def checked(r: api.ApiRequest) -> api.ApiAnswer:
        api.query_flags(r)
        results = await _health.get(api.HealthCache).results(_health_results)
        return api.health_answer(results, detailed=detailed)

    return _response(await api.answer(checked, _request(req)))


async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    from .openapi import openapi_document  # its models cost a cold start about 13 ms: loaded when asked for

    return _response(api.ApiAnswer(200, openapi_document()))


async def mail_outbox(message: func.QueueMessage) -> None:
    delivery = await _sender().deliver(
        message.get_body().decode("utf-8", "replace"), message.id or "", message.dequeue_count or 1
    )
    log.info(
        json.dumps(
            {
                "delivery": {
                    "id": delivery.mail_id,
                    "outcome": delivery.outcome,
                    "detail": delivery.detail,
                    "dequeueCount": message.dequeue_count,
                }
            }
        )
    )


def _sender() -> Any:
    from .graph import graph_client
    from .outbox import Sender

    config = settings()
    return Sender(config, store(config.storage_connection), graph_client(config))


async def shutdown() -> None:
    """Close this event loop's cached Storage and Graph clients (a host stopping cleanly, tests)."""
    import sys

    from . import store as store_module

    cached_store = store_module._stores.pop()
    if cached_store is not None:
        await cached_store.close()
    credentials_module = sys.modules.get("shared.credentials")
    cached_vault = credentials_module._vaults.pop() if credentials_module is not None else None
    if cached_vault is not None:
        await cached_vault.close()
    graph_module = sys.modules.get("shared.graph")  # never import Graph code just to close it
    cached_graph = graph_module._clients.pop() if graph_module is not None else None
    if cached_graph is not None:
        await cached_graph.close()
