"""The adapter between Azure Functions and the app: bindings in, plain calls into `shared`, answers out.

The only module besides `function_app.py` that knows Azure Functions types. Collaborators (settings,
store, Graph client, sender) are built once per worker process and event loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from . import api
from .config import ConfigError, settings
from .openapi import openapi_document
from .store import store

log = logging.getLogger("notifier")


def _request(req: func.HttpRequest) -> api.ApiRequest:
    return api.ApiRequest(
        method=req.method,
        url=req.url,
        headers={k.lower(): v for k, v in req.headers.items()},
        params=dict(req.params),
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


async def get_mail(req: func.HttpRequest) -> func.HttpResponse:
    config = settings()
    return _response(await api.answer(lambda r: api.get_mail(r, store(config.storage_connection)), _request(req)))


async def health(req: func.HttpRequest) -> func.HttpResponse:
    try:
        config = settings()
    except ConfigError as error:
        return _response(await api.health(error, {}))
    from .graph import graph_client  # health checks Graph on purpose; intake paths never import it

    graph = graph_client(config)
    checks: dict[str, Any] = {"storage": store(config.storage_connection).ping}
    if config.graph_auth_mode == "keyvault":
        checks["keyVault"] = graph.read_credential
    checks["graphToken"] = graph.token_check
    return _response(await api.health(config, checks))


async def openapi(req: func.HttpRequest) -> func.HttpResponse:
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
    graph_module = sys.modules.get("shared.graph")  # never import Graph code just to close it
    cached_graph = graph_module._clients.pop() if graph_module is not None else None
    if cached_graph is not None:
        await cached_graph.close()
